"""The recipe schema: one typed tree of dataclasses, the single source of truth for a run.

A recipe is a YAML file whose keys mirror these dataclasses. Loading is strict: every
unknown key, wrong type or invalid value anywhere in the file (or in a dotted
command-line override such as ``train.lr=1e-3``) is collected and reported together,
with the key's path and a did-you-mean suggestion, before any work starts.

Values are checked by one mechanism: a section checks itself in `problems(where)`; load_recipe collects them all.
Each section dataclass with constraints checks only its own fields there (`where` is its dotted path, e.g.
``data.sources.2``); the top-level schema's `problems` holds the checks that span sections. After the typed
build succeeds, `collect_problems` walks the tree in field order and gathers every section's problems.

We wrote this loader instead of using OmegaConf/dacite because both stop at the first
problem and neither suggests the key the user meant.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lmtrain.errors import UserError


class RecipeError(UserError):
    """A recipe (file or override) is invalid; the message lists every problem found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the recipe:\n{listing}")


class Problems(list):
    """The messages of a section's failed checks, in the order they were checked."""

    def need(self, ok: bool, message: str) -> None:
        """Keep `message` unless `ok`."""
        if not ok:
            self.append(message)


# ---------------------------------------------------------------------------- schema


@dataclass
class CleanConfig:
    """Text cleaning applied to every document before tokenization."""

    unicode_nfc: bool = True
    """Unicode NFC normalization (canonical composition). NFKC is deliberately not offered:
    it folds full-width CJK punctuation into ASCII and changes Chinese text."""
    normalize_whitespace: bool = True
    """Unify line endings and exotic spaces, strip trailing spaces, collapse runs of 3+ blank
    lines. Leading indentation is kept, so code survives."""
    drop_control_chars: bool = True
    """Remove C0/C1 control characters other than newline and tab."""
    strip_html: bool = True
    """Remove HTML tags and unescape entities. Turn off for source code, where `a<b and c>d`
    looks like a tag."""
    lowercase: bool = False
    """Lowercase everything. Off: a generative model must learn to produce case."""
    strip_punctuation: bool = False
    """Remove Unicode punctuation. Off: a generative model must learn to produce punctuation."""
    min_chars: int = 1
    """Documents shorter than this after cleaning are dropped (and counted)."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(self.min_chars >= 0, f"{where}.min_chars: must be >= 0")
        return p


@dataclass
class QualityFilterConfig:
    """Heuristic document quality filters in the style of Gopher, C4 and FineWeb (lmtrain/corpus/filters.py).

    Ratios are computed over "units": a word of non-CJK letters or digits, or a single CJK
    character, so the same thresholds work on English and Chinese text. Every removal is counted
    by reason in the manifest. A threshold of 0 turns that filter off."""

    enabled: bool = False
    """Off by default: the thresholds suit prose (web text, books). Code sources keep it off."""
    min_units: int = 50
    """Drop documents with fewer units (Gopher: 50 words)."""
    max_units: int = 100_000
    """Drop documents with more units (Gopher: 100,000 words)."""
    min_mean_word_length: float = 3.0
    """Drop documents whose non-CJK words average fewer characters (Gopher: 3). Documents that are
    mostly CJK characters are exempt."""
    max_mean_word_length: float = 10.0
    """Drop documents whose non-CJK words average more characters (Gopher: 10)."""
    min_letter_unit_ratio: float = 0.8
    """Drop documents where fewer units contain a letter (Gopher: 80% of words; CJK characters are letters)."""
    max_symbol_unit_ratio: float = 0.1
    """Drop documents with more `#` and ellipses (`...`, `…`) per unit (Gopher: 0.1)."""
    min_stop_words: int = 2
    """Drop documents with fewer English or Chinese function words (the, and, of, 的, 了, 是...) (Gopher: 2)."""
    max_bullet_line_ratio: float = 0.9
    """Drop documents where more lines start with a bullet (Gopher: 0.9)."""
    max_ellipsis_line_ratio: float = 0.3
    """Drop documents where more lines end with an ellipsis (Gopher: 0.3)."""
    max_duplicate_line_ratio: float = 0.3
    """Drop documents where more lines repeat an earlier line (Gopher: 0.3)."""
    max_duplicate_line_char_ratio: float = 0.2
    """Drop documents where more characters sit in repeated lines (Gopher: 0.2)."""
    max_top_ngram_char_ratios: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    """For n = 2, 3, 4 units: drop documents where the most frequent n-gram covers more of the
    characters (Gopher). An empty list turns the check off."""
    max_duplicate_ngram_char_ratios: list[float] = field(default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10])
    """For n = 5 ... 10 units: drop documents where repeated n-grams cover more of the characters (Gopher)."""
    min_terminal_punctuation_line_ratio: float = 0.12
    """Drop documents where fewer lines end with sentence punctuation, English or Chinese (FineWeb: 0.12)."""
    max_short_line_ratio: float = 0.67
    """Drop documents where more lines are short: under 30 characters, a CJK character counting as two (FineWeb: 0.67)."""
    drop_boilerplate_lines: bool = True
    """Remove lines that are web boilerplate (cookie and JavaScript notices, "all rights reserved",
    版权所有...) before the other filters, as C4 does; removed lines are counted."""

    def problems(self, where: str) -> list[str]:
        """Ratios must be fractions and counts non-negative; 0 turns a filter off."""
        p = Problems()
        ratios = {
            name: getattr(self, name)
            for name in (
                "min_letter_unit_ratio",
                "max_symbol_unit_ratio",
                "max_bullet_line_ratio",
                "max_ellipsis_line_ratio",
                "max_duplicate_line_ratio",
                "max_duplicate_line_char_ratio",
                "min_terminal_punctuation_line_ratio",
                "max_short_line_ratio",
            )
        }
        ratios |= {f"max_top_ngram_char_ratios.{i}": v for i, v in enumerate(self.max_top_ngram_char_ratios)}
        ratios |= {
            f"max_duplicate_ngram_char_ratios.{i}": v for i, v in enumerate(self.max_duplicate_ngram_char_ratios)
        }
        for name, value in ratios.items():
            p.need(0.0 <= value <= 1.0, f"{where}.{name}: {value} must be a fraction between 0 and 1 (0 = off)")
        for name in ("min_units", "max_units", "min_stop_words", "min_mean_word_length", "max_mean_word_length"):
            p.need(getattr(self, name) >= 0, f"{where}.{name}: must be >= 0 (0 = off)")
        return p


@dataclass
class DedupConfig:
    """Exact and near-duplicate removal within and across all sources (lmtrain/corpus/dedup.py). The first
    occurrence (in mixture order) is kept; removals are counted per source in the manifest."""

    exact: bool = True
    """Drop documents whose normalized text (case, whitespace, punctuation and width folded) was seen before."""
    near: bool = True
    """Drop documents whose estimated Jaccard similarity to an earlier one reaches near_threshold
    (MinHash signatures over n-grams of units, banded into an LSH index)."""
    near_threshold: float = 0.8
    """Jaccard similarity from which a document counts as a near duplicate; sets the LSH bands."""
    num_perm: int = 112
    """MinHash permutations: more gives a sharper threshold at a proportional cost (FineWeb: 112)."""
    ngram: int = 5
    """Shingle length in units (words, or single CJK characters) (FineWeb: 5)."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(0.0 < self.near_threshold <= 1.0, f"{where}.near_threshold: must be in (0, 1], e.g. 0.8")
        p.need(self.num_perm >= 2, f"{where}.num_perm: must be at least 2 (FineWeb uses 112)")
        p.need(self.ngram >= 1, f"{where}.ngram: must be at least 1 (FineWeb uses 5)")
        return p


@dataclass
class SourceConfig:
    """Where raw text comes from. The same keys describe fine-tuning data (lmtrain/corpus/records.py)."""

    kind: str = "python_stdlib"
    """A registered source kind (lmtrain/corpus/sources.py; a new one is one function there). Built in:
    python_stdlib: the .py files of the running interpreter's standard library (offline, on every machine);
    files: local files matched by `paths`; hub: a Hugging Face Hub dataset."""
    paths: list[str] = field(default_factory=list)
    """For kind=files: glob patterns of .txt, .jsonl, .jsonl.gz, .json, .parquet or .csv files."""
    dataset: str = ""
    """For kind=hub: the dataset name, e.g. `HuggingFaceFW/fineweb-edu`."""
    dataset_config: str = ""
    """For kind=hub: the dataset configuration name, if it has several."""
    split: str = "train"
    """For kind=hub: the split to read."""
    text_column: str = "text"
    """For .jsonl/.json/.parquet/.csv files and hub datasets: the column that holds the text."""
    txt_documents: Literal["file", "paragraphs", "lines"] = "file"
    """What one document of a .txt file is. file: the whole file (a book, an article, a source file: it keeps
    its context, which document masking would cut at every paragraph); paragraphs: each run of lines between
    blank lines (a dump of many short texts); lines: each non-blank line (one review, one sentence per line).
    A large single file needs no splitting: `validation_by: auto` then holds out its tail."""
    validation_by: Literal["auto", "documents", "spans"] = "auto"
    """How data.validation_fraction of this source is held out. documents: whole documents, chosen by a hash
    of their text; spans: the last validation_fraction of the source's characters (cut at a line break),
    for sources of a few large documents, which whole documents cannot split finely; auto: documents when
    the source has at least 5 / validation_fraction documents (5 expected in validation), else spans, noted
    in the log and the manifest. auto and spans hold the first 5 / validation_fraction documents (spans:
    all of them) in memory before the first one is used."""
    max_documents: int = 0
    """Read at most this many documents (0 = all)."""
    name: str = ""
    """Label in logs and the manifest (default: the dataset name, the first path, or the kind)."""
    weight: float = 1.0
    """Share of the training tokens drawn from this source, relative to the other sources' weights (0 = not
    trained on). Applied when training samples blocks (exactly, over every data.mixture_window blocks): a new
    weight needs no new data preparation. A small source repeats (its epochs are in the log)."""
    streaming: bool = False
    """For kind=hub: stream records instead of downloading the whole dataset first; for corpora
    that do not fit on disk."""
    clean: CleanConfig | None = None
    """Cleaning for this source (e.g. strip_html off for code); unset = data.clean."""
    filters: QualityFilterConfig | None = None
    """Quality filters for this source; unset = data.filters."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(bool(self.kind), f"{where}.kind: name the source kind, e.g. files, hub or python_stdlib")
        if self.kind == "files":
            p.need(len(self.paths) > 0, f"{where}.paths: kind 'files' needs at least one glob pattern")
        if self.kind == "hub":
            p.need(bool(self.dataset), f"{where}.dataset: kind 'hub' needs a dataset name")
        p.need(self.max_documents >= 0, f"{where}.max_documents: must be >= 0 (0 = all)")
        p.need(self.weight >= 0, f"{where}.weight: {self.weight} must be >= 0 (0 = skip the source)")
        p.need(
            not self.streaming or self.kind == "hub",
            f"{where}.streaming: only kind 'hub' streams; local files are always read lazily",
        )
        p.need(
            self.txt_documents == "file" or self.kind == "files",
            f"{where}.txt_documents: splits local .txt files, which only kind 'files' reads; remove it or use "
            "kind: files",
        )
        return p


@dataclass
class TokenizerConfig:
    """Byte-level BPE tokenizer, trained by tokenizer/train_tokenizer.py."""

    dir: str = "runs/smoke/tokenizer"
    """Where the trained tokenizer is saved; data_prep, train and the export read it from here."""
    vocab_size: int = 8192
    """Final vocabulary size, special tokens included; a multiple of 64 (GPU-friendly matmuls).
    Training pads with reserved tokens to exactly this size, so the model's embedding matches."""
    min_frequency: int = 2
    """A pair must occur at least this often in the corpus to become a merge."""
    max_training_chars: int = 0
    """Train on at most this many characters of cleaned text (0 = all)."""
    cjk_training_chunk_chars: int = 4
    """While training, cut runs of CJK characters into pieces of at most this many characters (no token holds
    more; encoding still keeps a run whole). Bounds the trainer's memory on Chinese: per million characters,
    ≈124 MB at 4, ≈45 MB at 2 (≈7 % more tokens for Chinese at vocabulary 8,192), ≈167 MB with 0 = whole runs
    (best compression, for small samples only); code ≈10 MB (benchmarks/README.md)."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(
            self.vocab_size >= 384 and self.vocab_size % 64 == 0,
            f"{where}.vocab_size: {self.vocab_size} must be a multiple of 64 and at least 384 "
            "(256 byte tokens plus merges and special tokens)",
        )
        p.need(self.min_frequency >= 1, f"{where}.min_frequency: must be at least 1")
        p.need(self.max_training_chars >= 0, f"{where}.max_training_chars: must be >= 0 (0 = all)")
        p.need(
            self.cjk_training_chunk_chars >= 0,
            f"{where}.cjk_training_chunk_chars: must be >= 0 (0 = whole CJK runs; 4 is the default)",
        )
        return p


@dataclass
class DataConfig:
    """Corpus, cleaning and packing, run by data_prep/prepare.py."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    clean: CleanConfig = field(default_factory=CleanConfig)
    filters: QualityFilterConfig = field(default_factory=QualityFilterConfig)
    """Quality filters for every source that sets none of its own."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    dir: str = "runs/smoke/data"
    """Where the packed train/validation splits and manifest.json are written."""
    seq_len: int = 256
    """Tokens per packed block, the model's training context."""
    validation_fraction: float = 0.02
    """Share of every source held out for validation: whole documents chosen by a hash of their text, or, for a
    source of few documents, the tail of its text (data.sources.N.validation_by)."""
    batch_size: int = 1000
    """Documents per tokenizer batch; the tokenizer encodes a batch on all cores."""
    tasks: int = 4
    """Independent slices data preparation cuts every source into (contiguous runs of its files; a kind that cannot
    be sliced, or a source with max_documents, goes to the first task). The prepared data does not depend on it;
    more tasks bound each task's memory and let more workers run (lmtrain/data/workers.py)."""
    workers: int = 1
    """Tasks run at once, each in its own process (datatrove's LocalPipelineExecutor). Output is identical for
    any number; set it to the machine's free cores. On a cluster: data_prep/prepare.py --slurm-partition."""
    mixture_window: int = 0
    """Blocks over which the sources' weights hold exactly (lmtrain/data/sampler.py MixtureSampler): every window
    of this many consecutive training blocks has round(weight share × window) blocks of each source. 0 =
    train.global_batch_size, so every global batch has the same mix."""
    document_masking: bool = False
    """Train with per-document `position_ids` (restarting at 0 at each document start in a block, derived from
    the eos tokens when a block is read: nothing more is stored).
    Training then keeps attention inside each document and does not train on the first token of a
    document that follows another one in its block (lmtrain/data/packing.py: document_labels)."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(len(self.sources) > 0, f"{where}.sources: list at least one source")
        p.need(
            sum(s.weight for s in self.sources) > 0,
            f"{where}.sources: the weights sum to 0; give at least one source a positive weight",
        )
        p.need(self.seq_len >= 8, f"{where}.seq_len: must be at least 8")
        p.need(
            0.0 < self.validation_fraction < 1.0, f"{where}.validation_fraction: must be between 0 and 1 (exclusive)"
        )
        p.need(self.batch_size >= 1, f"{where}.batch_size: must be at least 1")
        p.need(self.tasks >= 1, f"{where}.tasks: must be at least 1")
        p.need(self.workers >= 1, f"{where}.workers: must be at least 1")
        p.need(self.mixture_window >= 0, f"{where}.mixture_window: must be 0 (the global batch) or more")
        return p


@dataclass
class SpeedSwitches:
    """How fast the model runs, not what it computes: each switch gives the plain path's loss and gradients within
    rounding (tests/test_speed.py), except fp8. Shared by pretraining's and fine-tuning's `model` sections. What the
    recipe alone decides is checked here; what the machine must offer (a GPU generation, a package) is checked by
    lmtrain/model/speed.py before any weights are built."""

    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2"] = "sdpa"
    """sdpa: torch's scaled_dot_product_attention (flash or memory-efficient kernels; with document masking a dense
    seq x seq mask per micro-batch selects the memory-efficient one). eager: plain matmuls that keep every score
    matrix (slow; a reference). flex_attention: torch's FlexAttention with a block-sparse document mask built from
    position_ids (skips the blocks between documents; trains on CUDA GPUs only: torch has no CPU backward for it).
    flash_attention_2: the flash-attn package (CUDA, pip install flash-attn), documents as variable-length
    sequences, no mask at all."""
    compile: bool = False
    """torch.compile each decoder layer (and the rest of the model separately) through Accelerate's regional
    compilation, which also works on a DeepSpeed engine and under activation checkpointing. The first steps take
    longer while graphs compile (seconds per graph on a GPU, tens of seconds on a CPU, which needs a C++ compiler)."""
    liger_kernel: bool = False
    """Liger's Triton kernels (pip install liger-kernel; CUDA GPUs): RMSNorm, SwiGLU, RoPE and, for causal language
    models, the fused linear cross-entropy, which never materializes the logits (for a 64,000 vocabulary at seq 4096
    that is ≈1.5 GB per sequence less; `--plan` counts it). Not with DeepSpeed ZeRO-3: the fused loss reads the LM
    head's weight outside the head's forward, where ZeRO-3 has not gathered it."""
    fp8: bool = False
    """FP8 matmuls in every decoder linear layer (torchao's float8 training, tensorwise scaling; pip install torchao),
    the LM head kept in bf16. Needs a GPU of compute capability 8.9 or newer (H100/H200, L4/L40S, B200) and
    model.compile (torchao's casts are only fast compiled). Changes the arithmetic (8-bit inputs to the matmuls,
    bf16-like loss curves in torchao's reports): measure before a long run."""

    def speed_problems(self, where: str) -> list[str]:
        """The checks that need no hardware: combinations the recipe alone rules out."""
        p = Problems()
        p.need(
            not self.fp8 or self.compile,
            f"{where}.fp8: torchao's float8 matmuls need {where}.compile=true to be faster than bf16; set both",
        )
        return p


@dataclass
class ModelConfig(SpeedSwitches):
    """A transformers model: LlamaForCausalLM (a decoder), or an encoder (lmtrain/model/encoder.py). The vocabulary
    size comes from `tokenizer.vocab_size`. The speed switches (attn_implementation, compile, liger_kernel, fp8) are
    SpeedSwitches'."""

    architecture: Literal["llama", "modernbert", "bert"] = "llama"
    """llama: a decoder (LlamaForCausalLM), for objective.kind=clm. modernbert: ModernBertForMaskedLM (RoPE, GeGLU,
    local/global attention), for objective.kind=mlm. bert: the classic BERT, BertForPreTraining with
    objective.nsp (MLM and NSP heads), else BertForMaskedLM."""
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 0
    """Key/value heads for grouped-query attention (0 = same as num_heads, plain MHA)."""
    intermediate_size: int = 688
    """SwiGLU FFN width (Llama: about 8/3 x hidden, rounded)."""
    max_position_embeddings: int = 0
    """Longest context the model supports (0 = data.seq_len)."""
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    """The norms' epsilon (Llama's RMSNorm, ModernBERT's LayerNorm)."""
    local_attention: int = 128
    """modernbert: the sliding window, in tokens, of the two local layers between global ones (ModernBERT: 128)."""
    initializer_range: float = 0.02
    dropout: float | None = None
    """Encoders only: the dropout of hidden states and attention probabilities (BERT's hidden_dropout_prob and
    attention_probs_dropout_prob; ModernBERT's embedding, MLP and attention dropout). Unset: the architecture's
    own default, 0.1 for BERT as in the paper, 0.0 for ModernBERT. Short pretraining runs learn faster without
    it (Cramming, ModernBERT); the decoder has none."""
    tie_word_embeddings: bool = False
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: about a third more compute for a fraction of the
    activation memory. `train.py RECIPE --plan` says whether a launch needs it."""
    init_from: str = ""
    """Start from the weights of this Hugging Face model directory (continued pretraining) instead of a
    random initialization. Its architecture must match this section and the tokenizer's vocabulary."""

    def problems(self, where: str) -> list[str]:
        p = Problems(self.speed_problems(where))
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            p.need(getattr(self, name) >= 1, f"{where}.{name}: must be at least 1")
        p.need(self.dropout is None or 0.0 <= self.dropout < 1.0, f"{where}.dropout: must be in [0, 1), e.g. 0.1")
        if self.num_heads >= 1:
            p.need(
                self.hidden_size % self.num_heads == 0,
                f"{where}.hidden_size: {self.hidden_size} is not divisible by {where}.num_heads {self.num_heads}",
            )
            kv = self.num_kv_heads or self.num_heads
            p.need(
                self.num_kv_heads >= 0 and self.num_heads % kv == 0,
                f"{where}.num_kv_heads: {self.num_kv_heads} must divide {where}.num_heads {self.num_heads}",
            )
        return p


@dataclass
class TrainConfig:
    """Optimization, evaluation and logging for train.py."""

    max_steps: int = 300
    """Optimizer steps; tokens = max_steps x global_batch_size x data.seq_len."""
    global_batch_size: int = 8
    """Sequences per optimizer step, over all processes. Fixed by the recipe: gradient
    accumulation = global_batch_size / (micro_batch_size x processes) adapts to the launch."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass on one process."""
    lr: float = 3e-4
    """Peak learning rate, reached after warmup."""
    schedule: Literal["cosine", "wsd", "linear"] = "cosine"
    """The learning rate after the warmup. cosine: a half cosine from lr down to lr x min_lr_ratio at
    max_steps; linear: a straight line down to it; wsd (warmup-stable-decay): constant at lr, then a straight
    line down to lr x min_lr_ratio over the last decay_steps steps. Until its decay begins, WSD's learning rate
    does not depend on max_steps, so any checkpoint of the stable phase can be extended into a longer run
    (resume it with a larger max_steps and allow_resume_changes) or annealed into a finished model with a short
    decay, and one run yields models for several token budgets; cosine commits to max_steps from step 1."""
    min_lr_ratio: float = 0.1
    """Every schedule ends at lr x min_lr_ratio at max_steps."""
    warmup_steps: int = 30
    """Steps of linear warmup from 0 to lr, the same for every schedule."""
    decay_steps: int = 0
    """For schedule wsd: the steps of the final decay, at most max_steps - warmup_steps (0 = a fifth of
    max_steps: a decay of 10-20% of the run matched cosine in Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations")."""
    weight_decay: float = 0.1
    """Applied to the weights of linear layers and embeddings; never to norms or biases."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 mixed precision on GPUs that support it, fp32 elsewhere."""
    seed: int = 1234
    eval_every: int = 50
    """Evaluate on the validation split before the first step, every N steps and at the end."""
    eval_batches: int = 8
    """Validation micro-batches per evaluation, all processes together (0 = the whole split). The same
    blocks are evaluated on any number of processes."""
    log_every: int = 10
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Experiment trackers through Accelerate. wandb also runs offline (WANDB_MODE=offline)."""
    best_metric: str = ""
    """Also export the model with the best value of this evaluation metric (e.g. eval_loss, accuracy) to
    run_dir/best/. Metrics ending in `loss`, `ppl` or `bpb` are minimized, others maximized. Empty = final only."""
    checkpoint_every: int = 100
    """Save the full training state (weights, optimizer, scheduler, data position, RNG) every N steps to
    run_dir/checkpoints/; also at the end and when the run is preempted (0 = only then)."""
    checkpoint_async: bool = False
    """Save checkpoints in the background: training waits only while each process writes its state into node-local
    RAM (/dev/shm, or $LMTRAIN_CHECKPOINT_SNAPSHOT_DIR), then continues while it is copied to run_dir and published
    (at most one save in flight; the last save and a preemption's wait). Needs free RAM for each process's share of
    a checkpoint; on in the 7B pretraining and SFT recipes, where a synchronous save stalls every GPU
    (docs/training.md)."""
    keep_last: int = 2
    """Checkpoints to keep, newest first (at least 1: the one a resume needs)."""
    keep_every: int = 0
    """Also keep every checkpoint whose step is a multiple of this, for later analysis (0 = none)."""
    resume: str = "auto"
    """auto: continue from the newest complete checkpoint in run_dir/checkpoints, if any; never: start
    fresh; or the path of a checkpoint directory."""
    allow_resume_changes: bool = False
    """Resume although the recipe, tokenizer or data differ from the checkpoint's in a way that alters the
    run (the differences are still printed). Logging, evaluation and checkpoint settings may always change."""
    overwrite: bool = False
    """Replace the checkpoints of a different (or unresumed) run found in run_dir instead of refusing."""
    max_skipped_steps: int = 5
    """Steps whose loss or gradient norm is not finite are skipped (no update); this many in a row stop
    the run after saving a checkpoint."""
    spike_factor: float = 3.0
    """Log a loss spike, with the batch's data indices, when a step's loss exceeds this multiple of the
    mean of the previous 50 steps (0 = off)."""

    def wsd_decay_steps(self) -> int:
        """decay_steps with its default applied."""
        return self.decay_steps or self.max_steps // 5

    def problems(self, where: str) -> list[str]:
        """train.best_metric depends on the task: the top-level schema checks it with `best_metric_problems`."""
        p = Problems()
        p.need(self.max_steps >= 1, f"{where}.max_steps: must be at least 1")
        p.need(self.micro_batch_size >= 1, f"{where}.micro_batch_size: must be at least 1")
        p.need(
            self.global_batch_size >= 1 and self.global_batch_size % max(self.micro_batch_size, 1) == 0,
            f"{where}.global_batch_size: {self.global_batch_size} must be a multiple of {where}.micro_batch_size "
            f"{self.micro_batch_size}",
        )
        p.need(self.lr > 0, f"{where}.lr: must be positive")
        p.need(0.0 <= self.min_lr_ratio <= 1.0, f"{where}.min_lr_ratio: must be between 0 and 1")
        p.need(
            0 <= self.warmup_steps <= self.max_steps, f"{where}.warmup_steps: must be between 0 and {where}.max_steps"
        )
        p.need(self.decay_steps >= 0, f"{where}.decay_steps: must be >= 0 (0 = a fifth of {where}.max_steps)")
        if self.schedule == "wsd":
            room = self.max_steps - self.warmup_steps
            default = f" (the default, a fifth of {where}.max_steps)" if not self.decay_steps else ""
            p.need(
                self.wsd_decay_steps() <= room,
                f"{where}.decay_steps: a decay of {self.wsd_decay_steps()} steps{default} does not fit after "
                f"{self.warmup_steps} warmup steps in {self.max_steps}; set {where}.decay_steps to at most {room}",
            )
        else:
            p.need(
                self.decay_steps == 0,
                f"{where}.decay_steps: only {where}.schedule=wsd has a decay phase (this recipe uses "
                f"{self.schedule}); set {where}.schedule=wsd or {where}.decay_steps=0",
            )
        p.need(
            len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas),
            f"{where}.adam_betas: must be two numbers in [0, 1), e.g. [0.9, 0.95]",
        )
        p.need(self.grad_clip >= 0, f"{where}.grad_clip: must be >= 0 (0 = no clipping)")
        p.need(self.eval_every >= 1, f"{where}.eval_every: must be at least 1")
        p.need(self.eval_batches >= 0, f"{where}.eval_batches: must be >= 0 (0 = the whole validation split)")
        p.need(self.log_every >= 1, f"{where}.log_every: must be at least 1")
        p.need(
            self.checkpoint_every >= 0,
            f"{where}.checkpoint_every: must be >= 0 (0 = only at the end and on preemption)",
        )
        p.need(self.keep_last >= 1, f"{where}.keep_last: must be at least 1 (resuming needs the newest checkpoint)")
        p.need(self.keep_every >= 0, f"{where}.keep_every: must be >= 0 (0 = keep only the last ones)")
        p.need(self.max_skipped_steps >= 1, f"{where}.max_skipped_steps: must be at least 1")
        p.need(self.spike_factor == 0 or self.spike_factor > 1, f"{where}.spike_factor: must be above 1 (or 0 = off)")
        return p

    def best_metric_problems(self, where: str, metrics: tuple[str, ...], what: str) -> list[str]:
        """best_metric must be one of the `metrics` that `what` (the run's task) evaluates."""
        p = Problems()
        p.need(
            not self.best_metric or self.best_metric in metrics,
            f"{where}.best_metric: {self.best_metric!r} is not a metric of {what}; choose one of "
            f"{', '.join(metrics)} (or leave it empty)",
        )
        return p


REPO_ID = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$"
)
"""`org/name` as the Hugging Face Hub accepts it: letters, digits, `.`, `_`, `-`, not at either end."""

SECRET_KEYS = ("token", "hf_token", "api_key", "password", "secret")
"""Keys that would hold a secret: refused anywhere in a recipe, which is copied into run directories and cards."""

SECRET_VALUE = re.compile(r"^hf_[A-Za-z0-9]{20,}$")
"""A Hugging Face access token, refused as any recipe value."""


@dataclass
class HubConfig:
    """Publishing to a model hub while the run trains (lmtrain/publish/): the Hugging Face Hub, or the server
    that HF_ENDPOINT names. The token comes only from the environment (HF_TOKEN) or the `hf auth login`
    cache; a recipe that holds one is refused, and no token is ever printed or saved."""

    repo_id: str = ""
    """The model repository, `org/name` (created if missing)."""
    private: bool = True
    """Create the repository private (an existing repository keeps its visibility)."""
    push: Literal["none", "final", "checkpoints"] = "none"
    """none: publish nothing (`python publish.py RUN_DIR` can publish later); final: the final model on `main`;
    checkpoints: also every checkpoint as its own branch, `step0002000-tokens8.4B`, while training goes on."""
    checkpoint_every: int = 0
    """With push=checkpoints: publish only the checkpoints whose step is a multiple of this (a multiple of
    train.checkpoint_every; 0 = every checkpoint). The 7B saves every 500 steps and publishes every 10,000."""
    license: str = "apache-2.0"
    """The license in the model card's metadata (a Hub license id, e.g. apache-2.0, mit, other)."""
    max_shard_size: str = "5GB"
    """Safetensors shards of the exported weights are at most this large (the Hub's own default), so that
    downloads resume per file."""
    upload_retries: int = 5
    """A failed upload (network, 5xx, 429) is tried this many more times before it is reported and left for
    the next run of the same command to publish."""
    retry_wait_s: float = 10.0
    """Seconds before the first retry; each further retry waits twice as long (a 429's Retry-After wins)."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(
            not self.repo_id or bool(REPO_ID.match(self.repo_id)),
            f"{where}.repo_id: {self.repo_id!r} is not `org/name` (letters, digits, `.`, `_`, `-`), e.g. me/smoke",
        )
        p.need(
            self.push == "none" or bool(self.repo_id),
            f"{where}.repo_id: {where}.push={self.push} needs a repository, e.g. {where}.repo_id=me/my-model",
        )
        p.need(self.checkpoint_every >= 0, f"{where}.checkpoint_every: must be >= 0 (0 = every checkpoint)")
        p.need(self.upload_retries >= 0, f"{where}.upload_retries: must be >= 0")
        p.need(self.retry_wait_s >= 0, f"{where}.retry_wait_s: must be >= 0")
        p.need(
            bool(re.fullmatch(r"\d+(\.\d+)?\s*[KMG]B", self.max_shard_size)),
            f"{where}.max_shard_size: {self.max_shard_size!r} is not a size such as 5GB or 500MB",
        )
        return p


@dataclass
class EvalTaskConfig:
    """A multiple-choice task scored in the loop (lmtrain/evals): each item is a context, its choices and the
    index of the right one; each choice is scored by its log-likelihood after the context, as
    lm-evaluation-harness scores `multiple_choice` tasks, and the metrics are `<name>/acc` (the most likely choice
    is right) and `<name>/acc_norm` (the same after dividing each log-likelihood by the choice's characters)."""

    name: str = ""
    """The task's name: metric keys, the exported task file and lm-eval's task name. Letters, digits, _ . -"""
    path: str = ""
    """A JSONL file of items, one per line: {"context": "...", "choices": ["...", "..."], "gold": 0}."""
    build: Literal["", "line_completion"] = ""
    """Build the items from held-out text instead of a file (text data prep held out of training; never trained
    on). line_completion: three lines and the start of the next one as the context; the rest of that line among
    the rests of three lines of other held-out documents of the same source as the choices (chance: 25 %)."""
    source: str = ""
    """For build: the data source whose held-out text is used, by its name in the log and manifest (default:
    the first source)."""
    delimiter: str | None = None
    """Put between the context and each choice (lm-evaluation-harness's target_delimiter). Unset: " " for a file
    task (lm-eval's default), "" for line_completion (its context stops before a space, which the choices hold)."""
    max_items: int = 0
    """Score at most this many items (a file's first ones; the number a built task builds; 0 = all of a file,
    200 for a built task)."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(
            bool(re.fullmatch(r"[\w.-]+", self.name)),
            f"{where}.name: {self.name!r} must be a non-empty name of letters, digits, _ . or - (it names the metrics)",
        )
        p.need(
            bool(self.path) != bool(self.build),
            f"{where}: set exactly one of path (a JSONL file of items) and build (e.g. build: line_completion)",
        )
        p.need(not self.source or bool(self.build), f"{where}.source: only a built task reads a source; remove it")
        p.need(self.max_items >= 0, f"{where}.max_items: must be >= 0 (0 = all of a file, 200 for a built task)")
        return p


@dataclass
class EvalConfig:
    """Downstream evaluation during pretraining: multiple-choice tasks scored on the model being trained, with
    the validation loss (lmtrain/training/downstream.py). Results go to the log, metrics.jsonl and the trackers."""

    tasks: list[EvalTaskConfig] = field(default_factory=list)
    every: int = 0
    """Score the tasks every N steps, N a multiple of train.eval_every (0 = at every validation); also before
    the first step and at the end."""
    seed: int = 1234
    """Seed of built tasks (which lines, which distractors, where the right choice goes)."""
    suite: list[str] = field(default_factory=list)
    """lm-eval task names to run on this recipe's exports with `evaluate_model.py MODEL --recipe RECIPE` (the
    standard benchmarks, e.g. hellaswag, mmlu, ceval-valid); not run in the loop."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        p.need(self.every >= 0, f"{where}.every: must be >= 0 (0 = at every validation)")
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        p.need(not duplicates, f"{where}.tasks: names must differ; {', '.join(duplicates)} is used twice")
        return p


PRETRAINING_METRICS = ("eval_loss", "eval_ppl", "eval_bpb")
"""What pretraining's evaluation reports; train.best_metric must be one of them."""
MLM_METRICS = ("eval_loss", "eval_mlm_loss", "eval_mlm_accuracy")
NSP_METRICS = ("eval_nsp_loss", "eval_nsp_accuracy")


@dataclass
class ObjectiveConfig:
    """What pretraining predicts (docs/encoders.md). clm: the next token (a decoder). mlm: masked tokens (an
    encoder), chosen anew each time a block is used (RoBERTa's dynamic masking) from the seed, the step and the
    block, so a resume and any number of processes mask alike; with nsp, also whether segment B follows
    segment A (BERT's next-sentence prediction, on pairs data_prep/ builds)."""

    kind: Literal["clm", "mlm"] = "clm"
    mask_rate: float = 0.15
    """mlm: the share of (non-special) tokens chosen for the loss. BERT: 0.15; ModernBERT: 0.30."""
    mask_replace_prob: float = 0.8
    """mlm: of the chosen tokens, the share replaced by the mask token (BERT: 0.8)."""
    random_replace_prob: float = 0.1
    """mlm: of the chosen tokens, the share replaced by a random token (BERT: 0.1); the rest stay unchanged."""
    whole_word_mask: bool = False
    """mlm: choose whole words (a run of tokens that starts with a space, a symbol or a CJK character; Chinese
    words as chinese_words says) rather than single tokens. transformers' collator then replaces every chosen token by
    the mask token: set mask_replace_prob=1.0 and random_replace_prob=0.0 with it."""
    chinese_words: Literal["characters", "jieba"] = "characters"
    """whole_word_mask: what a Chinese word is. characters: each CJK character (as Google's Chinese BERT); jieba:
    the words jieba's dictionary segments each run of Chinese characters into, a word's tokens chosen together
    (Chinese whole-word masking, Cui et al.'s BERT-wwm, which segmented with LTP)."""
    nsp: bool = False
    """Next-sentence prediction on `[CLS] A [SEP] B [SEP]` pairs, B the true continuation of A half of the time
    (needs model.architecture=bert; data_prep/ builds the pairs)."""
    short_seq_prob: float = 0.1
    """nsp: the share of pairs given a random shorter length (BERT: 0.1), so the model also sees short inputs."""

    def problems(self, where: str) -> list[str]:
        p = Problems()
        if self.kind == "mlm":
            p.need(0.0 < self.mask_rate < 1.0, f"{where}.mask_rate: {self.mask_rate} must be in (0, 1), e.g. 0.15")
            for name in ("mask_replace_prob", "random_replace_prob", "short_seq_prob"):
                value = getattr(self, name)
                p.need(0.0 <= value <= 1.0, f"{where}.{name}: {value} must be a fraction between 0 and 1")
            p.need(
                self.mask_replace_prob + self.random_replace_prob <= 1.0,
                f"{where}: mask_replace_prob + random_replace_prob is "
                f"{self.mask_replace_prob + self.random_replace_prob:g}; they must not exceed 1 (BERT: 0.8 + 0.1)",
            )
            p.need(
                not self.whole_word_mask or (self.mask_replace_prob == 1.0 and self.random_replace_prob == 0.0),
                f"{where}.whole_word_mask: transformers' whole-word masking replaces every chosen token by the mask "
                f"token; set {where}.mask_replace_prob=1.0 and {where}.random_replace_prob=0.0",
            )
        p.need(
            self.chinese_words == "characters" or (self.kind == "mlm" and self.whole_word_mask),
            f"{where}.chinese_words: {self.chinese_words} segments Chinese for whole-word masking only; set "
            f"{where}.whole_word_mask=true (with {where}.kind=mlm) or leave {where}.chinese_words out",
        )
        p.need(
            not self.nsp or self.kind == "mlm",
            f"{where}.nsp: next-sentence prediction trains an encoder beside masked tokens; set {where}.kind=mlm",
        )
        return p


def objective_problems(recipe: Recipe, at: str) -> list[str]:
    """The objective must suit the model and the data: MLM needs an encoder, CLM a decoder, NSP BERT's heads."""
    o, m = recipe.objective, recipe.model
    p = Problems()
    encoder = m.architecture in ("bert", "modernbert")
    if o.kind == "clm":
        p.need(
            not encoder,
            f"{at}model.architecture: {m.architecture} is an encoder; it trains with {at}objective.kind=mlm "
            "(next-token prediction needs model.architecture=llama)",
        )
        p.need(m.dropout is None, f"{at}model.dropout: the decoder trains without dropout; remove the key")
        return p
    p.need(
        encoder,
        f"{at}objective.kind: mlm trains an encoder; set {at}model.architecture=modernbert or bert "
        f"(llama is a decoder)",
    )
    p.need(
        not o.nsp or m.architecture == "bert",
        f"{at}objective.nsp: next-sentence prediction needs BERT's pair head; set {at}model.architecture=bert "
        f"(it is {m.architecture}) or {at}objective.nsp=false",
    )
    for switch in ("compile", "liger_kernel", "fp8"):
        p.need(
            not getattr(m, switch),
            f"{at}model.{switch}: is measured for the decoder only; turn it off for an encoder",
        )
    p.need(
        m.attn_implementation in ("sdpa", "eager"),
        f"{at}model.attn_implementation: {m.attn_implementation} is offered for the decoder; use sdpa or eager",
    )
    p.need(
        not recipe.data.document_masking,
        f"{at}data.document_masking: applies to the decoder's packed blocks; set it to false for an encoder",
    )
    p.need(
        not recipe.eval.tasks,
        f"{at}eval.tasks: multiple-choice tasks score a decoder's likelihoods; remove them for an encoder "
        "(fine-tune it with finetune.py instead)",
    )
    metrics = MLM_METRICS + (NSP_METRICS if o.nsp else ())
    p.extend(recipe.train.best_metric_problems(f"{at}train", metrics, "masked-language-model pretraining"))
    return p


@dataclass
class Recipe:
    """A whole run: tokenizer, data, model and training."""

    run_dir: str = "runs/smoke"
    """Run outputs: resolved recipe, metrics.jsonl, tracker logs, final/ export."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def problems(self, where: str) -> list[str]:
        """The checks that span sections; each section checks its own fields."""
        at = f"{where}." if where else ""
        p = Problems(objective_problems(self, at))
        m, seq_len = self.model.max_position_embeddings, self.data.seq_len
        p.need(
            m == 0 or m >= seq_len,
            f"{at}model.max_position_embeddings: {m} is shorter than {at}data.seq_len {seq_len}",
        )
        if self.objective.kind == "clm":
            p.extend(self.train.best_metric_problems(f"{at}train", PRETRAINING_METRICS, "pretraining"))
        every, eval_every = self.eval.every, self.train.eval_every
        p.need(
            every <= 0 or eval_every <= 0 or every % eval_every == 0,
            f"{at}eval.every: {every} is not a multiple of {at}train.eval_every {eval_every}; the tasks run with "
            f"the validation loss (e.g. {at}eval.every={max(every // eval_every, 1) * eval_every})",
        )
        return p


# ---------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] = (), schema: type = Recipe):
    """Read a YAML recipe, apply `key.path=value` overrides, validate, return the typed tree.

    `schema` is the top-level dataclass (Recipe for pretraining, FinetuneRecipe for fine-tuning). Once the
    typed tree is built, every section's `problems(where)` is collected (`collect_problems`)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            str(path), ["file not found; pass the path of a YAML recipe, e.g. recipes/smoke/pretrain.yaml"]
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(str(path), [f"not valid YAML: {exc}"]) from None
    except UnicodeDecodeError:
        raise RecipeError(str(path), ["not UTF-8 text"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        names = ", ".join(f.name for f in dataclasses.fields(schema))
        raise RecipeError(str(path), [f"the top level must be a mapping of keys ({names})"])
    raw = _merge(recipe_to_dict(schema()), raw)  # overrides may target keys the file leaves at their defaults
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    problems.extend(_remove_secrets(raw))
    recipe = _build(schema, raw, "", problems)
    if not problems:
        problems.extend(collect_problems(recipe))
    if problems:
        raise RecipeError(str(path), problems)
    return recipe


def collect_problems(section, where: str = "") -> list[str]:
    """Every problem in the tree under `section`: its own `problems(where)`, if it defines the method, then
    those of its fields in field order, a list's sections by index; an unset optional section (None) has none."""
    found = list(section.problems(where)) if hasattr(section, "problems") else []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        path = _join(where, f.name)
        if isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    found += collect_problems(item, f"{path}.{i}")
        elif dataclasses.is_dataclass(value):
            found += collect_problems(value, path)
    return found


def recipe_to_dict(recipe) -> dict:
    return dataclasses.asdict(recipe)


def recipe_to_yaml(recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True)


def _remove_secrets(tree, where: str = "") -> list[str]:
    """Take every secret out of the raw recipe (before it can be built, printed or saved) and say where each
    was: a key named like one (`hub.token`) or a value that is a Hugging Face token."""
    problems, advice = [], "tokens do not belong in a recipe; set HF_TOKEN in the environment or run `hf auth login`"
    items = list(tree.items()) if isinstance(tree, dict) else list(enumerate(tree)) if isinstance(tree, list) else []
    for key, value in items:
        path = _join(where, str(key))
        if (isinstance(key, str) and key.lower() in SECRET_KEYS) or (
            isinstance(value, str) and SECRET_VALUE.match(value)
        ):
            problems.append(f"{path}: {advice} (the recipe is copied into the run directory and the model card)")
            if isinstance(tree, dict):
                del tree[key]
            else:
                tree[key] = ""
        else:
            problems.extend(_remove_secrets(value, path))
    return problems


def _merge(base: dict, update: dict) -> dict:
    """`update` laid over `base`; sections merge key by key, any other value (lists too) replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict, item: str, problems: list[str]) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        problems.append(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
        return
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                problems.append(f"override {item!r}: {'.'.join(parts[: i + 1])} is not an index of the list")
                return
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            problems.append(f"override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            return
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            problems.append(f"override {item!r}: {key} is not an index of the list")
            return
        node[int(last)] = value
    else:
        node[last] = value


def _build(cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    """Construct dataclass `cls` from `raw`, recording problems instead of raising."""
    label = where or "the recipe"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{label}: expected a section of keys, got {type(raw).__name__} {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            guess = _suggest(str(key), names)
            hint = f"; did you mean {_join(where, guess)}?" if guess else f"; valid keys: {', '.join(names)}"
            problems.append(f"{path}: unknown key{hint}")
            continue
        kwargs[key] = _convert(hints[key], value, path, problems)
    return cls(**kwargs)


def _suggest(key: str, names: list[str]) -> str | None:
    """The valid key the user most likely meant: a near spelling (max_step → max_steps), else the
    key sharing the most underscore-separated words (lr_peak → lr)."""
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return close[0]
    words = set(key.lower().split("_"))
    scored = [
        (len(words & set(name.split("_"))), difflib.SequenceMatcher(None, key, name).ratio(), name) for name in names
    ]
    best = max(scored)
    return best[2] if best[0] > 0 else None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            guess = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            problems.append(f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}{hint}")
            return choices[0]
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__} {value!r}")
            return []
        return [_convert(item_tp, v, f"{path}.{i}", problems) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    problems.append(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return None


def gradient_accumulation_steps(recipe, num_processes: int) -> int:
    """Micro-batches per process per optimizer step, so the global batch stays what the recipe says."""
    t = recipe.train
    per_step = t.micro_batch_size * num_processes
    if t.global_batch_size % per_step:
        raise RecipeError(
            "train",
            [
                f"train.global_batch_size {t.global_batch_size} is not divisible by micro_batch_size "
                f"{t.micro_batch_size} x {num_processes} process(es); change one of them or the launch"
            ],
        )
    return t.global_batch_size // per_step
