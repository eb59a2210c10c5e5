"""Data preparation on datatrove workers: the same data whatever the number of workers or tasks, and after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from lmtrain.config.recipe import load_recipe  # noqa: E402
from lmtrain.data import workers  # noqa: E402
from lmtrain.data.prepare import prepare_data  # noqa: E402
from lmtrain.data.workers import ReadStep  # noqa: E402
from lmtrain.tokenizer.bpe import train_tokenizer  # noqa: E402
from tests.test_data_mixture import chinese_doc, code_doc, english_doc  # noqa: E402
from tests.test_dedup import WORDS, edit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """English in 8 JSONL files with copies in other files (so duplicates cross task boundaries), Chinese in one
    Parquet file, code in 40 files."""
    root = tmp_path_factory.mktemp("sliced")
    en = [english_doc(i) for i in range(64)]
    copies = {3: en[40], 6: en[10].upper(), 7: edit(en[20], 0.01, seed=1, vocabulary=WORDS)}
    for f in range(8):
        texts = en[f * 8 : (f + 1) * 8] + ([copies[f]] if f in copies else [])
        (root / f"en{f}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    pq.write_table(pa.table({"text": [chinese_doc(i) for i in range(40)]}), root / "zh.parquet")
    (root / "code").mkdir()
    for i in range(40):
        (root / "code" / f"m{i:02d}.txt").write_text(code_doc(i), encoding="utf-8")
    recipe = {
        "tokenizer": {"dir": str(root / "tokenizer"), "vocab_size": 512},
        "data": {
            "dir": str(root / "data"),
            "seq_len": 64,
            "validation_fraction": 0.1,
            "batch_size": 8,
            "sources": [
                {"kind": "files", "name": "en", "paths": [str(root / "en*.jsonl")], "weight": 0.6},
                {"kind": "files", "name": "zh", "paths": [str(root / "zh.parquet")], "weight": 0.2},
                {"kind": "files", "name": "code", "paths": [str(root / "code" / "*.txt")], "weight": 0.2},
            ],
        },
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    train_tokenizer(load_recipe(path))
    return path


def prepared(recipe_path: Path, tmp_path: Path, *overrides: str) -> dict:
    manifest = prepare_data(load_recipe(recipe_path, [f"data.dir={tmp_path / 'data'}", *overrides]))
    seconds, read_stage = manifest.pop("seconds"), manifest.pop("read_stage")  # measurements, not content
    assert set(manifest.pop("stage_seconds")) == {"read", "dedup", "cluster", "write"}
    assert {"read_clean_filter", "tokenize", "write", "dedup_keys"} <= set(read_stage["seconds"]) and seconds > 0
    return manifest


def test_same_data_with_1_2_or_8_workers_and_any_number_of_tasks(corpus, tmp_path, monkeypatch):
    one = prepared(corpus, tmp_path / "1", "data.tasks=8", "data.workers=1")
    en = one["sources"][0]
    # the copies sit in other files than their originals (other tasks): found all the same
    assert (en["exact_duplicates"], en["near_duplicates"]) == (2, 1)
    assert en["kept"] == 64
    for count in (2, 8):
        assert prepared(corpus, tmp_path / str(count), "data.tasks=8", f"data.workers={count}") == one
    monkeypatch.setattr(workers, "WRITE_CHUNK", 5)  # and the write stage's chunks change nothing either
    fewer_tasks = prepared(corpus, tmp_path / "t3", "data.tasks=3", "data.workers=2")
    assert fewer_tasks["content_fingerprint"] == one["content_fingerprint"]
    assert [s["splits"] for s in fewer_tasks["sources"]] == [s["splits"] for s in one["sources"]]


def test_a_killed_run_restarts_where_it_stopped_with_the_same_data(corpus, tmp_path, monkeypatch):
    clean = prepared(corpus, tmp_path / "clean", "data.tasks=8", "data.workers=1")
    data_dir = tmp_path / "killed" / "data"
    script = (
        "import sys; from lmtrain.config.recipe import load_recipe; from lmtrain.data.prepare import prepare_data; "
        f"prepare_data(load_recipe(sys.argv[1], ['data.dir={data_dir}', 'data.tasks=8', 'data.workers=2']))"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script, str(corpus)], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    completions = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        found = list(data_dir.parent.glob(".data.work-*/logs/read/completions/*"))
        if len(found) >= 3:  # some tasks of the first stage finished, others did not
            completions = found
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert completions, "the first stage's tasks did not finish in time to be interrupted"
    [work] = data_dir.parent.glob(".data.work-*")
    done = sorted(int(p.name) for p in (work / "logs" / "read" / "completions").iterdir())
    ran = []
    read = ReadStep.run

    def recorded(self, data=None, rank=0, world_size=1):
        ran.append(rank)
        return read(self, data, rank, world_size)

    monkeypatch.setattr(ReadStep, "run", recorded)
    restarted = prepared(corpus, tmp_path / "killed", "data.tasks=8", "data.workers=1")
    assert restarted == clean and not work.exists()
    assert sorted(ran) == sorted(set(range(8)) - set(done))  # the finished tasks were not run again


def test_a_worker_loads_the_tokenizer_once_for_all_its_tasks(corpus, tmp_path, monkeypatch):
    loads = []
    load = workers.load_tokenizer
    monkeypatch.setattr(workers, "load_tokenizer", lambda directory: loads.append(directory) or load(directory))
    workers._loaded_tokenizer.cache_clear()
    prepared(corpus, tmp_path / "a", "data.tasks=8", "data.workers=1")  # 8 read and 8 write tasks, this process
    assert len(loads) == 1
    directory = load_recipe(corpus).tokenizer.dir
    spec = Path(directory, "tokenizer.json")
    original = spec.read_text(encoding="utf-8")
    try:
        spec.write_text(original + "\n", encoding="utf-8")  # another tokenizer.json: loaded again, then kept
        workers._tokenizer(directory)
        workers._tokenizer(directory)
        assert len(loads) == 2
    finally:
        spec.write_text(original, encoding="utf-8")


def test_adding_a_log_sink_does_not_recompute_library_directories(monkeypatch):
    """datatrove adds loguru sinks for every task; each used to walk sysconfig's paths (see workers.py)."""
    import io
    import sysconfig

    from loguru import logger

    logger.remove(logger.add(io.StringIO()))  # the first time in this process computes them
    calls = []
    get_path = sysconfig.get_path
    monkeypatch.setattr(sysconfig, "get_path", lambda *args, **kwargs: calls.append(args) or get_path(*args, **kwargs))
    for _ in range(3):
        logger.remove(logger.add(io.StringIO()))
    assert calls == []


def test_a_read_task_groups_its_keys_by_partition_so_a_dedup_task_reads_only_its_own(tmp_path):
    # documents × (exact key, band 1, band 2); a band key of 0 is a text without units: no key
    table = np.array([[5, 0, 7], [6, 3, 0], [5, 8, 7], [0, 0, 0]], dtype=np.uint64)
    workers._save_partitioned_keys(tmp_path, table, exact_columns=1, partitions=2)
    rows = [tuple(int(x) for x in r) for r in np.load(tmp_path / "keys.npy").tolist()]
    # partition 0 (even keys), then 1, each by column then document; the exact key 0 is a key
    assert rows == [(6, 0, 1), (0, 0, 3), (8, 1, 2), (5, 0, 0), (5, 0, 2), (3, 1, 1), (7, 2, 0), (7, 2, 2)]
    parts = [workers._partition_rows(tmp_path / "keys.npy", p, 2).tolist() for p in (0, 1)]
    assert [[tuple(int(x) for x in r) for r in part] for part in parts] == [rows[:3], rows[3:]]
    workers._save_partitioned_keys(tmp_path, table[:0], exact_columns=1, partitions=2)  # a task with no documents
    assert [len(workers._partition_rows(tmp_path / "keys.npy", p, 2)) for p in (0, 1)] == [0, 0]


def test_hub_slices_are_contiguous_and_cover_the_split_once():
    import datasets

    from lmtrain.corpus.sources import _hub_slice

    rows = datasets.Dataset.from_dict({"text": [str(i) for i in range(10)]})
    stream = rows.to_iterable_dataset(num_shards=4)  # 4 data files of 3, 3, 2, 2 records

    def texts(part):
        return [] if part is None else [r["text"] for r in part]

    for dataset in (rows, stream):
        for count in (1, 3, 4, 6):
            slices = [texts(_hub_slice(dataset, i, count)) for i in range(count)]
            assert sum(slices, []) == [str(i) for i in range(10)]  # in order, none twice, none missing
    assert [len(texts(_hub_slice(stream, i, 6))) for i in range(6)] == [3, 3, 2, 2, 0, 0]  # whole files only


def test_slurm_submission_chains_the_stages_then_the_merge(corpus, tmp_path, monkeypatch):
    """No cluster here: a stand-in `sbatch` records each script. Each stage is a job array waiting for the one
    before (datatrove's SlurmPipelineExecutor), and the last job, after the write stage, runs prepare_data."""
    from lmtrain.data.prepare import submit_to_slurm
    from lmtrain.data.workers import SlurmOptions

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        f"#!/bin/sh\nn=$(wc -l < {log} 2>/dev/null || echo 0)\nfor last; do :; done\n"
        f"echo \"$((100+n)) $* $(grep -o 'job-name=[a-z-]*' $last)\" >> {log}\n"
        'echo "Submitted batch job $((100+n))"\n'
    )
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    recipe = load_recipe(corpus, [f"data.dir={tmp_path / 'data'}", "data.tasks=8"])
    submit_to_slurm(recipe, SlurmOptions("cpu"))
    # each stage: its job array, then datatrove's stats-merging job (submitted without --export)
    jobs = [line.split() for line in log.read_text().splitlines() if "--export" in line]
    names = [j[-1] for j in jobs]
    assert names == [f"job-name=lmtrain-data-{s}" for s in ("read", "dedup", "cluster", "write", "finish")]
    stage_ids = {j[-1]: j[0] for j in jobs if j[-1].startswith("job-name=lmtrain")}
    dependencies = {j[-1]: [a for a in j if a.startswith("--dependency")] for j in jobs}
    order = ["read", "dedup", "cluster", "write", "finish"]
    for before, after in zip(order, order[1:]):
        wanted = f"--dependency=afterok:{stage_ids[f'job-name=lmtrain-data-{before}']}"
        assert dependencies[f"job-name=lmtrain-data-{after}"] == [wanted]
    assert not (tmp_path / "data").exists()  # nothing ran here
