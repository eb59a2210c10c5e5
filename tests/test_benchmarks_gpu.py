"""benchmarks/gpu_throughput.py keeps working where there is no GPU: a tiny shape on CPU, in seconds."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import torch

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks/gpu_throughput.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # this checkout's lmtrain, whatever the venv points at
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env
    )


def test_gpu_throughput_runs_tiny_and_ends_with_one_json_line():
    result = run_script("--tiny")
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


def run_sweep(*args: str) -> subprocess.CompletedProcess:
    return run_script("--sweep", "--tiny", *args)


def test_sweep_tiny_prints_the_table_and_one_json_line_naming_the_best():
    """`--sweep --tiny`, the CI form of the one GPU run: every configuration this machine can run is measured and
    in the table, the ones it cannot are skipped with the trainer's own refusal, and the JSON line names the best."""
    result = run_sweep()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    names = [c["name"] for c in summary["configs"]]
    assert names[:3] == ["baseline", "+ fused AdamW", "+ compile"] and "documents: sdpa" in names
    assert names[-1].startswith("best: documents, ") and "attention sdpa" in names[-1]  # the rest depends on timing
    assert summary["best_config"] in names and summary["gpu"]
    assert summary["best_mfu"] == round(max(c["mfu"] for c in summary["configs"]), 4) > 0
    assert all(c["tokens_per_s"] > 0 for c in summary["configs"])
    assert any(line.startswith("configuration") for line in lines)  # the table
    assert sum(line.startswith(("baseline", "+ ", "documents: ", "best: ")) for line in lines) == len(names)
    if not torch.cuda.is_available():
        reasons = {item["config"]: item["reason"] for item in summary["skipped"]}
        assert "Triton GPU kernels" in reasons["+ Liger"]
        assert "compute capability 8.9" in reasons["+ compile + FP8"]
        assert "no FlexAttention backward on CPU" in reasons["documents: flex_attention"]


def test_sweep_skips_what_would_overrun_the_budget_and_says_so():
    result = run_sweep("--budget-s", "1")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [c["name"] for c in summary["configs"]] == ["baseline"]  # the first always runs
    over = [item for item in summary["skipped"] if "of --budget-s left" in item["reason"]]
    assert {item["config"] for item in over} >= {"+ fused AdamW", "+ compile", "documents: sdpa"}
    assert "skipped: + compile: estimated" in result.stdout


def test_gpu_env_reports_versions_and_which_switches_run_here():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_env.py"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] == torch.__version__ and report["transformers"]
    assert set(report["switches"]) == {"compile", "flex_attention", "flash_attention_2", "liger_kernel", "fp8"}
    if not torch.cuda.is_available():
        assert report["gpu"] is None and report["switches"]["compile"] == "available"  # gcc is here
        assert "Triton GPU kernels" in report["switches"]["liger_kernel"][0]
        assert "switch fp8" in result.stdout and "refused: model.fp8" in result.stdout
