"""The tokenizer's quality report: bytes per token on held-out English, Chinese and code, and
the share of the learned vocabulary spent on each script. Written next to the tokenizer.

The samples exist offline on every machine:
- code: standard-library .py files that the data split holds out (the validation hash), so a
  tokenizer trained on the standard library has never seen them;
- English: the comments and docstrings of those same files;
- Chinese: files given with --zh-sample, else the held-out documents of the recipe's own corpus
  that are mostly Chinese, else a short built-in passage (written for this project), which gives
  only a rough figure and is labelled as such.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
import unicodedata
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer, pre_tokenizers

from lmtrain.config.recipe import Recipe, SourceConfig
from lmtrain.corpus.cleaning import clean_text
from lmtrain.corpus.filters import CJK_CHARS
from lmtrain.corpus.sources import CorpusStats, is_validation_document, python_stdlib_files, read_source

REPORT = "quality_report.json"
SAMPLE_CHARS = 500_000
"""Characters per language sample: a stable bytes/token (to about 1%), measured in about a second."""
_HAN = re.compile(rf"[{CJK_CHARS}]")
BUILT_IN_CHINESE = (
    "这个项目从原始文本开始，一步一步地训练一个中英文和代码都能处理的语言模型。"
    "第一步是训练分词器：它直接在字节上学习合并规则，所以任何文字都不会变成未知符号，解码以后和原文完全一样。"
    "第二步是准备数据：先清洗文本，去掉网页标签和控制字符，但是保留中文的全角标点；"
    "再用启发式规则过滤质量很差的页面，比如重复的广告、只有链接的目录和几乎没有句子的列表；"
    "然后删除完全相同和高度相似的文档，避免模型反复背诵同一段内容。"
    "第三步是把文档拼接成固定长度的训练块，每个文档后面加上结束符号，一个也不浪费。"
    "如果打开文档感知的打包方式，每个文档在块里的位置都从零开始，注意力不会跨过文档的边界。"
    "训练的时候，每一步读取的数据都由随机种子决定，中断以后可以从任意一步继续，不需要重新读一遍数据。"
    "最后导出的模型是普通的目录，可以直接用来生成文本，也可以上传到模型仓库，和别人分享。"
    "我们希望这样的流程足够清楚，让第一次训练模型的人也能看懂每一步在做什么，为什么要这样做。"
)


def write_quality_report(
    recipe: Recipe, held_out: list[str], sample_paths: dict[str, list[str]], text_column: str = "text"
) -> dict:
    """Measure the tokenizer in tokenizer.dir on the samples and write REPORT next to it."""
    directory = Path(recipe.tokenizer.dir)
    encoder = Tokenizer.from_file(str(directory / "tokenizer.json"))
    samples = held_out_samples(recipe, held_out, sample_paths, text_column)
    report = {
        "bytes_per_token": {lang: bytes_per_token(encoder, texts) for lang, (_, texts) in samples.items()},
        "samples": {
            lang: {"source": source, "documents": len(texts), "bytes": sum(len(t.encode()) for t in texts)}
            for lang, (source, texts) in samples.items()
        },
        "vocabulary_share_by_script": vocabulary_share_by_script(encoder),
    }
    (directory / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def held_out_samples(
    recipe: Recipe, held_out: list[str], sample_paths: dict[str, list[str]], text_column: str = "text"
) -> dict:
    """{language: (where the sample comes from, texts)} for en, zh and code."""
    code = _held_out_stdlib(recipe)
    samples = {
        "en": ("comments and docstrings of held-out standard-library files", [python_prose(t) for t in code]),
        "zh": _chinese_sample(held_out),
        "code": ("held-out standard-library .py files", code),
    }
    for lang, paths in sample_paths.items():
        if paths:
            texts = read_sample(paths, text_column)
            samples[lang] = (", ".join(paths), texts)
    return {lang: (source, [t for t in texts if t]) for lang, (source, texts) in samples.items()}


def bytes_per_token(encoder: Tokenizer, texts: list[str]) -> float | None:
    if not texts:
        return None
    encodings = encoder.encode_batch_fast(texts, add_special_tokens=False)
    return round(sum(len(t.encode("utf-8")) for t in texts) / sum(len(e.ids) for e in encodings), 3)


def vocabulary_share_by_script(encoder: Tokenizer) -> dict[str, float]:
    """Share of the learned (non-special) tokens by the script of their text."""
    byte_of = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}
    special = {t.content for t in encoder.get_added_tokens_decoder().values()}
    counts = Counter(_script(bytes(byte_of[c] for c in token)) for token in encoder.get_vocab() if token not in special)
    total = sum(counts.values())
    return {script: round(n / total, 4) for script, n in counts.most_common()}


def _byte_symbols() -> list[str]:
    """The printable symbol that byte-level BPE uses for each byte value 0..255, in byte order."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    printable = [b for b in range(256) if chr(b) in alphabet]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [mapping[b] for b in range(256)]


def _script(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "partial_utf8"  # a piece of a multi-byte character: CJK and emoji are built from these
    if _HAN.search(text):
        return "cjk"
    letters = [c for c in text if c.isalpha()]
    if letters:
        return "latin" if all(unicodedata.name(c, "").startswith("LATIN") for c in letters) else "other_letters"
    if any(c.isdigit() for c in text):
        return "digits"
    if text.isspace():
        return "whitespace"
    return "punctuation_symbols"


def _held_out_stdlib(recipe: Recipe) -> list[str]:
    """Standard-library files the tokenizer did not train on: the validation split's, if the
    standard library is one of the recipe's sources; otherwise any."""
    trained_on_stdlib = any(s.kind == "python_stdlib" and s.weight > 0 for s in recipe.data.sources)
    texts, chars = [], 0
    for path in python_stdlib_files():
        try:
            text = clean_text(path.read_text(encoding="utf-8"), recipe.data.clean)
        except (UnicodeDecodeError, OSError):
            continue
        if text and (not trained_on_stdlib or is_validation_document(text, recipe.data.validation_fraction)):
            texts.append(text)
            chars += len(text)
            if chars >= SAMPLE_CHARS:
                break
    return texts


def python_prose(source: str) -> str:
    """The comments and docstrings of a Python file, without their markers."""
    pieces = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                pieces.append(token.string.lstrip("#").strip())
            elif token.type == tokenize.STRING and token.string.endswith(('"""', "'''")):
                pieces.append(token.string.strip("\"'rbuRBU").strip())
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # a deliberately broken test file: keep what was read
    return "\n".join(p for p in pieces if p)


def _chinese_sample(held_out: list[str]) -> tuple[str, list[str]]:
    chinese = [t for t in held_out if len(_HAN.findall(t)) > 0.3 * len(t)]
    if chinese:
        return "held-out documents of the recipe's corpus that are mostly Chinese", chinese
    return "built-in passage (short: a rough figure; pass --zh-sample for a real one)", [BUILT_IN_CHINESE]


def read_sample(paths: list[str], text_column: str = "text", max_chars: int = SAMPLE_CHARS) -> list[str]:
    """Documents from local files (any kind data.sources reads), up to max_chars characters."""
    texts, chars = [], 0
    for text in read_source(SourceConfig(kind="files", paths=paths, text_column=text_column), CorpusStats()):
        texts.append(text)
        chars += len(text)
        if chars >= max_chars:
            break
    return texts
