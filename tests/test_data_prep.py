import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from lmtrain.config.recipe import load_recipe  # noqa: E402
from lmtrain.data.prepare import as_datasets, prepare_data  # noqa: E402
from lmtrain.data.shards import ShardWriter  # noqa: E402
from lmtrain.errors import UserError  # noqa: E402
from lmtrain.tokenizer.bpe import load_tokenizer, train_tokenizer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN = 32
EOS_ID = 0


def document(i: int) -> str:
    """Distinct documents that cleaning leaves unchanged, so the test knows the cleaned text."""
    topics = [
        "the river",
        "机器学习",
        "a small cat",
        "数据处理",
        "def f(x):\n    return x",
        "quoting <|endoftext|>, which must not become an eos",
    ]
    return f"Document {i} is about {topics[i % len(topics)]}.\nIt has a second line, number {i * 7}."


def write_corpus(root: Path) -> list[str]:
    """The same kind of documents as .txt, .jsonl, .parquet and .csv; returns all their texts in order."""
    texts = [document(i) for i in range(60)]
    (root / "txt").mkdir()
    for i, text in enumerate(texts[:15]):
        (root / "txt" / f"{i:02d}.txt").write_text(text, encoding="utf-8")
    with open(root / "part.jsonl", "w", encoding="utf-8") as f:
        for text in texts[15:30]:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        f.write('{"text": "truncated line\n')
        f.write(json.dumps({"body": "no text field"}) + "\n")
    pq.write_table(pa.table({"text": texts[30:45]}), root / "part.parquet")
    with open(root / "part.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([i, text] for i, text in enumerate(texts[45:]))
    return texts


def corpus_globs(root: Path) -> list[str]:
    return [str(root / "txt" / "*.txt"), str(root / "part.jsonl"), str(root / "part.parquet"), str(root / "part.csv")]


def write_recipe(root: Path, paths: list[str], name: str = "recipe.yaml", **data) -> Path:
    recipe = {
        "tokenizer": {"dir": str(root / "tokenizer"), "vocab_size": 384},
        "data": {
            "dir": str(root / "data"),
            "sources": [{"kind": "files", "paths": paths}],
            "clean": {"strip_html": False, "min_chars": 1},
            "dedup": {"near": False},  # document(i) differ in a few numbers: near duplicates by design
            "seq_len": SEQ_LEN,
            "validation_fraction": 0.25,
            "batch_size": 7,
            **data,
        },  # many batch boundaries for packing to carry across
    }
    path = root / name
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A written corpus and a tokenizer trained on it (once per module)."""
    root = tmp_path_factory.mktemp("corpus")
    texts = write_corpus(root)
    train_tokenizer(load_recipe(write_recipe(root, corpus_globs(root))))
    return root, texts


@pytest.fixture
def recipe_path(corpus, tmp_path):
    """A recipe using the shared corpus and tokenizer, with its own data dir."""
    root, _ = corpus
    path = write_recipe(root, corpus_globs(root), name=f"{tmp_path.name}.yaml")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["data"]["dir"] = str(tmp_path / "data")
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def documents_in(blocks: np.ndarray) -> list[list[int]]:
    """Split a packed stream at eos; the last piece may be cut by the dropped tail."""
    pieces, current = [], []
    for token in blocks.reshape(-1).tolist():
        if token == EOS_ID:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    return pieces


def test_end_to_end_on_txt_jsonl_parquet_csv(corpus, recipe_path):
    _, texts = corpus
    recipe = load_recipe(recipe_path)
    manifest = prepare_data(recipe)

    splits = as_datasets(recipe.data.dir)
    assert set(splits) == {"train", "validation"}
    tokenizer = load_tokenizer(recipe.tokenizer.dir)
    decoded_per_split = {}
    for name in ("train", "validation"):
        split = splits[name]
        assert split.column_names == ["input_ids", "source"]
        assert split.features["input_ids"].feature.dtype == "int32"
        blocks = np.array(split["input_ids"])
        assert blocks.shape == (manifest["splits"][name]["blocks"], SEQ_LEN)
        assert manifest["splits"][name]["tokens"] == blocks.size + manifest["splits"][name]["dropped_tail_tokens"]
        # Every complete piece between eos tokens decodes to exactly one written document
        # (a document quoting "<|endoftext|>" would otherwise be split in two).
        decoded = [tokenizer.decode(ids) for ids in documents_in(blocks)]
        assert decoded and set(decoded) <= set(texts)
        positions = [texts.index(d) for d in decoded]
        assert positions == sorted(set(positions))  # in corpus order, none twice
        decoded_per_split[name] = set(decoded)
    assert not decoded_per_split["train"] & decoded_per_split["validation"]  # no leakage

    docs = manifest["documents"]
    assert docs["read"] == docs["kept"] == len(texts)
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["validation"]["documents"] == len(texts)
    assert 0 < manifest["splits"]["validation"]["documents"] < len(texts) / 2
    assert manifest["sources"][0]["validation_by"] == "documents" and manifest["notes"] == []
    assert docs["skipped"] == {"bad_json": 1, "missing_text_field": 1}
    jsonl = str(corpus[0] / "part.jsonl")
    assert [e.split(": ")[0] for e in docs["skip_examples"]["bad_json"]] == [f"{jsonl}:16"]
    assert docs["skip_examples"]["missing_text_field"][0].startswith(f"{jsonl}:17")
    on_disk = json.loads((Path(recipe.data.dir) / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest
    assert on_disk["inputs"]["seq_len"] == SEQ_LEN and len(on_disk["inputs"]["tokenizer_fingerprint"]) == 64


def test_rerun_reuses_and_changes_rebuild(corpus, recipe_path, capsys):
    root, _ = corpus
    recipe = load_recipe(recipe_path)
    first = prepare_data(recipe)
    arrow_file = next((Path(recipe.data.dir) / "sources" / "000" / "train").glob("*.bin"))
    mtime = arrow_file.stat().st_mtime_ns
    capsys.readouterr()

    assert prepare_data(load_recipe(recipe_path)) == first
    assert "reusing" in capsys.readouterr().out
    assert arrow_file.stat().st_mtime_ns == mtime

    prepare_data(load_recipe(recipe_path, ["data.seq_len=16"]))
    assert "seq_len changed (32 -> 16)" in capsys.readouterr().out
    assert len(as_datasets(recipe.data.dir)["train"][0]["input_ids"]) == 16

    prepare_data(load_recipe(recipe_path, ["data.seq_len=16", "data.clean.lowercase=true"]))
    assert "clean changed" in capsys.readouterr().out


def test_changed_tokenizer_rebuilds(tmp_path, capsys):
    write_corpus(tmp_path)
    path = write_recipe(tmp_path, corpus_globs(tmp_path))
    train_tokenizer(load_recipe(path))
    prepare_data(load_recipe(path))
    train_tokenizer(load_recipe(path, ["tokenizer.vocab_size=448"]))
    capsys.readouterr()
    prepare_data(load_recipe(path, ["tokenizer.vocab_size=448"]))
    assert "the tokenizer changed" in capsys.readouterr().out


def test_changed_input_file_rebuilds(tmp_path, capsys):
    write_corpus(tmp_path)
    path = write_recipe(tmp_path, corpus_globs(tmp_path))
    train_tokenizer(load_recipe(path))
    before = prepare_data(load_recipe(path))
    with open(tmp_path / "part.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": document(1000)}) + "\n")
    capsys.readouterr()
    after = prepare_data(load_recipe(path))
    assert "sources changed" in capsys.readouterr().out
    assert after["documents"]["read"] == before["documents"]["read"] + 1


def test_interrupted_run_leaves_no_data_dir_and_the_next_run_finishes_it(recipe_path, monkeypatch):
    recipe = load_recipe(recipe_path)
    finished = prepare_data(recipe)
    shutil.rmtree(recipe.data.dir)
    close = ShardWriter.close

    def crash(self):  # the first final shard is half-written when the run is interrupted
        if "/data/sources/" in str(self.path):
            self._file.write(b"x")
            raise KeyboardInterrupt
        close(self)

    monkeypatch.setattr(ShardWriter, "close", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(recipe)
    data_dir = Path(recipe.data.dir)
    assert not data_dir.exists()
    [work] = data_dir.parent.iterdir()  # only the work dir, with the tasks that finished
    monkeypatch.setattr(ShardWriter, "close", close)
    again = prepare_data(recipe)
    assert again["content_fingerprint"] == finished["content_fingerprint"]
    assert not work.exists()


def test_refuses_to_replace_a_directory_that_is_not_prepared_data(recipe_path):
    recipe = load_recipe(recipe_path)
    Path(recipe.data.dir).mkdir(parents=True)
    (Path(recipe.data.dir) / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a prepared data directory"):
        prepare_data(recipe)
    assert (Path(recipe.data.dir) / "precious.txt").read_text() == "keep me"


def test_missing_tokenizer_says_to_train_it(corpus, tmp_path):
    root, _ = corpus
    path = write_recipe(tmp_path, corpus_globs(root))
    with pytest.raises(UserError, match=r"python tokenizer/train_tokenizer\.py RECIPE"):
        prepare_data(load_recipe(path))


def test_empty_corpus(corpus, recipe_path, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    recipe = load_recipe(recipe_path, [f"data.sources.0.paths=[{tmp_path / 'empty.txt'}]"])
    with pytest.raises(UserError, match=r"the corpus is empty.*1 empty file"):
        prepare_data(recipe)


def test_cleaning_keeps_nothing(recipe_path):
    with pytest.raises(UserError, match=r"cleaning kept none of the 60 document\(s\).*min_chars=100000"):
        prepare_data(load_recipe(recipe_path, ["data.clean.min_chars=100000"]))


def test_too_small_validation_split_proposes_a_fraction_that_works(recipe_path):
    with pytest.raises(UserError, match=r"validation split has .* raise data\.validation_fraction to ") as error:
        prepare_data(load_recipe(recipe_path, ["data.validation_fraction=0.0001"]))
    fraction = re.search(r"validation_fraction to ([0-9.]+)", str(error.value)).group(1)
    manifest = prepare_data(load_recipe(recipe_path, [f"data.validation_fraction={fraction}"]))
    assert manifest["splits"]["validation"]["blocks"] >= 1


def test_train_split_too_small_for_one_block_proposes_a_seq_len_that_works(recipe_path):
    with pytest.raises(
        UserError, match=r"the train split .* not enough for one block of data\.seq_len=100000"
    ) as error:
        prepare_data(load_recipe(recipe_path, ["data.seq_len=100000"]))
    seq_len = re.search(r"lower data\.seq_len to (\d+) or less", str(error.value)).group(1)
    manifest = prepare_data(load_recipe(recipe_path, [f"data.seq_len={seq_len}"]))
    assert manifest["splits"]["train"]["blocks"] >= 1 and manifest["splits"]["validation"]["blocks"] >= 1


def test_missing_parquet_column_is_reported(corpus, recipe_path):
    root, _ = corpus
    recipe = load_recipe(
        recipe_path, [f"data.sources.0.paths=[{root / 'part.parquet'}]", "data.sources.0.text_column=content"]
    )
    with pytest.raises(UserError, match=r"part\.parquet: no column 'content'; columns present: 'text'"):
        prepare_data(recipe)


def test_entry_points_run_as_scripts(corpus, tmp_path):
    root, _ = corpus
    path = write_recipe(tmp_path, corpus_globs(root))
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false"}

    def script(*args):
        return subprocess.run(
            [sys.executable, *args, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    missing = script(str(REPO_ROOT / "data_prep" / "prepare.py"))
    assert missing.returncode == 2 and "train_tokenizer.py" in missing.stderr
    assert "Traceback" not in missing.stderr

    trained = script(str(REPO_ROOT / "tokenizer" / "train_tokenizer.py"))
    assert trained.returncode == 0, trained.stderr
    assert "384" in trained.stdout and "bytes/token" in trained.stdout
    prepared = script(str(REPO_ROOT / "data_prep" / "prepare.py"))
    assert prepared.returncode == 0, prepared.stderr
    assert "train" in prepared.stdout and "validation" in prepared.stdout
