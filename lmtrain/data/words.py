"""Word boundaries in blocks of byte-level BPE tokens, for whole-word masking (lmtrain/data/masking.py).

transformers' DataCollatorForLanguageModeling finds words from a fast tokenizer's character offsets: a token starts
a word where there is a gap before it. In this byte-level BPE a word carries its leading space, so offsets never
leave a gap and a whole block would be one word. `WordBoundaries.offsets` gives the collator offsets with a gap
before every word start instead, so the collator's own whole-word code does the choosing. A word start is read
from the tokens' bytes:

- English and code (`word_edges`, per token id): a token starts a word when it starts with a space or a symbol, or
  follows a token that ends with one; a token that starts inside a character (a byte-split character: this BPE
  leaves characters outside its alphabet to their bytes) never does, so a character's tokens stay together.
- Chinese, `objective.chinese_words`: `characters` makes each CJK character a word (as for Japanese kana and
  Hangul); `jieba` segments each run of Chinese characters of the block's text into words (`ChineseWords`) and
  joins a token that starts inside a multi-character word to the word before it. Segmentation is a pure function
  of the block's text and of the dictionary built into the pinned package, so masks stay the same on any process
  and after a resume.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import rjieba
import torch
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from lmtrain.errors import UserError

HAN_BLOCKS = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x323AF))
"""Unicode blocks of Chinese characters (code point ranges, inclusive), see `is_han`."""


class WordBoundaries:
    """`offsets(ids)`: the character offsets DataCollatorForLanguageModeling reads a block's words from."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, chinese_words: str):
        pieces = token_bytes(tokenizer)
        self.edges = torch.from_numpy(word_edges(pieces))
        self.chinese = ChineseWords(pieces) if chinese_words == "jieba" else None

    def offsets(self, ids: torch.Tensor) -> torch.Tensor:
        starts = word_starts(ids, self.edges)
        if self.chinese is not None:
            starts &= ~torch.from_numpy(self.chinese.inside_words(ids.numpy()))
            starts[0] = True
        return gap_before(starts)


class ChineseWords:
    """Which tokens of a block start inside a Chinese word of several characters (not at its first character), by
    jieba's segmentation of the block's text.

    The segmenter is rjieba, the Python binding of jieba-rs (jieba's algorithm and dictionary in Rust), not the
    `jieba` package: on the 854,740 Chinese characters of ChnSentiCorp's hotel reviews both give the same 505,899
    words, rjieba 12.8× faster (2.28 M against 0.18 M characters/s on one core, HMM on: benchmarks/README.md), with
    its dictionary built into the wheel, where `jieba` builds a prefix dictionary at first use (0.99 s), caches it
    as a file in the temporary directory (which another user's file of the same name could stand in for) and logs
    to stderr. The instance is our own, so words added to rjieba's default instance elsewhere cannot change ours."""

    def __init__(self, pieces: list[bytes]):
        self.segmenter = rjieba.Jieba()
        # special tokens stand for no text; as a line break they keep a word from spanning a [SEP]
        pieces = [piece or b"\n" for piece in pieces]
        self.token_bytes = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        self.token_length = np.array([len(piece) for piece in pieces], dtype=np.int64)
        self.token_offset = np.cumsum(self.token_length) - self.token_length

    def inside_words(self, ids: np.ndarray) -> np.ndarray:
        """Per token of the block: does it start at a character inside a multi-character word?"""
        lengths = self.token_length[ids]
        token_start = np.cumsum(lengths) - lengths
        # a block may cut a character at either end; each byte of it becomes one character of its own
        text = self.block_bytes(ids, lengths, token_start).decode("utf-8", "surrogateescape")
        code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        han = is_han(code_points)
        if not han.any():
            return np.zeros(len(ids), dtype=bool)
        inside = han & ~self.character_word_starts(han, code_points)
        return inside[np.searchsorted(char_byte_starts(code_points), token_start, side="right") - 1]

    def block_bytes(self, ids: np.ndarray, lengths: np.ndarray, token_start: np.ndarray) -> bytes:
        """The block's tokens' bytes, gathered in one numpy indexing rather than a join of Python objects."""
        source = np.repeat(self.token_offset[ids] - token_start, lengths) + np.arange(lengths.sum())
        return self.token_bytes[source].tobytes()

    def character_word_starts(self, han: np.ndarray, code_points: np.ndarray) -> np.ndarray:
        """Per character: does a word start there? Every character that is not Chinese becomes a line break, so
        the block is one call to the segmenter (with a call per run of Chinese, and Python around it, segmenting a
        1,024-token block took about 2.5× as long: benchmarks/README.md), each run is segmented apart (jieba
        splits its input at every character that is not Chinese) and the positions stay those of the text."""
        runs = np.where(han, code_points, ord("\n")).astype(np.uint32).tobytes().decode("utf-32-le")
        words = self.segmenter.cut(runs, True)  # jieba's default: HMM on, for words its dictionary lacks
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        starts = np.zeros(len(runs), dtype=bool)
        starts[np.cumsum(lengths) - lengths] = True
        return starts


def is_han(code_points: np.ndarray) -> np.ndarray:
    """Chinese characters: the CJK Unified Ideographs blocks, extensions A-H and the compatibility block, the text
    jieba segments. Latin letters and digits next to them stay words of their own, as everywhere else."""
    return np.logical_or.reduce([(code_points >= low) & (code_points <= high) for low, high in HAN_BLOCKS])


def char_byte_starts(code_points: np.ndarray) -> np.ndarray:
    """The UTF-8 byte offset of each character, where a surrogate (a byte that `surrogateescape` kept) stands for
    one byte."""
    lengths = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    lengths[(code_points >= 0xDC80) & (code_points <= 0xDCFF)] = 1
    return np.cumsum(lengths) - lengths


def token_bytes(tokenizer: PreTrainedTokenizerFast) -> list[bytes]:
    """The UTF-8 bytes each token id stands for; b"" for special and added tokens. Byte-level BPE spells each byte
    as one symbol (GPT-2's bytes_to_unicode map), which this reverses."""
    byte_of = {symbol: byte for byte, symbol in bytes_to_unicode().items()}
    added = set(tokenizer.added_tokens_decoder)
    pieces = []
    for token_id, symbols in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token_id in added:
            pieces.append(b"")
        elif all(s in byte_of for s in symbols):
            pieces.append(bytes(byte_of[s] for s in symbols))
        else:
            raise UserError(
                f"objective.whole_word_mask: token {token_id} ({symbols!r}) is not byte-level BPE; whole-word "
                "masking reads words from the bytes of this project's tokenizer (tokenizer/train_tokenizer.py)"
            )
    return pieces


def word_edges(pieces: list[bytes]) -> np.ndarray:
    """Per token id, from its bytes: (it starts with a word character or inside a character, it ends with a word
    character or is a single space, it starts inside a character). A word character is a letter, digit or `_`
    that is not CJK. Tokens of no bytes (special tokens) have none of the three."""
    edges = np.zeros((len(pieces), 3), dtype=bool)
    for token_id, piece in enumerate(pieces):
        if piece:
            inside_character = piece[0] & 0xC0 == 0x80  # a UTF-8 continuation byte
            text = piece.decode("utf-8", "replace")  # a partial character is U+FFFD: no word character
            # a lone space (where BPE learned no merge of it with the word) opens the word that follows it
            ends_in_word = _continues_word(text[-1]) or text == " "
            edges[token_id] = inside_character or _continues_word(text[0]), ends_in_word, inside_character
    return edges


def word_starts(ids: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Per token: does a word start here? Yes unless it starts with a word character and the token before ends with
    one; never where it starts inside a character."""
    starts_in_word, ends_in_word, inside_character = edges[ids].unbind(-1)
    new_word = ~starts_in_word
    new_word[1:] |= ~ends_in_word[:-1]
    new_word &= ~inside_character
    new_word[0] = True
    return new_word


def gap_before(word_start: torch.Tensor) -> torch.Tensor:
    """Character offsets (seq, 2) with a gap of one before every word start and none inside a word, which is how
    DataCollatorForLanguageModeling tells words apart."""
    end = torch.cumsum(word_start.long() + 1, 0)  # each token one character long, plus one at a gap
    return torch.stack([end - 1, end], dim=1)


def _continues_word(char: str) -> bool:
    """Letters and digits continue a word, except CJK characters, each a word of its own."""
    if not (char.isalnum() or char == "_"):
        return False
    return not unicodedata.name(char, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))
