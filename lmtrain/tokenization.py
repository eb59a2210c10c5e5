"""Byte-level BPE tokenizer: training on the recipe's corpus, saving, loading, fingerprinting.

Design (GPT-2/GPT-4 family):
- No normalizer, and byte-level pre-tokenization with a byte-level decoder, so that
  decode(encode(text)) == text for any Unicode string: cleaning is done once, in the data
  pipeline, never hidden in the tokenizer.
- A GPT-4-style split regex before the byte mapping, with two changes: digits are split one
  by one (numbers get consistent tokens, as in Llama 3 / Qwen), and runs of CJK characters
  are split from runs of other letters (so "Python是" is two pre-tokens, not one).
- Special tokens get fixed ids 0-3 (see SPECIAL_TOKENS); the vocabulary is then padded with
  `<|reserved_N|>` tokens to exactly `tokenizer.vocab_size`, the model's embedding size.

The tokenizer trains on the cleaned documents of the train split only (the same hash split
as the data pipeline), so validation text is held out and gives an honest bytes/token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lmtrain.config import DedupConfig, Recipe
from lmtrain.corpus import describe_source, is_validation_document
from lmtrain.dedup import Deduplicator
from lmtrain.errors import UserError
from lmtrain.mixture import WeightedMixture, open_sources
from lmtrain.tokenizer_report import write_quality_report

EOS_TOKEN = "<|endoftext|>"
"""Ends every document in the packed data; also used as bos (documents are not prefixed)."""
PAD_TOKEN = "<|pad|>"
"""Padding for batched generation and fine-tuning; never appears in packed pretraining data."""
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
"""Reserved now for a ChatML-style chat template later, so fine-tuning needs no new embeddings."""
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, *CHAT_TOKENS)
"""In id order: <|endoftext|>=0, <|pad|>=1, <|im_start|>=2, <|im_end|>=3."""
RESERVED_TOKEN = "<|reserved_{}|>"

_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"             # English contractions
    rf"|[^\r\n\p{{L}}\p{{N}}]?[{_CJK}]+"         # a run of CJK characters
    rf"|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}&&[^{_CJK}]]+"  # a word of other letters, with its leading space
    r"|\p{N}"                                    # one digit
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"                # punctuation and symbols
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"                 # newlines; spaces (indentation stays one pre-token)
)

TRAINING_RECORD = "lmtrain_training.json"
"""Written next to tokenizer.json: the settings and corpus the tokenizer was trained on, and stats."""
HELD_OUT_SAMPLE_CHARS = 1_000_000
"""Validation-split characters kept aside to measure bytes/token after training."""
_FORMAT_VERSION = 2
"""Bump when the tokenizer design above changes, so that existing tokenizers are retrained."""


def train_tokenizer(recipe: Recipe, report_samples: dict[str, list[str]] | None = None,
                    sample_text_column: str = "text") -> PreTrainedTokenizerFast:
    """Train (or reuse, if trained with the same settings on the same corpus) and save to tokenizer.dir,
    with its quality report (lmtrain/tokenizer_report.py). `report_samples` maps a language (en, zh,
    code) to files to measure it on instead of the defaults; a reused tokenizer is re-measured only
    when they are given."""
    out_dir = Path(recipe.tokenizer.dir)
    settings = _training_settings(recipe)
    model_max_length = recipe.model.max_position_embeddings or recipe.data.seq_len
    record_path = out_dir / TRAINING_RECORD
    if record_path.is_file() and (out_dir / "tokenizer.json").is_file():
        if json.loads(record_path.read_text(encoding="utf-8"))["settings"] == settings:
            print(f"tokenizer: reusing {out_dir} (trained with the same settings on the same corpus)")
            tokenizer = _reuse(out_dir, model_max_length)
            if report_samples:
                write_quality_report(recipe, [], report_samples, sample_text_column)
            return tokenizer
        print(f"tokenizer: settings or corpus changed since {out_dir} was trained; retraining")

    start = time.perf_counter()
    corpus = _TrainingCorpus(recipe)
    backend = new_tokenizer()
    backend.train_from_iterator(corpus.batches(), bpe_trainer(recipe.tokenizer.vocab_size, recipe.tokenizer.min_frequency))
    if corpus.chars == 0:
        raise UserError(f"tokenizer: no training text: the sources gave {corpus.documents_read} document(s) and "
                        "none is left after cleaning and holding out the validation split; add data to data.sources")
    learned_size = backend.get_vocab_size()
    backend.add_special_tokens(
        [RESERVED_TOKEN.format(i) for i in range(recipe.tokenizer.vocab_size - learned_size)])
    assert backend.get_vocab_size() == recipe.tokenizer.vocab_size

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,  # would otherwise "fix" spaces before punctuation and break round trips
        model_max_length=model_max_length,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path.unlink(missing_ok=True)  # until the new record is written, the dir never looks reusable
    tokenizer.save_pretrained(out_dir)
    record = {
        "settings": settings,
        "stats": {
            "seconds": round(time.perf_counter() - start, 2),
            "training_chars": corpus.chars,
            "learned_vocab_size": learned_size,
            "reserved_tokens_added": recipe.tokenizer.vocab_size - learned_size,
            "held_out_bytes_per_token": _bytes_per_token(corpus_encoder(out_dir), corpus.held_out),
            "corpus": corpus.stats(),
        },
    }
    write_quality_report(recipe, corpus.held_out, report_samples or {}, sample_text_column)
    # The record goes last: until it exists, the directory never looks reusable.
    record_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return tokenizer


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """The saved tokenizer, through AutoTokenizer exactly as downstream users will load it."""
    if not (Path(directory) / "tokenizer.json").is_file():
        raise UserError(f"no tokenizer in {directory}; train one first: python tokenizer/train_tokenizer.py RECIPE")
    return AutoTokenizer.from_pretrained(str(directory))


def tokenizer_fingerprint(directory: str | Path) -> str:
    """sha256 of tokenizer.json: changes exactly when the token ids a text gets could change."""
    return hashlib.sha256((Path(directory) / "tokenizer.json").read_bytes()).hexdigest()


def corpus_encoder(directory: str | Path) -> Tokenizer:
    """The raw `tokenizers` backend, set up for encoding corpus text: a special-token string that
    occurs in the text (say, a web page quoting "<|endoftext|>") is encoded as plain text, so
    only the pipeline itself places eos between documents."""
    encoder = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
    encoder.encode_special_tokens = True
    return encoder


def training_record(directory: str | Path) -> dict:
    """What `train_tokenizer` recorded: settings, corpus and stats of the training run."""
    return json.loads((Path(directory) / TRAINING_RECORD).read_text(encoding="utf-8"))


def bpe_trainer(vocab_size: int, min_frequency: int) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )


def new_tokenizer() -> Tokenizer:
    """An untrained tokenizer with this project's pre-tokenization and decoder."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        # use_regex=False: the Split above already did the splitting; this only maps bytes to symbols.
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _training_settings(recipe: Recipe) -> dict:
    """Everything the trained tokenizer depends on; equal settings mean the result can be reused."""
    return {
        "format_version": _FORMAT_VERSION,
        "split_pattern": SPLIT_PATTERN,
        "special_tokens": list(SPECIAL_TOKENS),
        "vocab_size": recipe.tokenizer.vocab_size,
        "min_frequency": recipe.tokenizer.min_frequency,
        "max_training_chars": recipe.tokenizer.max_training_chars,
        "sources": [describe_source(s) for s in recipe.data.sources],
        "clean": dataclasses.asdict(recipe.data.clean),
        "filters": dataclasses.asdict(recipe.data.filters),
        "validation_fraction": recipe.data.validation_fraction,
    }


class _TrainingCorpus:
    """Cleaned, filtered train-split documents for the trainer, mixed by characters with the
    sources' weights, streamed in batches and capped at tokenizer.max_training_chars; validation
    documents are set aside in `held_out` instead. Exact duplicates are dropped as in the data
    pipeline; near-duplicate detection is left to the data pipeline, where it pays for itself."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.chars = 0
        self.held_out: list[str] = []
        streams, self.source_stats = open_sources(recipe.data, Deduplicator(DedupConfig(exact=True, near=False)))
        self.mixture = WeightedMixture(streams, [s.weight for s in recipe.data.sources], size=len)

    @property
    def documents_read(self) -> int:
        return sum(s.corpus.documents for s in self.source_stats)

    def batches(self, batch_size: int = 1000) -> Iterator[list[str]]:
        data = self.recipe.data
        budget = self.recipe.tokenizer.max_training_chars or float("inf")
        held_out_chars = 0
        batch: list[str] = []
        for _, text in self.mixture:
            if is_validation_document(text, data.validation_fraction):
                if held_out_chars < HELD_OUT_SAMPLE_CHARS:
                    self.held_out.append(text)
                    held_out_chars += len(text)
                continue
            text = text[:int(min(len(text), budget - self.chars))]
            batch.append(text)
            self.chars += len(text)
            if len(batch) == batch_size or self.chars >= budget:
                yield batch
                batch = []
            if self.chars >= budget:
                return
        if batch:
            yield batch

    def stats(self) -> dict:
        return {"documents": self.documents_read,
                "sources": {s.name: s.to_dict() for s in self.source_stats},
                "skipped": dict(sum((s.corpus.skipped for s in self.source_stats), Counter()))}


def _reuse(directory: Path, model_max_length: int) -> PreTrainedTokenizerFast:
    """Load a tokenizer trained earlier, updating its model_max_length if only the context changed."""
    tokenizer = load_tokenizer(directory)
    if tokenizer.model_max_length != model_max_length:
        tokenizer.model_max_length = model_max_length
        tokenizer.save_pretrained(directory)
    return tokenizer


def _bytes_per_token(encoder: Tokenizer, texts: list[str]) -> float | None:
    if not texts:
        return None
    encodings = encoder.encode_batch_fast(texts, add_special_tokens=False)
    num_tokens = sum(len(e.ids) for e in encodings)
    return round(sum(len(t.encode("utf-8")) for t in texts) / num_tokens, 3)
