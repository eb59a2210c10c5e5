"""Run under `accelerate launch`: each rank records what the trainer's own setup tells it.

    accelerate launch --config_file recipes/accelerate/cpu_zero3_2proc.yaml tests/distributed_probe.py RECIPE OUT_DIR
"""

import json
import sys
from pathlib import Path

from lmtrain.config import load_recipe
from lmtrain.distributed import make_accelerator
from lmtrain.sampler import GlobalBatchSampler

recipe_path, out_dir = sys.argv[1], Path(sys.argv[2])
recipe = load_recipe(recipe_path)
accelerator = make_accelerator(recipe)
sampler = GlobalBatchSampler(1000, recipe.train.global_batch_size, recipe.train.seed)
record = {
    "process_index": accelerator.process_index,
    "num_processes": accelerator.num_processes,
    "is_main_process": accelerator.is_main_process,
    "distributed_type": str(accelerator.distributed_type),
    "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
    "batches": [sampler.rank_batch(step, accelerator.process_index, accelerator.num_processes).tolist()
                for step in range(5)],
}
(out_dir / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
