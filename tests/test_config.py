"""The recipe system: parsing, overrides, and every error path."""

import subprocess
import sys
import textwrap

import pytest

from lmtrain.config.recipe import Recipe, RecipeError, gradient_accumulation_steps, load_recipe, recipe_to_yaml
from tests.conftest import REPO_ROOT


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    return info.value.problems


def test_yaml_values_and_defaults(tmp_path):
    path = write(
        tmp_path,
        """
        run_dir: runs/x
        data: {seq_len: 128, sources: [{kind: files, paths: ["a/*.txt"]}]}
        train: {lr: 3e-4, adam_betas: [0.9, 0.99]}
    """,
    )
    recipe = load_recipe(path)
    assert recipe.run_dir == "runs/x"
    assert recipe.data.seq_len == 128
    assert recipe.data.sources[0].kind == "files" and recipe.data.sources[0].paths == ["a/*.txt"]
    assert recipe.train.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string; the schema makes it a float
    assert recipe.train.adam_betas == [0.9, 0.99]
    assert recipe.model.hidden_size == Recipe().model.hidden_size  # untouched keys keep the schema default


def test_dotted_overrides_from_the_issue(tmp_path):
    path = write(tmp_path, "train: {lr: 1.0e-4}\n")
    recipe = load_recipe(
        path,
        [
            "train.lr=1e-3",
            "train.max_steps=50",
            "data.seq_len=256",
            "run_dir=runs/try",
            "data.sources.0.max_documents=7",
            "train.report_to=[tensorboard]",
        ],
    )
    assert recipe.train.lr == pytest.approx(1e-3)
    assert recipe.train.max_steps == 50
    assert recipe.data.seq_len == 256
    assert recipe.run_dir == "runs/try"
    assert recipe.data.sources[0].max_documents == 7
    assert recipe.train.report_to == ["tensorboard"]


def test_misspelled_keys_are_named_with_a_suggestion(tmp_path):
    path = write(
        tmp_path,
        """
        train: {max_step: 3}
        modle: {hidden_size: 8}
    """,
    )
    problems = problems_of(path, ["train.lr_peak=1"])
    text = "\n".join(problems)
    assert "train.max_step: unknown key; did you mean train.max_steps?" in text
    assert "modle: unknown key; did you mean model?" in text
    assert "train.lr_peak: unknown key; did you mean train.lr?" in text
    assert len(problems) == 3  # all collected at once


def test_unknown_key_in_a_list_item(tmp_path):
    path = write(tmp_path, "data: {sources: [{kind: files, paths: [x], txt_column: body}]}\n")
    (problem,) = problems_of(path)
    assert problem == "data.sources.0.txt_column: unknown key; did you mean data.sources.0.text_column?"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.seq_len=abc", "data.seq_len: expected int, got str 'abc'"),
        ("train.lr=fast", "train.lr: expected float, got str 'fast'"),
        ("model.tie_word_embeddings=3", "model.tie_word_embeddings: expected bool, got int 3"),
        ("model.attn_implementation=flash", "model.attn_implementation: 'flash' is not one of"),
        ("train.adam_betas=0.9", "train.adam_betas: expected a list"),
        ("train=5", "train: expected a section of keys"),
        ("tokenizer.vocab_size=1000", "tokenizer.vocab_size: 1000 must be a multiple of 64"),
        ("train.global_batch_size=12", "train.global_batch_size: 12 must be a multiple of train.micro_batch_size 8"),
        (
            "train.best_metric=eval_los",
            "train.best_metric: 'eval_los' is not a metric of pretraining; choose one of eval_loss, eval_ppl",
        ),
        ("model.num_heads=7", "model.hidden_size: 256 is not divisible by model.num_heads 7"),
        ("model.num_kv_heads=3", "model.num_kv_heads: 3 must divide model.num_heads 8"),
        ("data.sources.0.kind=files", "data.sources.0.paths: kind 'files' needs at least one glob pattern"),
        ("data.sources.0.kind=hub", "data.sources.0.dataset: kind 'hub' needs a dataset name"),
        ("data.validation_fraction=0", "data.validation_fraction: must be between 0 and 1"),
        ("train.warmup_steps=100000", "train.warmup_steps: must be between 0 and train.max_steps"),
        ("model.max_position_embeddings=16", "model.max_position_embeddings: 16 is shorter than data.seq_len"),
        ("nonsense", "override 'nonsense': expected KEY=VALUE"),
        ("data.sources.5.kind=files", "data.sources.5 is not an index of the list"),
        ("run_dir.x=1", "run_dir is a value, not a section"),
    ],
)
def test_bad_values_name_the_key(tmp_path, override, expected):
    path = write(tmp_path, "{}\n")
    problems = problems_of(path, [override])
    assert any(expected in p for p in problems), problems


def test_file_level_errors(tmp_path):
    assert "file not found" in problems_of(tmp_path / "missing.yaml")[0]
    assert "not valid YAML" in problems_of(write(tmp_path, "train: [unclosed\n"))[0]
    assert "top level must be a mapping" in problems_of(write(tmp_path, "- a\n- b\n"))[0]
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("run_dir: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in problems_of(bad)[0]


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, "train: {max_steps: 70}\n"), ["data.seq_len=64"])
    again = load_recipe(write(tmp_path, recipe_to_yaml(recipe), "resolved.yaml"))
    assert again == recipe


def test_gradient_accumulation_adapts_to_the_launch():
    recipe = Recipe()
    recipe.train.global_batch_size, recipe.train.micro_batch_size = 64, 4
    assert gradient_accumulation_steps(recipe, 1) == 16
    assert gradient_accumulation_steps(recipe, 8) == 2
    with pytest.raises(RecipeError, match="not divisible by micro_batch_size 4 x 3 process"):
        gradient_accumulation_steps(recipe, 3)


def test_cli_reports_recipe_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "recipes/smoke/pretrain.yaml", "train.lr_peak=1", "--dry-run"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "train.lr_peak: unknown key; did you mean train.lr?" in result.stderr
    assert "Traceback" not in result.stderr
