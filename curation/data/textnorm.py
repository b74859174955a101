"""Word tokens and stable hashes for text matching (near-duplicates, decontamination).

``words(text)``: NFKC-normalised, lowercased runs of letters/digits/underscore (``\\w+``);
punctuation and whitespace only separate words, so formatting noise (markdown, quotes, spacing,
line breaks) does not break a match.  Numbers stay words: ``"48/2 = 24"`` -> ``48 2 24``, which is
what keeps problems that differ only in their numbers apart.  Each CJK ideograph or kana is a
word of its own, because those scripts do not separate words by spaces (otherwise a whole
Chinese sentence would be one token and never match anything).

Hashes are seeded constants (never Python's per-process salted ``hash``), so groups and flags are
the same on every run and machine.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
_WORD_CJK_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_WORD_RE = re.compile(r"\w+")  # the same tokens for text without CJK, and faster
POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling window hashes


def conversation_text(messages: list[dict]) -> str:
    """The whole conversation as one string (every turn's content, one per line), what
    near-duplicate detection and decontamination compare."""
    return "\n".join(str(m.get("content", "")) for m in messages)


def normalize(text: str) -> str:
    """NFKC + lowercase: full-width digits, ligatures and case differences do not count."""
    return unicodedata.normalize("NFKC", text).lower()


def words(text: str) -> list[str]:
    """The word tokens of ``text`` (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    return normalized_words(normalize(text))


def normalized_words(norm: str) -> list[str]:
    """:func:`words` of an already :func:`normalize`-d text."""
    return (_WORD_CJK_RE if _CJK_RE.search(norm) else _WORD_RE).findall(norm)


def hash_strings(tokens) -> np.ndarray:
    """A stable 64-bit hash of each string: ``(len(tokens),) uint64`` (pandas' SipHash with a fixed
    key; each distinct string hashed once)."""
    import pandas as pd

    arr = np.asarray(tokens, dtype=object)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(arr)


# MurmurHash3's finalizer constants (shift, multiplier, shift, multiplier, shift) per width.
_FMIX = {np.dtype(np.uint64): (33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33),
         np.dtype(np.uint32): (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)}


def fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer (an avalanching bijection), element-wise on uint64 or uint32."""
    t = h.dtype.type
    s1, m1, s2, m2, s3 = (t(c) for c in _FMIX[h.dtype])
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)
