"""Near-duplicate groups: MinHash LSH (datasketch) over word shingles, verified exactly.

:func:`near_dup_groups` gives a run's ``near_dup_group`` column (computed on demand from the run's
sources, cached in the run folder per threshold); :func:`group_texts` does the work on any texts;
``select --dedup near`` keeps the best-ranked member of each group (:func:`dedup_keep_best`).

Two texts are near-duplicates when

1. the Jaccard similarity of their sets of ``shingle``-word shingles is at least ``threshold``
   (computed **exactly** on the shingle sets for every LSH candidate pair; the MinHash estimate
   only proposes pairs), and
2. their sets of numbers agree: the Jaccard similarity of the sets of number words (words made
   of digits only, see :mod:`curation.data.textnorm`) is at least
   ``number_threshold`` (default: the same as ``threshold``; texts without numbers pass).

A group is a connected component of such pairs (so A~B and B~C put A, B and C together even if
A and C are further apart).

Why the number rule: templated math problems ("Natalia sold 48 clips ... half as many in May")
reworded with other numbers are different training examples, but a one-number change in a 60-word
question moves only 5 of ~56 five-word shingles, Jaccard ~0.84: shingles alone would merge them.
Numbers therefore stay in the shingles (no digit normalisation) *and* must match as a set: one
changed number among 2-5 distinct numbers gives a number Jaccard of 1/3-2/3, well under 0.8,
while a long text whose many numbers mostly agree can still be a near-duplicate.

Why 5-word shingles: SFT prompts and answers are short (tens to hundreds of words).  With 5, one
changed word in a 100-word paragraph leaves Jaccard 0.90 (a near-duplicate at 0.8), while shorter
shingles (1-3 words) make unrelated texts look alike through common phrases and 13-word shingles
(document-level dedup) let one edit wipe out most of a short text's shingles.  Texts shorter than
``shingle`` words are one shingle of all their words (they match only an identical word
sequence).  Empty texts (no word) form one group of their own.

LSH bands: the band count ``b`` and rows ``r`` are chosen so that a pair *at* the threshold becomes
a candidate with probability >= 0.95 (datasketch's default optimum misses ~60% of pairs at exactly
0.8); the extra candidates cost one exact Jaccard each.

Group ids: every row gets one, singletons included, numbered 0, 1, ... in the order of each
group's smallest example id, so they are deterministic and independent of the row order.
``np.bincount(groups)[groups] > 1`` marks the rows that have a near-duplicate.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation.data.textnorm import POLY, fmix, hash_strings, normalize, normalized_words
from curation.scores import ORDERS
from curation.selection.pickers import rank_order
from curation.selection.recipe import Recipe

MIN_RECALL = 0.95  # P(candidate | Jaccard == threshold) that lsh_params guarantees
_MASK32 = np.uint64(0xFFFFFFFF)


class NearDupError(ValueError):
    """Near-duplicate detection cannot run on its inputs (the message says what to change)."""


# ----------------------------------------------------------------------------------------------
# Shingles


@dataclass
class ShingleSets:
    """Per text, the sorted unique 32-bit hashes of its word shingles and of its numbers.

    ``shingles[offsets[i]:offsets[i + 1]]`` belongs to text i (likewise ``numbers``/``num_offsets``).
    """

    shingles: np.ndarray  # (S,) uint32
    offsets: np.ndarray  # (n + 1,) int64
    numbers: np.ndarray  # (N,) uint32
    num_offsets: np.ndarray  # (n + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def shingle_set(self, i: int) -> np.ndarray:
        return self.shingles[self.offsets[i]:self.offsets[i + 1]]

    def number_set(self, i: int) -> np.ndarray:
        return self.numbers[self.num_offsets[i]:self.num_offsets[i + 1]]


def _per_doc_unique(doc: np.ndarray, h32: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values per document: ``(values (U,) uint32, offsets (n_docs + 1,))``."""
    key = np.sort((doc.astype(np.uint64) << np.uint64(32)) | h32.astype(np.uint64))  # (S,)
    key = key[np.concatenate([key[:1] == key[:1], key[1:] != key[:-1]])]  # (U,); np.unique: far slower
    values = (key & _MASK32).astype(np.uint32)
    offsets = np.searchsorted(key >> np.uint64(32), np.arange(n_docs + 1, dtype=np.uint64)).astype(np.int64)
    return values, offsets


def _shingle_batch(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shingle and number hash sets of a batch of texts (see :class:`ShingleSets`)."""
    toks: list[str] = []
    nums: list[str] = []
    tok_len = np.zeros(len(texts), dtype=np.int64)
    num_len = np.zeros(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        w = normalized_words(normalize(t))
        d = [x for x in w if x.isdigit()]
        toks += w
        nums += d
        tok_len[i], num_len[i] = len(w), len(d)
    n_docs = len(texts)
    th = hash_strings(toks)  # (T,) uint64
    doc = np.repeat(np.arange(n_docs), tok_len)  # (T,)
    end = np.repeat(np.cumsum(tok_len), tok_len)  # (T,) end of each token's document
    pos = np.arange(len(th))
    # Window hash at every position over up to n words (words past the document's end count as 0).
    padded = np.concatenate([th, np.zeros(n, dtype=np.uint64)])
    win = np.zeros(len(th), dtype=np.uint64)
    for j in range(n):
        win = win * POLY + np.where(pos + j < end, padded[j:j + len(th)], np.uint64(0))
    # Valid starts: every full window; a text shorter than n words has one window, at its start.
    start = np.repeat(np.cumsum(tok_len) - tok_len, tok_len)
    valid = (pos + n <= end) | ((pos == start) & (np.repeat(tok_len, tok_len) < n))
    h32 = (fmix(win[valid]) >> np.uint64(32)).astype(np.uint32)
    sh, sh_off = _per_doc_unique(doc[valid], h32, n_docs)
    nh = (hash_strings(nums) >> np.uint64(32)).astype(np.uint32)
    nu, nu_off = _per_doc_unique(np.repeat(np.arange(n_docs), num_len), nh, n_docs)
    return sh, sh_off, nu, nu_off


def shingle_sets(texts, shingle: int = 5, batch: int = 2000) -> ShingleSets:
    """Word-shingle and number hash sets of every text (processed in batches to bound memory)."""
    texts = _texts(texts)
    shingle = _positive_int("shingle", shingle)
    parts = [_shingle_batch(texts[s:s + batch], shingle) for s in range(0, len(texts), batch)]
    if not parts:
        z = np.zeros(0, dtype=np.uint32)
        return ShingleSets(z, np.zeros(1, dtype=np.int64), z, np.zeros(1, dtype=np.int64))

    def join(vals, offs):
        out_off, base = [np.zeros(1, dtype=np.int64)], 0
        for o in offs:
            out_off.append(o[1:] + base)
            base += int(o[-1])
        return np.concatenate(vals), np.concatenate(out_off)

    sh, sh_off = join([p[0] for p in parts], [p[1] for p in parts])
    nu, nu_off = join([p[2] for p in parts], [p[3] for p in parts])
    return ShingleSets(sh, sh_off, nu, nu_off)


# ----------------------------------------------------------------------------------------------
# MinHash and LSH


def lsh_params(threshold: float, num_perm: int, recall: float = MIN_RECALL) -> tuple[int, int]:
    """``(bands, rows)`` with bands * rows <= num_perm: the most selective banding (largest
    ``rows``) for which a pair with Jaccard == threshold is a candidate with P >= ``recall``."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold ** r) ** b >= recall:
            best = (b, r)
    return best


def minhash_values(sets: ShingleSets, rows: np.ndarray, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """MinHash signatures ``(len(rows), num_perm) uint32`` of the (non-empty) shingle sets ``rows``.

    Bit-for-bit what ``datasketch.MinHash(num_perm, seed, scheme="affine32")`` computes from
    ``update_batch(shingle hashes)`` with an identity hash function (a test checks it), but for
    all texts at once: one vectorised pass per permutation instead of a Python loop per text.
    """
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations  # (num_perm,) uint32 each
    starts = sets.offsets[rows]
    stops = sets.offsets[rows + 1]
    if (stops <= starts).any():
        raise NearDupError("minhash_values: an empty shingle set has no MinHash; skip empty texts")
    out = np.empty((len(rows), num_perm), dtype=np.uint32)
    chunk_rows = 4096
    for s in range(0, len(rows), chunk_rows):
        st, sp = starts[s:s + chunk_rows], stops[s:s + chunk_rows]
        idx = np.concatenate([np.arange(x, y) for x, y in zip(st.tolist(), sp.tolist())])
        hv = fmix(sets.shingles[idx])  # (S,) uint32
        local = np.concatenate([[0], np.cumsum(sp - st)[:-1]])  # (c,) segment starts
        for p in range(num_perm):
            out[s:s + len(st), p] = np.minimum.reduceat(hv * a[p] + b[p], local)  # uint32 wraps: mod 2^32
    return out


def _sorted_jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique arrays (1.0 when both are empty)."""
    if len(x) == 0 and len(y) == 0:
        return 1.0
    inter = np.intersect1d(x, y, assume_unique=True).size
    return inter / (len(x) + len(y) - inter)


# ----------------------------------------------------------------------------------------------
# Groups


@dataclass
class NearDupStats:
    """What a run did (for logs and the dashboard)."""

    n_texts: int
    n_exact_duplicate_rows: int  # rows whose shingle set equals an earlier row's
    n_candidate_pairs: int  # LSH candidate pairs verified exactly
    n_merged_pairs: int  # pairs that passed both Jaccard rules and joined two groups
    n_rejected_by_numbers: int  # pairs similar enough in words but whose numbers differ
    bands: int
    rows: int
    seconds: dict


def group_texts(texts, ids, threshold: float = Recipe.near_dup_threshold, num_perm: int = 128, shingle: int = 5,
                number_threshold: float | None = None, return_stats: bool = False):
    """Near-duplicate group id per text: ``(n,) int64``, see the module docstring.

    ``texts`` are whole conversations as one string each (join the turns; leave out a system
    prompt that every example shares, or it dominates the shingles).  ``number_threshold=0``
    turns the number rule off.  With ``return_stats`` also returns a :class:`NearDupStats`.
    """
    from datasketch import MinHash, MinHashLSH

    texts = _texts(texts)
    n = len(texts)
    ids = _ids(ids, n)
    threshold = _fraction("threshold", threshold)
    number_threshold = threshold if number_threshold is None else _fraction("number_threshold", number_threshold, zero_ok=True)
    num_perm = _positive_int("num_perm", num_perm)
    timing = {}
    t0 = time.perf_counter()
    by_id = np.argsort(ids, kind="stable")  # process in id order: deterministic, row-order free
    sets = shingle_sets([texts[i] for i in by_id], shingle)
    timing["shingles"] = time.perf_counter() - t0

    parent = np.arange(n)  # union-find over positions in id order

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    # Identical shingle sets (exact duplicates up to case/spacing/punctuation) are joined directly,
    # and only the first of each enters the LSH.
    sizes = np.diff(sets.offsets)
    first_of: dict[bytes, int] = {}
    reps = []
    n_exact = 0
    for i in range(n):
        s_i = sets.shingle_set(i)
        key = hashlib.blake2b(s_i.tobytes(), digest_size=16).digest()
        j = first_of.get(key)
        if j is not None and np.array_equal(s_i, sets.shingle_set(j)):
            parent[find(i)] = find(j)
            n_exact += 1
            continue
        first_of.setdefault(key, i)
        if sizes[i] > 0:
            reps.append(i)
    reps = np.asarray(reps, dtype=np.int64)
    t1 = time.perf_counter()
    sig = minhash_values(sets, reps, num_perm) if len(reps) and threshold < 1 else np.zeros((0, num_perm), np.uint32)
    timing["minhash"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    n_cand = n_merged = n_numbers = 0
    # At threshold 1 only identical shingle sets are near-duplicates, and they are joined above.
    bands, rows = lsh_params(threshold, num_perm) if threshold < 1 else (0, 0)
    lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows)) if threshold < 1 else None
    template = MinHash(num_perm=num_perm, seed=1)
    for r, i in enumerate(reps.tolist() if lsh is not None else []):
        mh = MinHash(seed=1, hashvalues=sig[r], permutations=template.permutations, scheme=template.scheme)
        for j in lsh.query(mh):
            if find(i) == find(j):
                continue
            n_cand += 1
            a, b = sets.shingle_set(i), sets.shingle_set(j)
            if min(len(a), len(b)) < threshold * max(len(a), len(b)):
                continue  # Jaccard <= min/max size
            if _sorted_jaccard(a, b) < threshold:
                continue
            if number_threshold > 0 and _sorted_jaccard(sets.number_set(i), sets.number_set(j)) < number_threshold:
                n_numbers += 1
                continue
            parent[find(i)] = find(j)
            n_merged += 1
        lsh.insert(i, mh, check_duplication=False)
    timing["lsh"] = time.perf_counter() - t2

    roots = np.array([find(i) for i in range(n)])  # (n,) in id order
    # Number groups by their smallest id: in id order, a root's first appearance is its smallest id.
    _, first_pos, inverse = np.unique(roots, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first_pos))  # group rank by first appearance
    groups = np.empty(n, dtype=np.int64)
    groups[by_id] = order[inverse]
    if not return_stats:
        return groups
    stats = NearDupStats(n, n_exact, n_cand, n_merged, n_numbers, bands, rows,
                         {k: round(v, 3) for k, v in timing.items()})
    return groups, stats


def dedup_keep_best(groups, scores, ids, order: str = "high") -> np.ndarray:
    """Mask ``(n,) bool`` keeping one row per group: the best score (``order``; NaN scores lose
    to any known score), ties by the smallest example id.  Singleton groups are always kept."""
    groups = np.asarray(groups)
    n = len(groups)
    if groups.ndim != 1:
        raise NearDupError(f"groups must be 1-D (one group id per row), got shape {groups.shape}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise NearDupError(f"scores must have one value per row ({n}), got shape {scores.shape}")

    ids = _ids(ids, n)
    if order not in ORDERS:
        raise NearDupError(f"order {order!r}: expected 'high' (largest score is best) or 'low'")
    ranked = rank_order(scores, ids, order)  # (n,) best first; NaN last
    _, first = np.unique(groups[ranked], return_index=True)
    keep = np.zeros(n, dtype=bool)
    keep[ranked[first]] = True
    return keep


# ----------------------------------------------------------------------------------------------
# A run's groups, cached in its folder


def cache_path(run_dir, threshold: float) -> Path:
    """Where a run's groups at ``threshold`` are kept: ``RUN/near_dups-t{threshold}.parquet``."""
    return Path(run_dir) / f"near_dups-t{_fraction('threshold', threshold):g}.parquet"


def near_dup_groups(run, threshold: float = Recipe.near_dup_threshold, texts: dict[str, str] | None = None,
                    progress=None):
    """The run's near-duplicate groups: a DataFrame ``example_id, near_dup_group, group_size``,
    one row per example of its score table (``run``: a :class:`curation.runs.folder.Run` or its folder).

    Computed from the run's sources on first use (or from ``texts``, ``{example_id: text}``, when
    the caller already read them) and cached atomically in the run folder, keyed by the threshold;
    a cache whose ids differ from the run's (the run grew) is recomputed."""
    import pandas as pd

    from curation.atomic import write_parquet
    from curation.runs.folder import Run

    run = run if isinstance(run, Run) else Run(run)
    path = cache_path(run.path, threshold)
    ids = run.scores()["example_id"].astype(str)
    if path.is_file():
        cached = pd.read_parquet(path)
        if len(cached) == len(ids) and set(cached["example_id"]) == set(ids):
            return cached
    t0 = time.perf_counter()
    texts = run.texts() if texts is None else texts
    missing = [i for i in ids if i not in texts]
    if missing:
        raise NearDupError(f"{len(missing)} example(s) of the run (e.g. {missing[0]}) are no longer in its sources; "
                           "re-run the scoring on the current files")
    groups, stats = group_texts([texts[i] for i in ids], ids.to_numpy(), threshold, return_stats=True)
    out = pd.DataFrame({"example_id": ids.to_numpy(), "near_dup_group": groups,
                        "group_size": np.bincount(groups)[groups]})
    write_parquet(path, out)
    if progress is not None:
        progress(phase="near-duplicates", seconds=time.perf_counter() - t0, stats=stats)
    return out


def group_listing(groups, min_size: int = 2):
    """The groups with at least ``min_size`` members, largest first: ``near_dup_group, size,
    example_ids`` (for the dashboard)."""
    import pandas as pd

    g = groups[groups["group_size"] >= min_size]
    if g.empty:
        return pd.DataFrame(columns=["near_dup_group", "size", "example_ids"])
    out = (g.sort_values("example_id").groupby("near_dup_group")["example_id"]
           .agg(list).reset_index(name="example_ids"))
    out["size"] = out["example_ids"].map(len)
    return out.sort_values(["size", "near_dup_group"], ascending=[False, True])[
        ["near_dup_group", "size", "example_ids"]].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Validation


def _texts(texts) -> list[str]:
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise NearDupError(f"texts must be strings; row {bad[0]} is {type(texts[bad[0]]).__name__} "
                           "(render each conversation to one string first)")
    return texts


def _ids(ids, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise NearDupError(f"ids must have one entry per text ({n}), got shape {ids.shape}")
    if len(np.unique(ids)) != n:
        raise NearDupError("ids must be unique: group ids are numbered by the smallest example id")
    return ids


def _fraction(name: str, v, zero_ok: bool = False) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise NearDupError(f"{name} must be a number in (0, 1], got {v!r}") from None
    if not (0 <= v <= 1) or (v == 0 and not zero_ok):
        raise NearDupError(f"{name} must be in {'[0' if zero_ok else '(0'}, 1], got {v!r}")
    return v


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise NearDupError(f"{name} must be a positive whole number, got {v!r}")
    return int(v)
