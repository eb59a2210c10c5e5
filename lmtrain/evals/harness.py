"""lm-evaluation-harness on a model directory or a Hub repo (evaluate_model.py), with the local tasks of an export.

An export made by a run with in-loop tasks carries them in eval_tasks/ (lmtrain/evals/tasks.py); here each
becomes an lm-eval task config (`dataset_path: json` over its JSONL, `output_type: multiple_choice`, the same
delimiter), so that lm_eval scores the very items the loop scored, the same way (lmtrain/evals/scoring.py).
Hub tasks (hellaswag, mmlu, ceval-valid, ...) need their data in the local Hugging Face cache: `prepare` fills
it once on a machine with network; a run that cannot find it says so, naming the task, before any scoring.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from lmtrain.errors import UserError
from lmtrain.evals.tasks import LOCAL_TASKS, read_local_tasks


def local_task_configs(tasks_dir: Path, out_dir: Path) -> list[str]:
    """Write an lm-eval task config for each task in `tasks_dir` (an export's eval_tasks/) to `out_dir`; their names."""
    names = []
    for task in read_local_tasks(tasks_dir):
        config = {
            "task": task.name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str((tasks_dir / f"{task.name}.jsonl").resolve())}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "target_delimiter": task.delimiter,
            "metric_list": [
                {"metric": metric, "aggregation": "mean", "higher_is_better": True} for metric in ("acc", "acc_norm")
            ],
            "metadata": {"version": 1.0, "origin": task.origin},
        }
        (out_dir / f"{task.name}.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        names.append(task.name)
    return names


def exported_tasks_dir(model: str) -> Path | None:
    """The eval_tasks/ folder of a local model directory, if it has one."""
    folder = Path(model) / LOCAL_TASKS
    return folder if (folder / "tasks.json").is_file() else None


def task_manager(include_paths: list[Path]):
    """lm-eval's index of its own tasks and those under `include_paths`."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in include_paths] or None)


def check_tasks(manager, tasks: list[str]) -> None:
    """Every task exists and its data loads (from the local cache when offline); else one clear message."""
    from lm_eval.tasks import get_task_dict

    for name in tasks:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.7)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `lm_eval ls tasks` lists them"
            raise UserError(f"--tasks: {name!r} is not an lm-eval task nor a local task of this model{hint}")
        try:
            get_task_dict([name], manager)
        except (ConnectionError, FileNotFoundError) as exc:
            raise UserError(
                f"lm-eval task {name}: its data is not in the local Hugging Face cache ({exc}); on a machine with "
                f"network, run `python evaluate_model.py --prepare --tasks {name}` with the same HF_HOME, then copy "
                "that HF_HOME here (README: evaluating offline)"
            ) from None


def evaluate(model: str, tasks: list[str], manager, revision: str, batch_size: int, device: str, limit: int | None):
    """lm_eval's results dict for `tasks` on the Hugging Face model `model` (a directory or a Hub repo)."""
    from lm_eval import simple_evaluate

    model_args = {"pretrained": model, "dtype": "auto"} | ({"revision": revision} if revision else {})
    return simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=tasks,
        task_manager=manager,
        batch_size=batch_size,
        device=device,
        limit=limit,
        log_samples=True,
    )
