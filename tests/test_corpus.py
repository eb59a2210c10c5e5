import csv
import gzip
import json
import os
import sysconfig
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from lmtrain.config.recipe import SourceConfig  # noqa: E402
from lmtrain.corpus.sources import CorpusStats, describe_source, python_stdlib_files, read_source, source_label  # noqa: E402
from lmtrain.errors import UserError  # noqa: E402


def read(paths, **kwargs) -> tuple[list[str], CorpusStats]:
    stats = CorpusStats()
    docs = list(read_source(SourceConfig(kind="files", paths=[str(p) for p in paths], **kwargs), stats))
    return docs, stats


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines), encoding="utf-8"
    )
    return path


def test_txt_files_one_document_each_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first\n第一", encoding="utf-8")
    docs, stats = read([tmp_path / "*.txt"])
    assert docs == ["first\n第一", "second"]
    assert stats.documents == 2 and not stats.skipped


def test_txt_byte_order_mark_is_not_text(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffhello".encode("utf-8"))
    assert read([tmp_path / "bom.txt"])[0] == ["hello"]


def test_jsonl_bad_lines_are_counted_with_file_and_line(tmp_path, capsys):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "one"},
            '{"text": "broken',
            {"title": "no text field"},
            "",
            {"text": None},
            {"text": "two", "id": 5},
            '["a", "list"]',
        ],
    )
    docs, stats = read([path])
    assert docs == ["one", "two"]
    assert stats.skipped == {"bad_json": 1, "missing_text_field": 3}
    assert [e.split(": ")[0] for e in stats.examples["bad_json"]] == [f"{path}:2"]
    assert "not valid JSON" in stats.examples["bad_json"][0]
    assert [e.split(": ")[0] for e in stats.examples["missing_text_field"]] == [f"{path}:3", f"{path}:5", f"{path}:7"]
    assert f"{path}:2" in capsys.readouterr().err  # warned, not silently dropped


def test_jsonl_custom_text_column_and_gzip(tmp_path):
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"content": "zipped 压缩"}) + "\n" + json.dumps({"content": "again"}) + "\n")
    docs, stats = read([tmp_path / "d.jsonl.gz"], text_column="content")
    assert docs == ["zipped 压缩", "again"]


def test_corrupt_gzip_is_a_user_error(tmp_path):
    (tmp_path / "d.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="d.jsonl.gz: not a readable gzip file"):
        read([tmp_path / "d.jsonl.gz"])


def test_non_utf8_is_skipped_per_file_and_per_jsonl_line(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "ok.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "good"}\n{"text": "caf\xe9"}\n{"text": "lone \\ud800 surrogate"}\n')
    docs, stats = read([tmp_path / "*.txt", tmp_path / "d.jsonl"])
    assert docs == ["fine", "good"]
    assert stats.skipped == {"not_utf8": 3}
    assert stats.examples["not_utf8"][0].startswith(f"{tmp_path / 'latin1.txt'}: not UTF-8 (byte 3)")
    assert stats.examples["not_utf8"][1].startswith(f"{tmp_path / 'd.jsonl'}:2: not UTF-8 (byte 13)")
    assert stats.examples["not_utf8"][2].startswith(f"{tmp_path / 'd.jsonl'}:3")


def test_empty_files_are_counted(tmp_path):
    for name in ("e.txt", "e.jsonl", "e.csv"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "x.txt").write_text("x", encoding="utf-8")
    docs, stats = read([tmp_path / "*"])
    assert docs == ["x"]
    assert stats.skipped == {"empty_file": 3}


def test_parquet_text_column_and_nulls(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "body": ["alpha", None, "gamma 伽马"]}), path)
    docs, stats = read([path], text_column="body")
    assert docs == ["alpha", "gamma 伽马"]
    assert stats.skipped == {"missing_text_field": 1}
    assert stats.examples["missing_text_field"][0] == f"{path} row 1: no string field 'body' (null)"  # 0-based


def test_parquet_without_the_text_column_names_file_column_and_columns_present(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [1], "body": ["alpha"]}), path)
    with pytest.raises(UserError) as err:
        read([path])
    message = str(err.value)
    assert str(path) in message and "'text'" in message and "'id', 'body'" in message


def test_parquet_non_text_column_is_a_user_error(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(UserError, match="holds int64, not text"):
        read([path])


def test_csv_with_header_multiline_fields_and_short_rows(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "review"])
        writer.writerow(["1", "很好，\n下次还来"])
        writer.writerow(["0"])  # short row: no review field
        writer.writerow(["0", 'said "meh", left'])
        writer.writerow(["1", "x" * 200_000])  # longer than csv's default field limit
    docs, stats = read([path], text_column="review")
    assert docs == ["很好，\n下次还来", 'said "meh", left', "x" * 200_000]
    assert stats.skipped == {"missing_text_field": 1}
    assert stats.examples["missing_text_field"][0].startswith(f"{path}:4")


def test_csv_without_the_text_column_lists_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("label,review\n1,good\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        read([path])
    assert str(path) in str(err.value) and "'label', 'review'" in str(err.value)


def test_missing_file_and_empty_glob_name_the_pattern(tmp_path):
    with pytest.raises(UserError, match=r"'.*missing\.txt' does not exist"):
        read([tmp_path / "missing.txt"])
    with pytest.raises(UserError, match=r"'.*nothing/\*\.jsonl' matches no files"):
        read([tmp_path / "nothing" / "*.jsonl"])


def test_unsupported_file_type_is_a_user_error(tmp_path):
    (tmp_path / "notes.md").write_text("# hi", encoding="utf-8")
    with pytest.raises(UserError, match=r"notes\.md has an unsupported file type"):
        read([tmp_path / "*"])


def test_max_documents(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": str(i)} for i in range(10)])
    assert read([tmp_path / "d.jsonl"], max_documents=3)[0] == ["0", "1", "2"]


def test_source_labels():
    assert source_label(SourceConfig(kind="hub", dataset="org/set"), 0) == "org/set"
    assert source_label(SourceConfig(kind="files", paths=["a/*.txt", "b.csv"]), 1) == "a/*.txt (+1)"
    assert source_label(SourceConfig(kind="python_stdlib"), 2) == "python_stdlib.2"
    assert source_label(SourceConfig(kind="files", paths=["x"], name="zh-web"), 3) == "zh-web"


def test_python_stdlib_source():
    files = python_stdlib_files()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert stdlib / "os.py" in files
    assert files == sorted(files)
    assert not any("site-packages" in p.parts or "dist-packages" in p.parts for p in files)
    docs = list(read_source(SourceConfig(kind="python_stdlib", max_documents=5), CorpusStats()))
    assert len(docs) == 5 and all(isinstance(d, str) and d for d in docs)


def test_description_changes_when_a_file_changes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one", encoding="utf-8")
    source = SourceConfig(kind="files", paths=[str(tmp_path / "*.txt")])
    before = describe_source(source)
    assert describe_source(source) == before
    path.write_text("one two", encoding="utf-8")
    assert describe_source(source)["files_digest"] != before["files_digest"]
    (tmp_path / "b.txt").write_text("new file", encoding="utf-8")
    assert describe_source(source)["num_files"] == 2


@pytest.mark.parametrize("streaming", [False, True])
def test_unreachable_hub_dataset_is_a_user_error(streaming):
    source = SourceConfig(kind="hub", dataset="nobody/no-such-corpus-xyz", streaming=streaming)
    with pytest.raises(UserError) as err:
        list(read_source(source, CorpusStats()))
    assert "'nobody/no-such-corpus-xyz'" in str(err.value) and "unreachable" in str(err.value)


HAND_MADE = "Title line\nstill the title\n\nFirst paragraph, one line.\n\n\n   \nSecond paragraph\nends here.\n"


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("file", [HAND_MADE]),
        ("paragraphs", ["Title line\nstill the title", "First paragraph, one line.", "Second paragraph\nends here."]),
        (
            "lines",
            ["Title line", "still the title", "First paragraph, one line.", "Second paragraph", "ends here."],
        ),
    ],
)
def test_txt_documents_modes(tmp_path, mode, expected):
    (tmp_path / "book.txt").write_text(HAND_MADE, encoding="utf-8")
    docs, stats = read([tmp_path / "book.txt"], txt_documents=mode)
    assert docs == expected
    assert stats.documents == len(expected) and not stats.skipped


def test_txt_paragraph_with_bad_bytes_is_skipped_whole_and_named(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"good one\n\nbad \xff line\nits second line\n\nlast\n")
    docs, stats = read([tmp_path / "t.txt"], txt_documents="paragraphs")
    assert docs == ["good one", "last"]
    assert stats.skipped == {"not_utf8": 1}
    assert stats.examples["not_utf8"][0].startswith(f"{tmp_path / 't.txt'}:3: not UTF-8 (line 3, byte 4)")


def test_blank_txt_in_lines_mode_is_an_empty_file(tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\n", encoding="utf-8")
    docs, stats = read([tmp_path / "blank.txt"], txt_documents="lines")
    assert docs == [] and stats.skipped == {"empty_file": 1}


def test_json_list_files_are_a_pretraining_source_too(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"text": "a"}, {"body": "b"}, {"text": "c"}]), encoding="utf-8")
    docs, stats = read([tmp_path / "d.json"])
    assert docs == ["a", "c"]
    assert stats.examples["missing_text_field"] == [f"{tmp_path / 'd.json'} item 1: no string field 'text' (absent)"]


def test_unknown_source_kind_names_the_key_and_the_kinds():
    with pytest.raises(UserError) as err:
        list(read_source(SourceConfig(kind="fils", paths=["x"]), CorpusStats(), "data.sources.2"))
    message = str(err.value)
    assert "data.sources.2.kind: unknown source kind 'fils'; did you mean 'files'?" in message
    assert "files, hub, python_stdlib" in message
