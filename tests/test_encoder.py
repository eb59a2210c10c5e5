"""Encoders (issue 13): the objective in the recipe, the encoder tokenizer, dynamic MLM masking, the MLM loss, and
a short run whose export fills masks in a plain-transformers process."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from lmtrain.config.recipe import ObjectiveConfig, RecipeError, load_recipe
from lmtrain.data.masking import DynamicMasker
from lmtrain.errors import UserError
from lmtrain.tokenizer.bpe import ENCODER_TOKENS, SPECIAL_TOKENS, load_tokenizer
from tests.conftest import REPO_ROOT, prepare_recipe, run_cli

TINY_MLM = """
tokenizer: {vocab_size: 512}
data:
  sources: [{kind: python_stdlib, max_documents: 120}]
  clean: {strip_html: false}
  seq_len: 64
  validation_fraction: 0.1
model: {architecture: modernbert, hidden_size: 64, num_layers: 2, num_heads: 4, intermediate_size: 96,
        local_attention: 32}
objective: {kind: mlm, mask_rate: 0.3}
train: {max_steps: 40, global_batch_size: 16, micro_batch_size: 8, warmup_steps: 4, lr: 3.0e-3,
        eval_every: 20, eval_batches: 4, log_every: 5, checkpoint_every: 20}
"""


def write_recipe(path, text: str, **sections) -> str:
    tree = yaml.safe_load(text)
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return str(path)


def in_plain_transformers(script: str, model_dir: str) -> str:
    """The last line `script` prints, run with `model_dir` as its argument in a separate Python process outside the
    repository (plain transformers, offline): what a user of the export would run."""
    result = subprocess.run(
        [sys.executable, "-c", script, model_dir], capture_output=True, text=True, timeout=120,
        cwd="/", env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny MLM recipe with its encoder tokenizer and packed data, as a user would prepare them."""
    return prepare_recipe(tmp_path_factory.mktemp("mlm"), TINY_MLM)


@pytest.fixture(scope="module")
def tokenizer(prepared):
    return load_tokenizer(load_recipe(prepared).tokenizer.dir)


# ---------------------------------------------------------------------------- recipe


def test_wrong_objective_combinations_are_all_reported_at_once(tmp_path):
    path = write_recipe(
        tmp_path / "r.yaml",
        TINY_MLM,
        model={"architecture": "llama"},
        objective={"kind": "mlm", "nsp": True, "mask_rate": 1.5, "whole_word_mask": True},
    )
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    text = str(error.value)
    assert "objective.mask_rate: 1.5 must be in (0, 1)" in text
    assert "objective.whole_word_mask" in text and "mask_replace_prob=1.0" in text
    assert "objective.kind: mlm trains an encoder" in text  # MLM with a decoder
    assert "objective.nsp: next-sentence prediction needs BERT's pair head" in text  # NSP with a decoder
    assert "4 problem(s)" in text


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["objective.kind=clm"], "model.architecture: modernbert is an encoder"),
        (["objective.nsp=true"], "needs BERT's pair head; set model.architecture=bert (it is modernbert)"),
        (["objective.mask_rate=0"], "objective.mask_rate: 0.0 must be in (0, 1)"),
        (["model.dropout=1.0"], "model.dropout: must be in [0, 1)"),
        (["model.architecture=llama", "objective.kind=clm", "model.dropout=0.1"], "the decoder trains without dropout"),
        (["objective.mask_replace_prob=0.95"], "they must not exceed 1"),
        (["data.document_masking=true"], "data.document_masking: applies to the decoder"),
        (["train.best_metric=eval_bpb"], "'eval_bpb' is not a metric of masked-language-model pretraining"),
    ],
)
def test_each_wrong_combination_says_what_to_do(tmp_path, overrides, expected):
    path = write_recipe(tmp_path / "r.yaml", TINY_MLM)
    with pytest.raises(RecipeError, match="problem") as error:
        load_recipe(path, overrides)
    assert expected in str(error.value)


def test_nsp_with_bert_and_best_mlm_accuracy_load(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", TINY_MLM, model={"architecture": "bert"}, objective={"nsp": True})
    recipe = load_recipe(path, ["train.best_metric=eval_nsp_accuracy"])
    assert recipe.objective.nsp and recipe.model.architecture == "bert"


@pytest.mark.parametrize(
    "architecture, fields, default",
    [
        ("bert", ("hidden_dropout_prob", "attention_probs_dropout_prob"), 0.1),
        ("modernbert", ("embedding_dropout", "mlp_dropout", "attention_dropout"), 0.0),
    ],
)
def test_model_dropout_reaches_every_dropout_of_the_encoder(tmp_path, architecture, fields, default):
    from lmtrain.model.encoder import model_config

    path = write_recipe(tmp_path / "r.yaml", TINY_MLM, model={"architecture": architecture})
    unset, set_ = model_config(load_recipe(path)), model_config(load_recipe(path, ["model.dropout=0.25"]))
    assert [getattr(unset, f) for f in fields] == [default] * len(fields)  # the paper's (BERT), ModernBERT's
    assert [getattr(set_, f) for f in fields] == [0.25] * len(fields)


# ---------------------------------------------------------------------------- tokenizer


def test_encoder_tokenizer_has_cls_sep_mask_and_keeps_the_decoder_ids(prepared, tokenizer, tmp_path):
    decoder_recipe = write_recipe(
        tmp_path / "decoder.yaml",
        yaml.safe_dump({**yaml.safe_load(prepared.read_text()), "model": {}, "objective": {}}),
        tokenizer={"dir": str(tmp_path / "decoder-tokenizer")},
    )
    run_cli("tokenizer/train_tokenizer.py", decoder_recipe)
    decoder = load_tokenizer(tmp_path / "decoder-tokenizer")
    for i, token in enumerate(SPECIAL_TOKENS):  # the ids every decoder recipe has always had
        assert decoder.convert_tokens_to_ids(token) == i == tokenizer.convert_tokens_to_ids(token)
    assert decoder.mask_token is None and not set(ENCODER_TOKENS) & set(decoder.get_vocab())
    assert len(decoder) == len(tokenizer) == 512
    # the encoder's three tokens sit where a decoder has learned or reserved tokens: at the top of the vocabulary
    assert [tokenizer.convert_tokens_to_ids(t) for t in ENCODER_TOKENS] == [509, 510, 511]
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token) == ENCODER_TOKENS
    encoded = tokenizer("x = 1", "y")
    assert encoded["input_ids"][0] == 509 and encoded["input_ids"].count(510) == 2
    # [MASK] takes the space before it, as the word it stands for would
    ids = tokenizer("a [MASK] b", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.convert_tokens_to_ids("a"), 511, tokenizer.convert_tokens_to_ids("Ġb")]


def test_mlm_with_a_decoder_tokenizer_is_refused_before_training(prepared, tmp_path):
    from lmtrain.training.encoder import EncoderPretrainTask

    decoder_recipe = write_recipe(
        tmp_path / "decoder.yaml",
        yaml.safe_dump({**yaml.safe_load(prepared.read_text()), "model": {}, "objective": {}}),
        tokenizer={"dir": str(tmp_path / "decoder-tokenizer")},
    )
    run_cli("tokenizer/train_tokenizer.py", decoder_recipe)
    recipe = load_recipe(prepared, [f"tokenizer.dir={tmp_path / 'decoder-tokenizer'}"])
    with pytest.raises(UserError, match=r"has no \[MASK\]/\[CLS\]/\[SEP\] tokens"):
        EncoderPretrainTask(recipe)


# ---------------------------------------------------------------------------- masking


def plain_ids(tokenizer, shape, seed=0) -> torch.Tensor:
    """Random ids of ordinary (non-special) tokens."""
    special = set(tokenizer.all_special_ids)
    ordinary = np.array([i for i in range(len(tokenizer)) if i not in special])
    return torch.from_numpy(np.random.default_rng(seed).choice(ordinary, size=shape))


def test_masked_fraction_and_the_80_10_10_split(tokenizer):
    masker = DynamicMasker(tokenizer, ObjectiveConfig(kind="mlm", mask_rate=0.15), seed=1)
    ids = plain_ids(tokenizer, (200, 256))
    inputs, labels = masker(ids.clone(), np.arange(200), step=1)
    chosen = labels != -100
    n = chosen.sum().item()  # 51,200 tokens: the binomial's standard deviation is 0.0016 of the rate
    assert abs(n / ids.numel() - 0.15) < 0.006
    assert torch.equal(labels[chosen], ids[chosen])  # the labels are the original tokens
    masked = (inputs == tokenizer.mask_token_id) & chosen
    kept = (inputs == ids) & chosen
    replaced = chosen & ~masked & ~kept
    assert abs(masked.sum().item() / n - 0.8) < 0.015
    assert abs(kept.sum().item() / n - 0.1) < 0.012  # (a random token equal to the original counts as kept: 1/512)
    assert abs(replaced.sum().item() / n - 0.1) < 0.012
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else changes


def test_special_and_padding_tokens_are_never_chosen(tokenizer):
    masker = DynamicMasker(tokenizer, ObjectiveConfig(kind="mlm", mask_rate=0.9), seed=1)
    ids = plain_ids(tokenizer, (64, 64))
    specials = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    ids[:, ::4] = specials[torch.arange(ids[:, ::4].numel()) % len(specials)].reshape(ids[:, ::4].shape)
    ids[:, -8:] = tokenizer.pad_token_id
    inputs, labels = masker(ids.clone(), np.arange(64), step=3)
    is_special = torch.isin(ids, specials)
    assert is_special.sum() > 64 * 16
    assert (labels[is_special] == -100).all() and torch.equal(inputs[is_special], ids[is_special])
    assert (labels[~is_special] != -100).float().mean() > 0.85  # the rate itself holds on the others


def test_masks_depend_on_seed_step_and_block_only(tokenizer):
    masker = DynamicMasker(tokenizer, ObjectiveConfig(kind="mlm"), seed=7)
    ids = plain_ids(tokenizer, (4, 128))
    together = masker(ids.clone(), np.array([10, 11, 12, 13]), step=5)
    # one block at a time, in another order (another process, another micro-batch size, a resumed run)
    alone = [masker(ids[i : i + 1].clone(), np.array([10 + i]), step=5) for i in (3, 1, 0, 2)]
    for i, (inputs, labels) in zip((3, 1, 0, 2), alone):
        assert torch.equal(inputs[0], together[0][i]) and torch.equal(labels[0], together[1][i])
    fresh = DynamicMasker(tokenizer, ObjectiveConfig(kind="mlm"), seed=7)  # a new process after a resume
    assert torch.equal(fresh(ids.clone(), np.array([10, 11, 12, 13]), step=5)[1], together[1])
    next_epoch = masker(ids.clone(), np.array([10, 11, 12, 13]), step=6)
    assert not torch.equal(next_epoch[1], together[1])  # dynamic: drawn anew when the block comes again
    other_seed = DynamicMasker(tokenizer, ObjectiveConfig(kind="mlm"), seed=8)
    assert not torch.equal(other_seed(ids.clone(), np.array([10, 11, 12, 13]), step=5)[1], together[1])


def test_whole_word_masking_keeps_words_whole(tokenizer):
    objective = ObjectiveConfig(kind="mlm", mask_rate=0.3, whole_word_mask=True, mask_replace_prob=1.0,
                                random_replace_prob=0.0)  # fmt: skip
    masker = DynamicMasker(tokenizer, objective, seed=3)
    rng = np.random.default_rng(0)
    words = [" " + "".join(rng.choice(list("qxzjkvw"), size=rng.integers(4, 9))) for _ in range(400)]
    pieces = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]  # rare letters: several tokens
    assert sum(len(p) > 1 for p in pieces) > 300
    ids = torch.tensor([i for p in pieces for i in p])
    word_of = torch.tensor([w for w, p in enumerate(pieces) for _ in p])
    inputs, labels = masker(ids[None].clone(), np.array([0]), step=1)
    chosen = labels[0] != -100
    for w in range(len(pieces)):
        in_word = chosen[word_of == w]
        assert in_word.all() or not in_word.any(), f"word {words[w]!r} masked in part"
    chosen_words = chosen[torch.tensor([0] + [len(p) for p in pieces[:-1]]).cumsum(0)]
    assert 0.2 < chosen_words.float().mean() < 0.4  # the rate is per word
    assert (inputs[0][chosen] == tokenizer.mask_token_id).all()


def test_mlm_loss_is_the_cross_entropy_over_the_chosen_positions(prepared):
    from lmtrain.training.encoder import EncoderPretrainTask

    task = EncoderPretrainTask(load_recipe(prepared))
    torch.manual_seed(0)
    model = task.build_model()
    task.start_step(1)
    batch = task.batch(np.arange(4))
    loss = task.loss(model, batch)
    logits = model(input_ids=batch["input_ids"]).logits
    terms = [
        -torch.log_softmax(logits[b, t], -1)[batch["labels"][b, t]]
        for b in range(4)
        for t in range(batch["input_ids"].shape[1])
        if batch["labels"][b, t] != -100
    ]
    assert len(terms) == task.loss_targets(batch) > 0
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    # the block seen by the model: [CLS], then the block without its last token, each eos a [SEP]
    block = torch.from_numpy(np.asarray(task.train_rows[np.arange(4)]["input_ids"], dtype=np.int64))
    chosen = batch["labels"] != -100
    original = torch.where(chosen, batch["labels"], batch["input_ids"])
    tok = task.tokenizer
    assert (original[:, 0] == tok.cls_token_id).all()
    expected = torch.where(block[:, :-1] == tok.eos_token_id, tok.sep_token_id, block[:, :-1])
    unchanged = ~chosen[:, 1:]
    assert torch.equal(original[:, 1:][unchanged], expected[unchanged])
    assert F.cross_entropy(logits.transpose(1, 2), batch["labels"]).item() == pytest.approx(loss.item(), rel=1e-5)


# ---------------------------------------------------------------------------- a run and its export


@pytest.fixture(scope="module")
def trained(prepared):
    run_cli("train.py", prepared)
    return load_recipe(prepared)


def test_short_mlm_run_lowers_validation_loss_and_its_export_fills_masks(trained):
    recipe = trained
    records = [json.loads(line) for line in open(f"{recipe.run_dir}/metrics.jsonl")]
    evals = [r for r in records if "eval_mlm_loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 40
    assert evals[-1]["eval_mlm_loss"] < evals[0]["eval_mlm_loss"] - 0.5  # ln(512) = 6.24 at the start
    assert evals[-1]["eval_mlm_accuracy"] > evals[0]["eval_mlm_accuracy"]
    train = [r for r in records if "mlm_accuracy" in r]
    assert len(train) == 8 and all(0 <= r["mlm_accuracy"] <= 1 for r in train)
    card = open(f"{recipe.run_dir}/final/README.md", encoding="utf-8").read()
    assert "pipeline_tag: fill-mask" in card and 'pipeline("fill-mask"' in card
    script = (
        "import json, sys\n"
        "from transformers import AutoModelForMaskedLM, pipeline\n"
        "model = AutoModelForMaskedLM.from_pretrained(sys.argv[1])\n"
        "fill = pipeline('fill-mask', model=sys.argv[1], top_k=3)\n"
        "out = fill('import os\\nimport [MASK]\\n')\n"
        "print(json.dumps({'cls': type(model).__name__, 'out': out}))\n"
    )
    answer = json.loads(in_plain_transformers(script, f"{recipe.run_dir}/final"))
    assert answer["cls"] == "ModernBertForMaskedLM"
    assert len(answer["out"]) == 3 and all(o["sequence"].startswith("import os\nimport") for o in answer["out"])
    assert answer["out"][0]["score"] >= answer["out"][1]["score"] >= answer["out"][2]["score"]


# ---------------------------------------------------------------------------- NSP pairs


def test_nsp_pairs_are_balanced_consecutive_typed_and_within_the_limit():
    from lmtrain.data.pairs import IS_NEXT, PairSpec, build_pairs

    spec = PairSpec(seq_len=32, cls_id=1000, sep_id=1001, pad_id=1002, short_seq_prob=0.1)
    rng = np.random.default_rng(0)
    # document d holds the ids d*10_000 + 0, 1, 2, ...: where a token comes from is read off its value
    documents = [np.arange(d * 10_000, d * 10_000 + int(rng.integers(2, 200)), dtype=np.int32) for d in range(300)]
    pairs = build_pairs(documents, [], spec, np.random.default_rng(1))
    labels = np.array([label for _, _, label in pairs])
    assert len(pairs) > 1000 and abs((labels == IS_NEXT).mean() - 0.5) < 0.04
    short = 0
    for ids, types, label in pairs:
        assert len(ids) <= spec.seq_len and len(types) == len(ids)
        seps = np.flatnonzero(ids == spec.sep_id)
        assert ids[0] == spec.cls_id and len(seps) == 2 and seps[1] == len(ids) - 1
        a, b = ids[1 : seps[0]], ids[seps[0] + 1 : seps[1]]
        assert len(a) >= 1 and len(b) >= 1
        assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 :] == 1).all()
        assert (np.diff(a) == 1).all() and (np.diff(b) == 1).all()  # each segment is contiguous text
        if label == IS_NEXT:
            assert b[0] == a[-1] + 1  # B starts right where A ends, in the same document
        else:
            assert b[0] // 10_000 != a[0] // 10_000  # B comes from another document
        short += len(ids) < spec.seq_len
    assert short > 0.05 * len(pairs)  # short_seq_prob, and documents that end


def test_bert_nsp_pairs_come_from_the_prepared_documents_and_train_both_heads(tmp_path):
    """Data prep writes the per-source shards, then the pairs from their documents; a short run trains and logs both
    heads; the export is a BertForPreTraining for plain transformers."""
    from lmtrain.data.pairs import IS_NEXT, read_pairs
    from lmtrain.data.prepare import read_manifest
    from lmtrain.data.shards import TokenStream, source_dir

    text = yaml.safe_load(TINY_MLM)
    text["model"] = {
        "architecture": "bert",
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 128,
    }
    text["objective"] = {"kind": "mlm", "mask_rate": 0.15, "nsp": True, "short_seq_prob": 0.1}
    text["train"].update(max_steps=6, eval_every=3, checkpoint_every=0, log_every=3)
    recipe_path = prepare_recipe(tmp_path, yaml.safe_dump(text))
    recipe = load_recipe(recipe_path)
    manifest = read_manifest(recipe.data.dir)
    tok = load_tokenizer(recipe.tokenizer.dir)
    train = read_pairs(recipe.data.dir, "train")[:]
    labels = train["next_sentence_label"][:, 0]
    assert len(labels) == manifest["pairs"]["train"][0]["pairs"] > 100
    assert abs(float((labels == IS_NEXT).mean()) - 0.5) < 0.1
    # every A segment is a run of one document of the prepared stream: find it there
    stream = TokenStream(source_dir(recipe.data.dir, 0, "train"), np.dtype(manifest["shards"]["dtype"]))
    tokens = stream.read(0, len(stream)).astype(np.int64)
    for ids, label in zip(train["input_ids"][:40], labels[:40]):
        seps = np.flatnonzero(ids == tok.sep_token_id)
        a, b = ids[1 : seps[0]], ids[seps[0] + 1 : seps[1]]
        starts = np.flatnonzero(tokens[: len(tokens) - len(a) + 1] == a[0])
        found = [s for s in starts if (tokens[s : s + len(a)] == a).all()]
        assert found and tok.eos_token_id not in a
        if label == IS_NEXT:  # B continues A in the same document
            assert any((tokens[s + len(a) : s + len(a) + len(b)] == b).all() for s in found)

    run_cli("train.py", recipe_path)
    records = [json.loads(line) for line in open(f"{recipe.run_dir}/metrics.jsonl")]
    assert all(0 <= r["nsp_accuracy"] <= 1 for r in records if "nsp_accuracy" in r)
    assert [r["step"] for r in records if "eval_nsp_accuracy" in r] == [0, 3, 6]
    script = (
        "import sys\nfrom transformers import AutoModelForPreTraining\n"
        "print(type(AutoModelForPreTraining.from_pretrained(sys.argv[1])).__name__)\n"
    )
    assert in_plain_transformers(script, f"{recipe.run_dir}/final") == "BertForPreTraining"


def test_nsp_on_documents_too_short_says_how_many_were_usable(tmp_path):
    corpus = tmp_path / "one_token_lines.txt"
    corpus.write_text("\n".join(["a"] * 400 + ["a longer document with several words in it"] * 1) + "\n")
    recipe = write_recipe(
        tmp_path / "r.yaml",
        TINY_MLM,
        tokenizer={"dir": str(tmp_path / "tok"), "vocab_size": 384},
        data={"dir": str(tmp_path / "data"), "sources": [{"kind": "files", "paths": [str(corpus)],
              "txt_documents": "lines"}], "dedup": {"exact": False, "near": False}},
        model={"architecture": "bert"},
        objective={"nsp": True},
    )  # fmt: skip
    run_cli("tokenizer/train_tokenizer.py", recipe)
    result = run_cli("data_prep/prepare.py", recipe, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "next-sentence pairs need documents of at least 2 tokens" in result.stderr
    assert "usable of" in result.stderr


def test_a_resumed_mlm_run_masks_and_trains_as_the_uninterrupted_one(prepared, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", "train.max_steps=6", "train.checkpoint_every=3", "train.log_every=1",
            "train.eval_every=3", "train.eval_batches=2"]  # fmt: skip
    run_cli("train.py", prepared, *args)

    def after_step_3() -> list[tuple]:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["mlm_accuracy"]) for r in records if "mlm_loss" in r and r["step"] > 3]

    uninterrupted = after_step_3()
    shutil.rmtree(run_dir / "checkpoints" / "step_00000006")  # as if the run had stopped after step 3
    shutil.rmtree(run_dir / "final")
    result = run_cli("train.py", prepared, *args)
    assert "resuming from" in result.stderr and "step 3" in result.stderr
    assert [s for s, _, _ in uninterrupted] == [4, 5, 6]
    assert after_step_3() == uninterrupted  # the same masks, so the same losses and accuracies, to the last digit


# ---------------------------------------------------------------------------- fine-tuning an encoder

CLASSIFY = """
task: classify
data: {source: python_stdlib, stdlib_packages: [asyncio, email, logging, unittest, xml], validation_fraction: 0.08,
       max_validation_examples: 160, max_length: 64, too_long: truncate}
classify: {balance_classes: true}
train: {max_steps: 40, global_batch_size: 32, micro_batch_size: 32, lr: 2.0e-3, warmup_steps: 4, weight_decay: 0.0,
        eval_every: 20, eval_batches: 0, log_every: 10, checkpoint_every: 0, best_metric: accuracy}
"""


def test_encoder_classification_beats_the_majority_class(trained, tmp_path):
    recipe = yaml.safe_load(CLASSIFY) | {"base_model": f"{trained.run_dir}/final", "run_dir": str(tmp_path / "cls")}
    path = tmp_path / "classify.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    result = run_cli("finetune.py", path)
    assert "the mean of the tokens (ModernBERT" in result.stderr
    records = [json.loads(line) for line in open(tmp_path / "cls" / "metrics.jsonl")]
    best = max(r["accuracy"] for r in records if "accuracy" in r)
    baseline = float(re.search(r"majority-class baseline on validation: ([\d.]+)", result.stderr).group(1))
    assert best > baseline + 0.05
    config = json.loads((tmp_path / "cls" / "best" / "config.json").read_text())
    assert config["architectures"] == ["ModernBertForSequenceClassification"]


def test_sft_from_an_encoder_is_refused_with_a_clear_message(trained, tmp_path):
    path = tmp_path / "sft.yaml"
    sft = yaml.safe_load((REPO_ROOT / "recipes/smoke/sft.yaml").read_text(encoding="utf-8"))
    sft |= {"base_model": f"{trained.run_dir}/final", "run_dir": str(tmp_path / "sft")}
    path.write_text(yaml.safe_dump(sft), encoding="utf-8")
    result = run_cli("finetune.py", path, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "is an encoder (ModernBertForMaskedLM)" in result.stderr and "task: classify" in result.stderr
