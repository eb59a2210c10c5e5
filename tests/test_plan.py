"""The launch planner (`train.py RECIPE --plan`) and the launch files it points to: DeepSpeed configs,
accelerate launch configs, the SLURM script."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig

from lmtrain.config.recipe import load_recipe
from lmtrain.errors import UserError
from lmtrain.model.llama import count_parameters, llama_config
from lmtrain.plan import GIB, Cluster, activation_bytes, largest_layer_params, memory_plan, plan_report
from tests.conftest import REPO_ROOT

SEVEN_B = REPO_ROOT / "recipes/llama-7b/pretrain.yaml"
SMOKE = REPO_ROOT / "recipes/smoke/pretrain.yaml"


def run_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


# ---------------------------------------------------------------------------- memory model


@pytest.mark.parametrize("nodes,gpus_per_node", [(1, 8), (2, 8), (8, 8)])
def test_zero3_model_states_agree_with_deepspeeds_estimator(nodes, gpus_per_node):
    """DeepSpeed's own estimate (18 bytes/param over all GPUs + 4 bytes x the largest layer) against ours
    (2 + 4 + 12 over all GPUs + the gathered largest layer; our peak also counts the fp32 step gradient,
    which the estimator leaves out), for the 7B on the recipe's 8 x 8 and smaller launches. Fed real
    counts: the _all_live variant miscounts a meta-device model."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

    config = llama_config(load_recipe(SEVEN_B))
    total = count_parameters(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    assert largest == largest_layer_params(config) == 64000 * 4096

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        estimate_zero3_model_states_mem_needs_all_cold(total, largest, gpus_per_node, nodes)
    row = next(
        line
        for line in printed.getvalue().splitlines()
        if line.rstrip().endswith("offload_param=none, offload_optimizer=none, zero_init=1")
    )
    deepspeed_gib = float(re.findall(r"([\d.]+)GB", row)[1])  # columns: per CPU | per GPU

    stage3 = next(r for r in memory_plan(config, total, 1, 4096, nodes * gpus_per_node, "bf16") if r.stage == 3)
    ours_gib = (stage3.model_states + stage3.gathered) / GIB
    assert abs(ours_gib - deepspeed_gib) / deepspeed_gib < 0.01, (ours_gib, deepspeed_gib)
    step_gib = 4 * total / (nodes * gpus_per_node) / GIB
    assert stage3.model_states_peak / GIB == pytest.approx(
        ours_gib - stage3.gathered / GIB + max(stage3.gathered / GIB, step_gib)
    )


def test_shipped_deepspeed_configs_accumulate_gradients_in_fp32_as_the_planner_counts():
    for path in sorted((REPO_ROOT / "ds_config").glob("*.json")):
        assert json.loads(path.read_text())["data_types"] == {"grad_accum_dtype": "fp32"}, path


def saved_activation_bytes(config: LlamaConfig, batch: int, seq: int, dtype: torch.dtype, attn: str) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of a real forward (weights excluded)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, config.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, labels=ids)
    return sum(saved.values())


@pytest.mark.parametrize(
    "dtype,attn,kv_heads",
    [("bf16", "sdpa", 4), ("fp32", "sdpa", 4), ("bf16", "sdpa", 2), ("bf16", "eager", 4), ("fp32", "eager", 4)],
)
def test_activation_estimate_matches_what_autograd_saves(dtype, attn, kv_heads):
    """The tensor-by-tensor count of activation_bytes against the tensors a real transformers Llama saves
    (CPU, no checkpointing): never below, at most 10% above (it adds the 16-bit logits alive around the
    loss, and leaves out a few tiny tensors: RMSNorm's per-row scale, the logsumexp, RoPE tables)."""
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
    )
    measured = saved_activation_bytes(config, 2, 256, torch.bfloat16 if dtype == "bf16" else torch.float32, attn)
    estimate = activation_bytes(config, 2, 256, dtype, False, attn)
    assert measured <= estimate <= 1.10 * measured, (measured, estimate)


def test_checkpointing_keeps_layer_inputs_and_one_layer():
    config = llama_config(load_recipe(SEVEN_B))
    full = activation_bytes(config, 1, 4096, "bf16", checkpointing=False)
    ckpt = activation_bytes(config, 1, 4096, "bf16", checkpointing=True)
    per_layer = 24 * 4096 * 4096 + 8 * 4096 * 11008  # bf16, multi-head: 24·sbh + 8·sbi at b=1, s=4096
    after_layers = 8 * 4096 * 4096 + 6 * 4096 * 64000
    assert full == 32 * per_layer + after_layers
    assert ckpt == 32 * 2 * 4096 * 4096 + per_layer + after_layers
    assert activation_bytes(config, 2, 4096, "bf16", False) == 2 * full  # linear in the micro batch


def test_fp32_training_counts_4_4_8_bytes_and_no_step_cast():
    config = llama_config(load_recipe(SMOKE))
    n = count_parameters(config)
    zero0, _, zero1, _, zero2, _, zero3, _ = memory_plan(config, n, 8, 256, 4, "fp32")
    assert (zero0.params, zero0.grads, zero0.optimizer, zero0.step_grads) == (4 * n, 4 * n, 8 * n, 0)
    assert (zero3.params, zero3.grads, zero3.optimizer) == (n, n, 2 * n)  # 4 GPUs
    assert zero1.optimizer == zero2.optimizer == 2 * n and zero2.grads == n and zero1.grads == 4 * n


# ---------------------------------------------------------------------------- the report


def test_7b_plan_on_one_node_of_8_h100_80gb():
    result = run_train(str(SEVEN_B), "--plan")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    print(out)
    assert "1 node(s) x 8 GPU(s) = 8 x h100 (80 GB, 989 TFLOP/s bf16 dense peak)" in out
    assert "parameters: 7,000,559,616 (7.00B)" in out
    assert "FLOPs per token: 46.87 GFLOP" in out
    assert "8 process(es) × micro 1 × accumulation 128 = 1024 sequences × 4096 tokens = 4,194,304 tokens/step" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+[0-3]\s+(on|off)\s", line)]
    assert [(r[0], r[1]) for r in rows] == [(str(s), c) for s in range(4) for c in ("off", "on")]
    fits = {(int(r[0]), r[1]): r[-1] for r in rows}
    assert fits[(0, "off")] == fits[(0, "on")] == "no"  # 16+ bytes x 7B = 104 GiB on each GPU
    assert fits[(3, "on")] == "yes"
    zero3_ckpt = next(r for r in rows if r[:2] == ["3", "on"])
    assert float(zero3_ckpt[2]) == pytest.approx(2 * 7_000_559_616 / 8 / GIB, abs=0.05)  # bf16 weight shard
    assert "recommendation: ZeRO-2 (ds_config/zero2.json), model.gradient_checkpointing=false" in out
    assert "8,440 tokens/s per GPU" in out  # 989e12 x 0.4 / 46.87e9
    # 1,006,632,960,000 tokens x 46.87 GFLOP / (8 x 989e12 x 0.4) s = 172.5 days
    seconds = 1_006_632_960_000 * 46_871_347_200 / (8 * 989e12 * 0.4)
    days, hours = int(seconds // 86400), int(seconds % 86400 // 3600)
    assert f"= {days}d{hours:02d}h" in out


def test_plan_follows_the_cluster_shape_and_mfu():
    recipe = load_recipe(SEVEN_B)
    report = plan_report(recipe, Cluster(nodes=8, gpus_per_node=8, gpu_kind="a100", mfu=0.5))
    assert "64 process(es) × micro 1 × accumulation 16" in report
    assert "312 TFLOP/s" in report and "at 50% MFU" in report
    small = plan_report(recipe, Cluster(nodes=1, gpus_per_node=1, gpu_memory_gb=24))
    assert "recommendation: nothing fits on 1 GPU(s)" in small and "ds_config/zero3_offload.json" in small


def test_eager_attention_is_planned_with_its_score_matrices():
    recipe = load_recipe(SEVEN_B, ["model.attn_implementation=eager"])
    report = plan_report(recipe, Cluster())
    assert "model.gradient_checkpointing=true" in report  # 3 GiB of scores per layer, x 32, do not fit


def test_fused_cross_entropy_keeps_no_logits_only_the_head_weight_gradient():
    """Liger's fused linear cross-entropy (model.liger_kernel): the fp32 log-probabilities and 16-bit logits,
    6·s·b·V bytes in bf16, are not kept; the head weight's gradient, 2·h·V, is, whatever the micro batch."""
    config = llama_config(load_recipe(SEVEN_B))
    s, h, v = 4096, 4096, 64000
    for b in (1, 2):
        plain = activation_bytes(config, b, s, "bf16", False)
        fused = activation_bytes(config, b, s, "bf16", False, fused_ce=True)
        assert plain - fused == 6 * s * b * v - 2 * h * v
    assert (6 * s * v - 2 * h * v) / GIB == pytest.approx(0.98, abs=0.01)  # what --plan prints for the 7B


@pytest.mark.parametrize(
    "attn, bytes_per_element", [("sdpa", 3), ("eager", 2), ("flex_attention", 0), ("flash_attention_2", 0)]
)
def test_only_dense_attention_masks_are_counted_for_document_masking(attn, bytes_per_element):
    """sdpa gets a b·s² boolean mask and hands the kernel an e·b·s² additive copy; eager an e·b·s² additive mask;
    flex_attention a block mask and flash_attention_2 per-document offsets, neither of them dense."""
    config = llama_config(load_recipe(SEVEN_B))
    with_mask = activation_bytes(config, 2, 4096, "bf16", False, attn, document_masking=True)
    assert with_mask - activation_bytes(config, 2, 4096, "bf16", False, attn) == bytes_per_element * 2 * 4096**2


def test_liger_plan_leaves_out_zero3_and_counts_the_logits_it_does_not_keep():
    recipe = load_recipe(SEVEN_B, ["model.liger_kernel=true"])
    report = plan_report(recipe, Cluster(nodes=8))
    rows = [line.split() for line in report.splitlines() if re.match(r"\s+[0-3]\s+(on|off)\s", line)]
    assert {r[-1] for r in rows if r[0] == "3"} == {"n/a"}  # refused at launch (lmtrain/model/speed.py)
    assert "Liger fused cross-entropy (no logits: 0.98 GiB less; ZeRO-3 refused)" in report
    plain = plan_report(load_recipe(SEVEN_B), Cluster(nodes=8))
    activ = {
        tuple(line.split()[:2]): float(line.split()[-3]) for line in plain.splitlines() if re.match(r"\s+2\s", line)
    }
    liger = {tuple(r[:2]): float(r[-3]) for r in rows if r[0] == "2"}
    # the table shows 0.1 GiB: each figure is within 0.05 of its value
    assert liger[("2", "off")] == pytest.approx(activ[("2", "off")] - 0.98, abs=0.1 + 1e-9)


def test_the_plan_recommends_the_largest_micro_batch_that_fits():
    """7B on 8 x 8 H100 80 GB, ZeRO-2 without checkpointing: micro batch 2 fits (24.4 GiB of activations per
    sequence on 13 GiB of bf16 weights), 4 does not; 16 sequences per GPU per step, so 2 keeps the global batch.
    The recipe's flex_attention keeps no dense document mask: sdpa's would add (1 + 2)·b·4096² bytes, 0.09 GiB at
    micro batch 2 (63.4 GiB)."""
    report = plan_report(load_recipe(SEVEN_B), Cluster(nodes=8))
    assert "model.gradient_checkpointing=false, train.micro_batch_size=2 (the recipe says 1): peak 63.3" in report
    one_node = plan_report(load_recipe(SEVEN_B), Cluster())
    assert "train.micro_batch_size=1: peak 50.4" in one_node  # 128 sequences per GPU, but only 1 fits


@pytest.mark.parametrize(
    "cluster,overrides,message",
    [
        (
            {"gpus_per_node": 3},
            [],
            "train.global_batch_size 1024 is not divisible by micro_batch_size 1 x 3 process(es); "
            "change one of them or the launch (--nodes 1 x --gpus-per-node 3 = 3 processes)",
        ),
        ({"nodes": 256}, [], "not divisible by micro_batch_size 1 x 2048 process(es)"),  # more GPUs than sequences
        ({"gpu_kind": "x100"}, [], "--gpu-kind: unknown GPU kind 'x100'; known kinds: a10, a100,"),
        ({"mfu": 40}, [], "--mfu 40: must be a fraction in (0, 1], e.g. 0.4 for 40%"),
        ({"nodes": 0, "gpu_memory_gb": 1}, [], "--nodes 0: must be at least 1; --gpu-memory-gb 1: too small"),
        ({"gpu_kind": "v100"}, ["train.precision=bf16"], "train.precision: bf16 is not supported by --gpu-kind v100"),
    ],
)
def test_bad_plan_input_is_a_clear_error(cluster, overrides, message):
    with pytest.raises(UserError) as exc:
        plan_report(load_recipe(SEVEN_B, overrides), Cluster(**cluster))
    assert message in str(exc.value)


def test_bad_plan_input_exits_2_with_one_line():
    result = run_train(str(SEVEN_B), "--plan", "--gpus-per-node", "3")
    assert result.returncode == 2
    assert result.stderr.startswith("error: train.global_batch_size 1024 is not divisible")
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- launch files

DS_CONFIGS = sorted((REPO_ROOT / "ds_config").glob("*.json"))
LAUNCH_CONFIGS = sorted((REPO_ROOT / "recipes/accelerate").glob("*.yaml"))
RECIPE_DECIDES = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
)


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_configs_leave_batch_clipping_and_precision_to_the_recipe(path):
    config = json.loads(path.read_text())
    assert {key: config.get(key) for key in RECIPE_DECIDES} == dict.fromkeys(RECIPE_DECIDES, "auto")
    assert config["bf16"]["enabled"] == "auto"
    assert "fp16" not in config  # bf16 or fp32, as the recipe says; no loss scaling to tune
    zero = config["zero_optimization"]
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # or the export holds empty weights


def test_the_offload_config_offloads_optimizer_and_parameters_to_pinned_cpu_memory():
    zero = json.loads((REPO_ROOT / "ds_config/zero3_offload.json").read_text())["zero_optimization"]
    assert zero["stage"] == 3
    for part in ("offload_optimizer", "offload_param"):
        assert zero[part] == {"device": "cpu", "pin_memory": True}


@pytest.mark.parametrize("path", LAUNCH_CONFIGS, ids=lambda p: p.name)
def test_launch_configs_load_in_accelerate_and_name_a_shipped_ds_config(path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    config = load_config_from_file(str(path))
    ds_file = config.deepspeed_config["deepspeed_config_file"]
    assert (REPO_ROOT / ds_file).is_file()
    assert config.num_processes % config.num_machines == 0
    assert path.read_text().startswith("# "), "each launch config starts with a comment: purpose, hardware, command"
    assert "accelerate launch --config_file " + str(path.relative_to(REPO_ROOT)) in path.read_text()
    # What `accelerate launch` hands the training processes; DeepSpeedPlugin rejects a config that also
    # sets values the ds config file owns (mixed_precision, zero_stage, ...).
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", ds_file)
    monkeypatch.setenv(
        "ACCELERATE_CONFIG_DS_FIELDS",
        ",".join(config.deepspeed_config) + (",mixed_precision" if config.mixed_precision else ""),
    )
    plugin = DeepSpeedPlugin()
    assert (
        plugin.deepspeed_config["zero_optimization"]["stage"]
        == json.loads((REPO_ROOT / ds_file).read_text())["zero_optimization"]["stage"]
    )


def test_multinode_launch_config_becomes_the_intended_torchrun_rendezvous(monkeypatch):
    """Feed the SLURM script's flags for node 1 of 2 through accelerate's own argument handling."""
    import torch.distributed.run as torchrun
    from accelerate.commands.launch import _filter_args, _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    path = "recipes/accelerate/zero3_multinode.yaml"
    args = launch_command_parser().parse_args(
        [
            "--config_file",
            path,
            "--num_machines",
            "2",
            "--num_processes",
            "16",
            "--machine_rank",
            "1",
            "--main_process_ip",
            "node-a",
            "--main_process_port",
            "29500",
            "train.py",
            str(SEVEN_B),
        ]
    )
    args, _, _ = _validate_launch_command(args)
    written = yaml.safe_load((REPO_ROOT / path).read_text())
    assert (args.rdzv_backend, args.same_network) == (written["rdzv_backend"], written["same_network"])
    assert args.deepspeed_multinode_launcher == "standard"  # torchrun on each node, no pdsh/ssh
    args.deepspeed_fields_from_accelerate_config = ""
    cmd, env = prepare_deepspeed_cmd_env(args)
    assert cmd is None and env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    run_args = _filter_args(
        args,
        torchrun.get_args_parser(),
        ["--training_script", args.training_script, "--training_script_args", args.training_script_args],
    )
    launch_config, _, _ = torchrun.config_from_args(run_args)
    assert (launch_config.min_nodes, launch_config.max_nodes, launch_config.nproc_per_node) == (2, 2, 8)
    assert launch_config.rdzv_endpoint == "node-a:29500"
    assert launch_config.rdzv_configs["rank"] == 1
    # The SLURM script's DS_CONFIG: a --deepspeed_config_file flag wins over the launch config's file.
    override = launch_command_parser().parse_args(
        [
            "--config_file",
            path,
            "--deepspeed_config_file",
            "ds_config/zero2.json",
            "--num_machines",
            "2",
            "--num_processes",
            "16",
            "--machine_rank",
            "1",
            "--main_process_ip",
            "node-a",
            "train.py",
        ]
    )
    assert _validate_launch_command(override)[0].deepspeed_config_file == "ds_config/zero2.json"


# ---------------------------------------------------------------------------- the SLURM script

SBATCH = REPO_ROOT / "recipes/llama-7b/slurm.sbatch"


def test_slurm_script_parses_and_names_existing_files():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    for path in set(re.findall(r"(?:recipes|ds_config)/[\w./-]+\.(?:yaml|json)", text)) | {"train.py"}:
        assert (REPO_ROOT / path).is_file(), path
    directives = re.findall(r"^#SBATCH (\S+)", text, re.MULTILINE)
    assert {"--requeue", "--ntasks-per-node=1", "--open-mode=append"} <= set(directives)
    assert any(d.startswith("--signal=B:") for d in directives)


FAKE_SLURM = {
    # Two nodes; each `srun` task runs the command with its own SLURM_NODEID.
    "srun": """#!/bin/bash
while [[ $1 == --* ]]; do shift; done
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
""",
    "scontrol": """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then printf 'node-a\\nnode-b\\n'; else echo "scontrol $*" >> "$FAKE_LOG"; fi
""",
    "scancel": """#!/bin/bash
echo "scancel $*" >> "$FAKE_LOG"
for pid in $(cat "$FAKE_PIDS"); do kill -TERM "$pid"; done
""",
    # Stands in for .venv/bin/accelerate: records its arguments; with FAKE_TRAIN_SECONDS it trains until
    # SIGTERM, then "saves" and exits like train.py does.
    "accelerate": """#!/bin/bash
echo "node $SLURM_NODEID: $*" >> "$FAKE_LOG"
echo $$ >> "$FAKE_PIDS"
if [ -n "${FAKE_TRAIN_SECONDS:-}" ]; then
  trap 'echo "node $SLURM_NODEID: saved checkpoint" >> "$FAKE_LOG"; exit 143' TERM
  end=$((SECONDS + FAKE_TRAIN_SECONDS)); while [ $SECONDS -lt $end ]; do sleep 0.1; done
fi
""",
}


def fake_slurm_env(tmp_path: Path, **extra: str) -> dict:
    bin_dir, venv_bin = tmp_path / "bin", tmp_path / "venv/bin"
    bin_dir.mkdir()
    venv_bin.mkdir(parents=True)
    for name, script in FAKE_SLURM.items():
        target = (venv_bin if name == "accelerate" else bin_dir) / name
        target.write_text(script)
        target.chmod(0o755)
    (tmp_path / "pids").write_text("")
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "VENV": str(tmp_path / "venv"),
        "FAKE_LOG": str(tmp_path / "log"),
        "FAKE_PIDS": str(tmp_path / "pids"),
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_GPUS_ON_NODE": "8",
        **extra,
    }


@pytest.mark.parametrize("ds_config", ["", "ds_config/zero2.json"])
def test_slurm_script_launches_one_accelerate_per_node(tmp_path, ds_config):
    env = fake_slurm_env(tmp_path, DS_CONFIG=ds_config)
    result = subprocess.run(
        ["bash", str(SBATCH), "train.log_every=20"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "log").read_text().splitlines()
    common = (
        "launch --config_file recipes/accelerate/zero3_multinode.yaml "
        + (f"--deepspeed_config_file {ds_config} " if ds_config else "")
        + "--num_machines 2 --num_processes 16 --machine_rank {} --main_process_ip node-a "
        "--main_process_port 29500 train.py recipes/llama-7b/pretrain.yaml train.log_every=20"
    )
    assert sorted(log) == [f"node 0: {common.format(0)}", f"node 1: {common.format(1)}"]  # no requeue


def test_slurm_script_checkpoints_and_requeues_before_the_time_limit(tmp_path):
    env = fake_slurm_env(tmp_path, FAKE_TRAIN_SECONDS="30")
    job = subprocess.Popen(
        ["bash", str(SBATCH)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 20
    while len((tmp_path / "pids").read_text().split()) < 2 and time.time() < deadline:
        time.sleep(0.1)
    started = time.time()
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends
    _, stderr = job.communicate(timeout=30)
    assert time.time() - started < 10  # stopped on the signal, not at the end of the fake training
    log = (tmp_path / "log").read_text().splitlines()
    assert "scancel --signal=TERM 4242" in log
    assert sorted(line for line in log if "saved" in line) == ["node 0: saved checkpoint", "node 1: saved checkpoint"]
    assert log[-1] == "scontrol requeue 4242"  # after both nodes saved
    assert "requeueing job 4242" in stderr


def test_the_plan_states_checkpoint_size_and_stall_from_measured_rates():
    """84 GB for the 7B: 12 bytes per parameter (fp32 master weights and Adam moments, as measured on a ZeRO-3
    checkpoint), each process writing its share; the stall at the rates benchmarks/reliability.py measured."""
    from lmtrain import plan

    report = plan_report(load_recipe(SEVEN_B), Cluster(nodes=8))
    total = 7_000_559_616 * 12
    assert total / 1e9 == pytest.approx(84.0, abs=0.01)
    share = total / 64
    assert f"checkpoints: {total / GIB:,.1f} GiB each (12 bytes/param: fp32 weights + Adam moments), " in report
    assert f"{share / GIB:,.2f} GiB per process; every 500 steps" in report and "480 in the run" in report
    sync_s, async_s = share / (plan.MEASURED_SAVE_MIB_S * 2**20), share / (plan.MEASURED_SNAPSHOT_MIB_S * 2**20)
    assert f"synchronous {sync_s:,.1f} s ({plan.MEASURED_SAVE_MIB_S:,.0f} MiB/s per process" in report
    assert f"asynchronous {async_s:,.1f} s ({plan.MEASURED_SNAPSHOT_MIB_S:,.0f} MiB/s into RAM" in report
    assert async_s < sync_s
    assert f"train.checkpoint_async: on in this recipe; asynchronous saves need {total / 8 / GIB:,.1f} GiB" in report
