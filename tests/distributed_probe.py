"""Run under `accelerate launch`: each rank records what the trainer's own setup tells it.

accelerate launch --config_file recipes/accelerate/cpu_zero3_2proc.yaml tests/distributed_probe.py RECIPE OUT_DIR
"""

import json
import sys
from pathlib import Path

from lmtrain.config.recipe import load_recipe
from lmtrain.data.sampler import GlobalBatchSampler
from lmtrain.model.llama import build_model, llama_config
from lmtrain.training.distributed import make_accelerator

recipe_path, out_dir = sys.argv[1], Path(sys.argv[2])
recipe = load_recipe(recipe_path, ["model.init_from="])
accelerator = make_accelerator(recipe)
model = build_model(recipe, llama_config(recipe))  # as the trainer does: after the Accelerator
parameters = list(model.parameters())
sampler = GlobalBatchSampler(1000, recipe.train.global_batch_size, recipe.train.seed)
record = {
    "process_index": accelerator.process_index,
    "num_processes": accelerator.num_processes,
    "is_main_process": accelerator.is_main_process,
    "distributed_type": str(accelerator.distributed_type),
    "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
    "batches": [
        sampler.rank_batch(step, accelerator.process_index, accelerator.num_processes).tolist() for step in range(5)
    ],
    # ZeRO-3 (zero.Init) partitions each parameter while it is built: this rank holds only its shard.
    "partitioned": all(hasattr(p, "ds_tensor") and p.numel() == 0 for p in parameters),
    "full_elements": sum(p.ds_numel for p in parameters if hasattr(p, "ds_numel")),
    "local_elements": sum(p.ds_tensor.numel() for p in parameters if hasattr(p, "ds_tensor")),
}
(out_dir / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
