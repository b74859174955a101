"""N-gram overlap between texts: which texts share a run of ``n`` consecutive tokens with another set.

The rule of decontamination (GPT-3 and most later SFT/eval papers use it): a training example is
contaminated if any run of ``n`` consecutive tokens of it also occurs in an eval example.  Tokens are either

* **words** (the default, for strings): :func:`curation.data.textnorm.words`, i.e. NFKC, lowercased,
  punctuation-split, numbers kept.  Model-independent, so a flag does not change with the
  tokenizer, and punctuation/spacing/case differences do not hide a copy; or
* **model token ids** (sequences of non-negative integers), for a caller that has them.  13 model
  tokens are fewer words (~9-10 English words), so the same ``n`` flags more.

Every n-gram is hashed to 64 bits (token hash, then a polynomial rolling hash over the window,
then a 64-bit finalizer); eval n-gram hashes are kept sorted, pool n-grams are looked up with a
vectorised binary search after a bit-table prefilter.  A false flag needs a 64-bit collision: with 10^8 pool n-grams against
10^6 eval n-grams the chance that *any* occurs is ~5e-6.

Limits a reviewer should know: an eval text shorter than ``n`` tokens can never match (the result
counts them); n-grams shared by many eval examples (instructions, answer-format boilerplate) flag
every pool example that quotes them too; both follow from the rule itself.

Used by decontamination (:mod:`curation.selection.contamination`) and by the default data's
splits, whose dev and eval sets share no such run with the pool.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from curation.data.textnorm import POLY, fmix, hash_strings, words

NGRAM = 13  # words: the rule's usual length (the default of select --ngram and validate's check)


class ContaminationError(ValueError):
    """Decontamination cannot run on its inputs (the message says what to change)."""


class Contamination(NamedTuple):
    """Per pool row: is it contaminated, with which eval example, where (unpacks as a tuple)."""

    flags: np.ndarray  # (n_pool,) bool
    eval_index: np.ndarray  # (n_pool,) int64: eval example of the first shared n-gram, -1 if none
    pool_start: np.ndarray  # (n_pool,) int64: token offset of that n-gram in the pool row, -1 if none
    n_eval_too_short: int  # eval examples with fewer than n tokens (they cannot match)


def _kind(seqs, what: str) -> str:
    if isinstance(seqs, (str, bytes)) or not hasattr(seqs, "__len__"):
        raise ContaminationError(f"{what} must be a list of texts or of token-id sequences, got {type(seqs).__name__}")
    kinds = {"text" if isinstance(s, str) else "ids" for s in seqs}
    if len(kinds) > 1:
        raise ContaminationError(f"{what} mixes texts and token-id sequences; pass one kind")
    return kinds.pop() if kinds else "empty"


def _token_hashes(seqs, kind: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat per-token 64-bit hashes and per-sequence lengths: ``((T,) uint64, (m,) int64)``."""
    if kind == "text":
        toks = [words(s) for s in seqs]
        lengths = np.array([len(t) for t in toks], dtype=np.int64)
        return hash_strings([w for t in toks for w in t]), lengths
    arrays = []
    for i, s in enumerate(seqs):
        a = np.asarray(s)
        if a.ndim != 1 or (a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0)):
            raise ContaminationError(f"{what}[{i}] is not a 1-D sequence of non-negative token ids "
                                     "(pass texts as strings, model tokens as integer sequences)")
        arrays.append(a.astype(np.uint64))
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint64)
    # Mix the ids: a polynomial hash of small consecutive integers would be structured.
    return fmix(flat + np.uint64(0x632BE59BD9B4E019)), lengths


def _ngram_hashes(th: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash of every full n-gram: ``(hashes (G,) uint64, sequence (G,), start offset (G,))``,
    in sequence order then start order."""
    total = len(th)
    starts_of_seq = np.cumsum(lengths) - lengths  # (m,)
    seq = np.repeat(np.arange(len(lengths)), lengths)  # (T,)
    offset = np.arange(total) - np.repeat(starts_of_seq, lengths)  # (T,) position inside its sequence
    valid = offset + n <= np.repeat(lengths, lengths)  # (T,) a full window starts here
    idx = np.flatnonzero(valid)  # (G,)
    padded = np.concatenate([th, np.zeros(n, dtype=np.uint64)])
    h = np.zeros(total, dtype=np.uint64)  # window hash at every position (contiguous slices: fast)
    for j in range(n):
        h *= POLY
        h += padded[j:j + total]
    h = h[idx]
    return fmix(h), seq[idx], offset[idx]


def contaminated(pool, eval_set, n: int = NGRAM, batch: int = 5000) -> Contamination:
    """Flag the ``pool`` rows that share any ``n``-token n-gram with any ``eval_set`` row.

    Both are lists of strings (word tokens) or both lists of integer token-id sequences.  Also
    returns, per flagged row, the eval example of its first shared n-gram (by position in the pool
    row; among eval examples holding that n-gram, the first) and where it starts, for messages.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ContaminationError(f"n must be a positive whole number of tokens, got {n!r}")
    pool = list(pool) if not isinstance(pool, (str, bytes)) else pool
    eval_set = list(eval_set) if not isinstance(eval_set, (str, bytes)) else eval_set
    kp, ke = _kind(pool, "pool"), _kind(eval_set, "eval_set")
    if "empty" not in (kp, ke) and kp != ke:
        raise ContaminationError(f"pool holds {kp} but eval_set holds {ke}; tokenize both the same way")
    kind = ke if kp == "empty" else kp

    n_pool = len(pool)
    flags = np.zeros(n_pool, dtype=bool)
    eval_index = np.full(n_pool, -1, dtype=np.int64)
    pool_start = np.full(n_pool, -1, dtype=np.int64)
    if kind == "empty":
        return Contamination(flags, eval_index, pool_start, 0)

    # Eval n-grams: sorted unique hashes, each with the first eval example holding it.
    eth, elen = _token_hashes(eval_set, kind, "eval_set")
    eh, eseq, _ = _ngram_hashes(eth, elen, n)
    order = np.lexsort((eseq, eh))  # by hash, then eval index
    eh, eseq = eh[order], eseq[order]
    first = np.concatenate([[True], eh[1:] != eh[:-1]]) if len(eh) else np.zeros(0, dtype=bool)
    eh, eseq = eh[first], eseq[first]  # (E,) sorted unique, (E,)
    too_short = int((elen < n).sum())
    if len(eh) == 0:
        return Contamination(flags, eval_index, pool_start, too_short)

    # A bit table over the top hash bits rejects most pool n-grams before the binary search.
    bits = int(np.clip(np.ceil(np.log2(len(eh) * 16)), 16, 28))
    shift = np.uint64(64 - bits)
    table = np.zeros(1 << bits, dtype=bool)
    table[eh >> shift] = True

    for s in range(0, n_pool, batch):
        pth, plen = _token_hashes(pool[s:s + batch], kind, "pool")
        ph, pseq, pstart = _ngram_hashes(pth, plen, n)  # (G,)
        maybe = np.flatnonzero(table[ph >> shift])  # (M,) ~1/16 of G when nothing matches
        pos = np.searchsorted(eh, ph[maybe]).clip(max=len(eh) - 1)
        found = eh[pos] == ph[maybe]
        hit, pos = maybe[found], pos[found]  # (H,) in pool order: sequence, then start
        rows, first_hit = np.unique(pseq[hit], return_index=True)
        h = hit[first_hit]
        flags[s + rows] = True
        eval_index[s + rows] = eseq[pos[first_hit]]
        pool_start[s + rows] = pstart[h]
    return Contamination(flags, eval_index, pool_start, too_short)
