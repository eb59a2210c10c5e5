"""benchmarks/gpu_throughput.py keeps working where there is no GPU: a tiny shape on CPU, in seconds."""

import argparse
import importlib.util
import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks/gpu_throughput.py"


def test_gpu_throughput_runs_tiny_and_ends_with_one_json_line():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert 0 < summary["mfu"] <= 1
    assert summary["tokens_per_s_per_gpu"] > 0
    assert summary["gpu"] and summary["tiny"] is True
    assert [mode["checkpointing"] for mode in summary["modes"]] == [False, True]
    assert all(0 < mode["mfu"] <= 1 and mode["tokens_per_s"] > 0 for mode in summary["modes"])
    assert any(line.startswith("checkpointing") for line in lines)  # the table
    assert "not a throughput figure" in result.stdout  # the tiny shape says what it is


def test_layer_count_for_the_7b_shape_follows_gpu_memory():
    """On a GPU the script fits as many 7B-shaped layers as memory allows (16 bytes/parameter of
    training state + autocast's bf16 copies + activations without checkpointing)."""
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_throughput", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    args = argparse.Namespace(recipe=str(module.SEVEN_B), tiny=False, seq_len=4096, micro_batch=1)
    fits = [module.layers_that_fit(args, gib * 2**30) for gib in (40, 80, 141)]
    assert fits == sorted(fits) and 1 <= fits[0] and fits[-1] < 32  # no single GPU holds all 32 layers
