"""Turn a score table into a curated selection: a recipe, pure seeded functions, a summary.

``select(table, recipe)`` is a pure function of the table's *contents* and the recipe: the same
rows (in any order) and the same recipe give the same ids.  The steps, in order:

1. **pool**: every row of the run's score table.  ``P%`` budgets and the ``natural`` mix refer to it.
2. **eligible**: scored rows whose score is known and that pass every ``min``/``max`` threshold
   (thresholds filter *before* ranking, so ``--max ifd=1`` never costs budget).
3. **allocation**: the budget (N examples, P% of the pool, or N tokens of prompt + response) is
   split over domains by the mix with the largest-remainder method, so the parts are exact and
   sum to the budget.  A domain with fewer eligible examples than its part gets them all and the
   summary says so; only with ``fill`` is the rest spread over the other domains (by their shares).
4. **picking**, per domain: top-k / bottom-k by the score (ties broken by example id), a seeded
   random sample (``random``), or S2L's balanced sampling over loss-trajectory clusters (``s2l``).
   Token budgets take the longest prefix of the domain's ranking that fits, so the top-k law holds
   for them too: every selected example scores at least as well as every eligible one left out.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from curation.config import option
from curation.formulas import run_columns, trajectory_columns

METHODS = ("davir", "rho", "ifd", "ppl", "loss", "longest", "s2l", "random", "davir_heldout", "rho_heldout")
ORDERS = ("high", "low")
AGGREGATES = ("mean", "median")
DEDUPS = ("near",)
LEARN_RUN = "a learnability run (`python -m curation learn ...`)"
ANY_RUN = "any score run (`python -m curation score ...` or `learn`)"


class SelectionError(ValueError):
    """A recipe cannot be applied to a run (the message says what to change)."""


@dataclass(frozen=True)
class ScoreInfo:
    """What a score means, where it lives in the score table, and which way is better."""

    name: str
    column: str | None  # column of a learnability run's scores.parquet
    fallback: str | None  # derived from this core column when ``column`` is absent (score runs)
    default_order: str | None  # "high" | "low"; None: the method does not rank
    produced_by: str  # which run kind writes the column
    explanation: str  # one line for the dashboard, including known biases


SCORES: dict[str, ScoreInfo] = {
    "davir": ScoreInfo(
        "davir", "davir", None, "high", LEARN_RUN,
        "(L_base - L_ref) / L_base: the share of the base model's loss that training on the pool "
        "removes (LoBaSS/DavIR); higher = more learnable. Relative, so less tied to answer length "
        "than rho, but noisy when L_base is near 0.",
    ),
    "rho": ScoreInfo(
        "rho", "rho", None, "high", LEARN_RUN,
        "L_base - L_ref: the absolute loss drop (RHO-LOSS-like baseline); higher = more learnable. "
        "Known bias: tracks answer length (reported to favour long answers; a 200-row SmolLM2 "
        "GSM8K+Alpaca run showed the reverse) and high base loss: check it against length.",
    ),
    "ifd": ScoreInfo(
        "ifd", "ifd", None, "high", LEARN_RUN,
        "Cherry LLM's Instruction-Following Difficulty: loss of the answer given the prompt / loss "
        "of the answer alone, under the base model; higher = the prompt helps less (Cherry keeps "
        "the highest). ifd > 1 means the prompt does not help at all, often a mismatched pair: "
        "filter with --max ifd=1. Known bias: rises with answer length, strongly on chat data.",
    ),
    "ppl": ScoreInfo(
        "ppl", "ppl_base", "loss", "low", ANY_RUN,
        "exp(L_base): perplexity of the answers under the base model; low = what the model already "
        "predicts well (perplexity filtering). Known bias: mean per-token loss usually falls as "
        "answers get longer and more formulaic, so low ppl leans to long, templated answers.",
    ),
    "loss": ScoreInfo(
        "loss", "loss_base", "loss", "high", ANY_RUN,
        "L_base: mean loss per assistant token under the base model (the score run's model); high "
        "= hardest for the model (the 'high loss' baseline: the same ranking as ppl, reversed). "
        "Known biases: mean per-token loss falls as answers get longer, so high loss leans to short "
        "answers; it also picks noisy or unlearnable examples.",
    ),
    "longest": ScoreInfo(
        "longest", "n_response_tokens", None, "high", ANY_RUN,
        "n_response_tokens: the longest answers first (a strong, cheap baseline for chat SFT that "
        "needs no model score); low = the shortest. Every loss-based score should be checked against it.",
    ),
    "s2l": ScoreInfo(
        "s2l", "s2l_cluster", None, None, LEARN_RUN,
        "SmallToLarge: K-means clusters of loss trajectories over training checkpoints; balanced "
        "sampling across clusters, smallest first, so rare learning patterns are kept.",
    ),
    "davir_heldout": ScoreInfo(
        "davir_heldout", "davir_heldout", None, "high", "a learnability run with --heldout-folds N",
        "davir with L_ref from a model that never trained on the example (k-fold): memorisation "
        "cannot inflate it; higher = more learnable (generalisable).",
    ),
    "rho_heldout": ScoreInfo(
        "rho_heldout", "rho_heldout", None, "high", "a learnability run with --heldout-folds N",
        "rho with a held-out L_ref (k-fold). Known bias: like rho, favours long answers.",
    ),
    "random": ScoreInfo(
        "random", None, None, None, ANY_RUN,
        "Seeded uniform sample at the same budget and mix: the baseline every method must beat.",
    ),
}


def available_methods(columns) -> dict[str, str | None]:
    """For each method: None if a score table with ``columns`` supports it, else the reason (for
    the dashboard to grey it out with an explanation)."""
    cols = set(columns)
    out = {}
    for name, info in SCORES.items():
        needed = [c for c in (info.column, info.fallback) if c]
        if not needed or any(c in cols for c in needed):
            out[name] = None
        else:
            out[name] = f"needs the column {info.column!r}, written by {info.produced_by}"
    return out


# ----------------------------------------------------------------------------------------------
# Recipe


@dataclass(frozen=True)
class Budget:
    """How much to select: ``kind`` count (N examples), percent (P% of the pool) or tokens."""

    kind: str  # "count" | "percent" | "tokens"
    value: Fraction  # N, P or tokens (whole numbers except percentages)

    @classmethod
    def parse(cls, text: str | int) -> "Budget":
        """Parse ``200``, ``10%``, ``2.5%`` or ``25000tok``."""
        s = str(text).strip().lower().replace("_", "")
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|tok|tokens)?", s)
        if not m:
            raise SelectionError(
                f"budget {text!r}: expected N (examples), P% (of the pool) or Ntok (prompt + "
                "response tokens), e.g. 200, 10% or 25000tok"
            )
        value, unit = Fraction(m.group(1)), m.group(2)
        kind = {"%": "percent", "tok": "tokens", "tokens": "tokens", None: "count"}[unit]
        if kind != "percent" and value.denominator != 1:
            raise SelectionError(f"budget {text!r}: a number of {'tokens' if kind == 'tokens' else 'examples'} must be whole")
        if value <= 0 or (kind == "percent" and value > 100):
            raise SelectionError(f"budget {text!r}: must be positive{' and at most 100%' if kind == 'percent' else ''}")
        return cls(kind, value)

    def __str__(self) -> str:
        v = self.value
        num = str(v.numerator) if v.denominator == 1 else str(float(v))
        return num + {"count": "", "percent": "%", "tokens": "tok"}[self.kind]

    def units(self, n_pool: int) -> int:
        """The budget in examples (count, percent: rounded half up) or tokens."""
        if self.kind == "percent":
            return math.floor(self.value * n_pool / 100 + Fraction(1, 2))
        return int(self.value)


@dataclass
class Recipe:
    """A complete, re-appliable selection recipe (the CLI, the dashboard and YAML files build this)."""

    method: str = option(help=f"the score to rank by, or a sampler: {' | '.join(METHODS)}")
    budget: str = option("10%", "N examples, P% of the pool, or Ntok (prompt + response tokens)")
    order: str | None = option(None, "keep the highest or lowest scores (default: the method's own)",
                               choices=ORDERS)
    mix: dict[str, float] | str = option("natural", "DOMAIN=SHARE,... summing to 1 (e.g. chat=0.5,math=0.5), "
                                                    "or natural (the pool's proportions)")
    min: dict[str, float] = option(help="keep rows with SCORE >= VALUE (a score or any numeric column); repeatable",
                                   default_factory=dict, metavar="SCORE=VALUE")
    max: dict[str, float] = option(help="keep rows with SCORE <= VALUE, e.g. --max ifd=1; repeatable",
                                   default_factory=dict, metavar="SCORE=VALUE")
    fill: bool = option(False, "spread a domain's shortfall over the other domains of the mix")
    seed: int = option(0, "seed of random and s2l sampling (and of s2l re-clustering)")
    s2l_clusters: int | None = option(None, "s2l: re-cluster each domain's trajectories into N clusters "
                                            "(default: the run's s2l_cluster column)")
    aggregate: str | None = option(None, "rank by the score averaged over the reference runs of a learn run with "
                                         "--stability-runs N (an ensemble): mean or median", choices=AGGREGATES)
    stratify: str | None = option(None, "length:Q: pick within Q response-length quantile strata of each domain's "
                                        "eligible rows, the budget split by stratum size, so the selection's length "
                                        "distribution is the eligible pool's", metavar="length:Q")
    temperature: float | None = option(None, "soft selection: a seeded sample without replacement with probability "
                                             "proportional to exp(z / T), z the score standardised within the domain "
                                             "(small T: top-k; large T: random)", metavar="T")
    diversity: str | None = option(None, "kcenter: greedy k-center on the run's embeddings inside each domain, seeded by "
                                         "the top-scored example; clusters:N: k-means the embeddings into N clusters per "
                                         "domain, the budget spread smallest cluster first, top-scored inside each",
                                   metavar="kcenter|clusters:N")
    dedup: str | None = option(None, "near: keep only the best-ranked eligible member of each near-duplicate group "
                                     "(MinHash LSH over word shingles of the whole conversation; curation.neardup)",
                               choices=DEDUPS)
    near_dup_threshold: float = option(0.8, "--dedup near: word-shingle Jaccard similarity from which two examples are "
                                            "near-duplicates (their sets of numbers must agree as much)")
    decontaminate: list[str] = option(help="eval files (any format the loader reads): pool examples sharing an n-gram "
                                           "with one of their examples are not eligible", default_factory=list,
                                      metavar="PATH")
    ngram: int = option(13, "--decontaminate: consecutive words of a shared n-gram that flags an example")
    keep_contaminated: bool = option(False, "--decontaminate: report the flagged examples but keep them eligible")
    budget_spec: Budget = field(init=False, repr=False, compare=False)  # the budget, parsed once
    strata: int | None = field(init=False, repr=False, compare=False, default=None)  # Q of ``stratify``
    diversity_clusters: int | None = field(init=False, repr=False, compare=False, default=None)  # N of clusters:N

    def __post_init__(self):
        if self.method not in METHODS:
            raise SelectionError(f"unknown method/score {self.method!r}; expected one of {', '.join(METHODS)}")
        self.budget_spec = Budget.parse(self.budget)
        self.budget = str(self.budget_spec)
        info = SCORES[self.method]
        if info.default_order is None:
            if self.order is not None:
                raise SelectionError(f"--order does not apply to {self.method} (it samples, it does not rank)")
        else:
            self.order = self.order or info.default_order
            if self.order not in ORDERS:
                raise SelectionError(f"order {self.order!r}: expected high or low")
        self.mix = _parse_mix(self.mix)
        self.min = _parse_thresholds(self.min, "min")
        self.max = _parse_thresholds(self.max, "max")
        for k in set(self.min) & set(self.max):
            if self.min[k] > self.max[k]:
                raise SelectionError(f"thresholds on {k}: min {self.min[k]} is above max {self.max[k]}, nothing can pass")
        if not isinstance(self.fill, bool):
            raise SelectionError(f"fill must be true or false, got {self.fill!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SelectionError(f"seed must be a non-negative whole number, got {self.seed!r}")
        if self.s2l_clusters is not None:
            if self.method != "s2l":
                raise SelectionError("s2l_clusters applies to --method s2l only")
            if isinstance(self.s2l_clusters, bool) or not isinstance(self.s2l_clusters, int) or self.s2l_clusters < 1:
                raise SelectionError(f"s2l_clusters must be a positive whole number, got {self.s2l_clusters!r}")
        if self.aggregate is not None:
            if self.aggregate not in AGGREGATES:
                raise SelectionError(f"aggregate {self.aggregate!r}: expected mean or median")
            if SCORES[self.method].default_order is None:
                raise SelectionError(f"--aggregate applies to a ranking score, not to {self.method}")
        if self.method == "s2l" and self.budget_spec.kind == "tokens":
            raise SelectionError("s2l balances example counts across clusters; give a budget in examples (N or P%), not tokens")
        ranks = SCORES[self.method].default_order is not None
        self.strata = parse_stratify(self.stratify)
        if self.strata is not None:
            self.stratify = f"length:{self.strata}"
            if not ranks:
                raise SelectionError(f"--stratify applies to a ranking method, not to {self.method} "
                                     "(a random sample already follows the pool's lengths)")
        if self.temperature is not None:
            if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                    or not math.isfinite(self.temperature) or self.temperature <= 0:
                raise SelectionError(f"temperature must be a positive number (leave it out for plain top-k), "
                                     f"got {self.temperature!r}")
            if not ranks:
                raise SelectionError(f"--temperature applies to a ranking method, not to {self.method}")
            self.temperature = float(self.temperature)
        if self.diversity is not None:
            self.diversity, self.diversity_clusters = parse_diversity(self.diversity)
            if not ranks:
                raise SelectionError(f"--diversity applies to a ranking method (it keeps the best-scored), not to {self.method}")
            if self.strata is not None or self.temperature is not None:
                raise SelectionError("--diversity picks by itself; leave out --stratify and --temperature")
            if self.budget_spec.kind == "tokens":
                raise SelectionError("--diversity picks a number of examples; give a budget in examples (N or P%), not tokens")
        if self.dedup is not None and self.dedup not in DEDUPS:
            raise SelectionError(f"dedup {self.dedup!r}: expected near (or leave it out)")
        if isinstance(self.near_dup_threshold, bool) or not isinstance(self.near_dup_threshold, (int, float)) \
                or not 0 < self.near_dup_threshold <= 1:
            raise SelectionError(f"near_dup_threshold must be a number in (0, 1], e.g. 0.8; got {self.near_dup_threshold!r}")
        self.near_dup_threshold = float(self.near_dup_threshold)
        if isinstance(self.decontaminate, str):
            self.decontaminate = [self.decontaminate]
        if not isinstance(self.decontaminate, (list, tuple)) or not all(isinstance(p, str) and p for p in self.decontaminate):
            raise SelectionError(f"decontaminate: expected a list of eval file paths, got {self.decontaminate!r}")
        self.decontaminate = list(self.decontaminate)
        if isinstance(self.ngram, bool) or not isinstance(self.ngram, int) or self.ngram < 1:
            raise SelectionError(f"ngram must be a positive whole number of words, e.g. 13; got {self.ngram!r}")
        if not isinstance(self.keep_contaminated, bool):
            raise SelectionError(f"keep_contaminated must be true or false, got {self.keep_contaminated!r}")
        if self.keep_contaminated and not self.decontaminate:
            raise SelectionError("--keep-contaminated applies with --decontaminate PATH ...")

    def to_dict(self) -> dict:
        """The normalised recipe as plain data (what recipe.yaml holds)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """Build a recipe from plain data (a parsed recipe.yaml), naming unknown keys."""
        if not isinstance(d, dict):
            raise SelectionError(f"a recipe must be a mapping of fields, got {type(d).__name__}")
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SelectionError(f"unknown recipe field(s) {unknown}; known fields: {sorted(known)}")
        if "method" not in d:
            raise SelectionError("a recipe needs a method")
        return cls(**d)


def parse_stratify(text) -> int | None:
    """``length:Q`` -> Q (a whole number >= 2); None -> None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*length\s*:\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 2:
        raise SelectionError(f"stratify {text!r}: expected length:Q with Q >= 2 response-length strata, e.g. length:5")
    return int(m.group(1))


def parse_diversity(text) -> tuple[str, int | None]:
    """``kcenter`` -> ("kcenter", None); ``clusters:N`` -> ("clusters:N", N) with N >= 2."""
    t = str(text).strip().replace(" ", "")
    if t == "kcenter":
        return t, None
    m = re.fullmatch(r"clusters:(\d+)", t)
    if not m or int(m.group(1)) < 2:
        raise SelectionError(f"diversity {text!r}: expected kcenter or clusters:N with N >= 2, e.g. clusters:20")
    return f"clusters:{int(m.group(1))}", int(m.group(1))


def _parse_mix(mix) -> dict[str, float] | str:
    if mix is None or (isinstance(mix, str) and mix.strip() == "natural"):
        return "natural"
    if isinstance(mix, str):
        out = {}
        for pair in filter(None, (p.strip() for p in mix.split(","))):
            if "=" not in pair:
                raise SelectionError(f"mix {mix!r}: expected DOMAIN=SHARE pairs (e.g. chat=0.5,math=0.5) or natural")
            k, v = pair.split("=", 1)
            out[k.strip()] = v.strip()
        mix = out
    if not isinstance(mix, dict) or not mix:
        raise SelectionError(f"mix {mix!r}: expected DOMAIN=SHARE pairs (e.g. chat=0.5,math=0.5) or natural")
    shares = {}
    for k, v in mix.items():
        try:
            shares[str(k)] = float(v)
        except (TypeError, ValueError):
            raise SelectionError(f"impossible mix: share of {k!r} is {v!r}, not a number") from None
        if not math.isfinite(shares[k]) or shares[k] < 0:
            raise SelectionError(f"impossible mix: share of {k!r} is {v!r}; shares must be between 0 and 1")
    total = sum(shares.values())
    if abs(total - 1) > 1e-6:
        raise SelectionError(f"impossible mix: shares sum to {total:g}; they must sum to 1 (e.g. chat=0.5,math=0.5)")
    return dict(sorted(shares.items()))


def _parse_thresholds(d, which: str) -> dict[str, float]:
    if d is None:
        return {}
    if isinstance(d, (list, tuple)):  # ["ifd=1", ...] as given on the command line
        pairs = {}
        for item in d:
            if "=" not in str(item):
                raise SelectionError(f"--{which} {item!r}: expected SCORE=VALUE, e.g. ifd=1")
            k, v = str(item).split("=", 1)
            pairs[k.strip()] = v.strip()
        d = pairs
    if not isinstance(d, dict):
        raise SelectionError(f"{which}: expected SCORE=VALUE thresholds, got {d!r}")
    out = {}
    for k, v in d.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise SelectionError(f"--{which} {k}={v!r}: the value is not a number") from None
        if math.isnan(out[str(k)]):
            raise SelectionError(f"--{which} {k}: NaN is not a threshold")
    return dict(sorted(out.items()))


def read_recipe(path: str | Path) -> Recipe:
    """Read a recipe YAML file (as written to ``SEL_DIR/recipe.yaml``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SelectionError(f"{p}: no such recipe file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SelectionError(f"{p}: not valid YAML ({e})") from None
    try:
        return Recipe.from_dict(data)
    except SelectionError as e:
        raise SelectionError(f"{p}: {e}") from None


def recipe_yaml(recipe: Recipe) -> str:
    """The recipe as YAML text (re-readable with :func:`read_recipe`)."""
    import yaml

    head = "# selection recipe: python -m curation select RUN_DIR --recipe recipe.yaml --out SEL_DIR\n"
    return head + yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True)


# ----------------------------------------------------------------------------------------------
# Allocation


def largest_remainder(total: int, shares: dict[str, Fraction]) -> dict[str, int]:
    """Split ``total`` units in proportion to ``shares`` so that the parts sum to ``total`` exactly.

    Hamilton's method: each part is the floor or the ceiling of its exact quota; the units left
    after flooring go to the largest fractional remainders (ties: larger share, then name).
    Shares are normalised by their sum; all-zero shares get nothing.
    """
    s = sum(shares.values(), Fraction(0))
    if s == 0 or total <= 0:
        return {d: 0 for d in shares}
    quotas = {d: Fraction(total) * Fraction(v) / s for d, v in shares.items()}
    parts = {d: math.floor(q) for d, q in quotas.items()}
    left = total - sum(parts.values())
    for d in sorted(shares, key=lambda d: (-(quotas[d] - parts[d]), -Fraction(shares[d]), d))[:left]:
        parts[d] += 1
    return parts


def allocate(total: int, shares: dict[str, Fraction], capacity: dict[str, int], fill: bool):
    """Allocate ``total`` units over domains by share, capped by each domain's capacity.

    Returns ``(allocation, shortfall, unfilled)``: ``shortfall[d]`` is how much of its share domain
    ``d`` could not take; with ``fill`` that amount is spread over the domains with room left (by
    their shares, repeatedly, largest remainder) and ``unfilled`` is what nobody could take.
    """
    alloc = largest_remainder(total, shares)
    shortfall = {d: max(0, alloc[d] - capacity[d]) for d in shares}
    alloc = {d: min(alloc[d], capacity[d]) for d in shares}
    left = sum(shortfall.values())
    while fill and left > 0:
        room = {d: shares[d] for d in shares if shares[d] > 0 and alloc[d] < capacity[d]}
        if not room:
            break
        extra = largest_remainder(left, room)
        for d, add in extra.items():
            add = min(add, capacity[d] - alloc[d])
            alloc[d] += add
            left -= add
    return alloc, shortfall, left


# ----------------------------------------------------------------------------------------------
# Picking inside one domain (all return positions into the domain's rows, best/first first)


def rank_order(scores: np.ndarray, ids: np.ndarray, order: str) -> np.ndarray:
    """Positions sorted best first (``high``: largest score first), ties by example id."""
    key = -scores if order == "high" else scores
    return np.lexsort((ids, key))


def s2l_sample(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """S2L balanced sampling of ``k`` positions from cluster ``labels``, as the official code does.

    Clusters with more than 2 members are visited from the smallest to the largest; each gets
    (budget left) // (clusters left), the whole cluster when it is not larger than that, else a
    seeded random sample.  Clusters of at most 2 members sit out this pass and only fill what
    budget remains, at random.  Returns positions in the order they were taken.
    """
    labels = np.asarray(labels)
    k = min(int(k), len(labels))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    clusters, counts = np.unique(labels, return_counts=True)
    by_size = np.lexsort((clusters, counts))  # smallest first, ties by cluster label
    big = by_size[counts[by_size] > 2]
    picked: list[np.ndarray] = []
    n = k
    for i, c in enumerate(big):
        per_cluster = n // (len(big) - i)
        members = np.flatnonzero(labels == clusters[c])
        if len(members) > per_cluster:
            picked.append(rng.choice(members, per_cluster, replace=False))
            n -= per_cluster
        else:
            picked.append(members)
            n -= len(members)
    if n > 0:
        small = np.flatnonzero(np.isin(labels, clusters[counts <= 2]))
        take = min(n, len(small))
        picked.append(rng.choice(small, take, replace=False))
        n -= take
    # Water-filling over ascending sizes places the whole budget whenever k <= len(labels)
    # (the property tests check it), so nothing is left here.
    assert n == 0, "s2l_sample: budget left after every cluster was visited"
    return np.concatenate(picked).astype(np.int64)


def length_strata(lengths: np.ndarray, ids: np.ndarray, q: int) -> np.ndarray:
    """Stratum (0 = shortest) of each row: ``q`` response-length quantile strata by rank.

    Rows are ordered by (length, example id) and cut into ``q`` strata whose sizes differ by at
    most one, so a run of equal lengths at a quantile edge is split by id instead of one stratum
    swallowing it (fewer rows than ``q``: one stratum per row)."""
    n = len(lengths)
    q = max(1, min(int(q), n))
    by_length = np.lexsort((ids, lengths))  # shortest first, ties by id
    strata = np.empty(n, dtype=np.int64)
    strata[by_length] = (np.arange(n) * q) // max(n, 1)  # rank r -> floor(r * q / n)
    return strata


def take_stratified(order: np.ndarray, strata: np.ndarray, budget: int,
                    tokens: np.ndarray | None = None) -> np.ndarray:
    """The first rows of ``order`` (positions, preferred first) inside each stratum, with
    ``budget`` split over the strata in proportion to their sizes (or, when ``tokens`` is given,
    their tokens; the longest prefix of each stratum's order that fits its part) by the largest
    remainder method.  Returns the picked positions in ``order``'s order."""
    q = int(strata.max()) + 1 if len(strata) else 0
    weight = (np.bincount(strata, minlength=q) if tokens is None
              else np.bincount(strata, weights=tokens, minlength=q).astype(np.int64))
    parts = largest_remainder(int(budget), {s: Fraction(int(w)) for s, w in enumerate(weight)})
    keep = np.zeros(len(order), dtype=bool)  # over positions of ``order``
    ranked_strata = strata[order]
    for s, part in parts.items():
        pos = np.flatnonzero(ranked_strata == s)  # this stratum's rows, preferred first
        if tokens is None:
            pos = pos[:part]
        else:
            cum = np.cumsum(tokens[order[pos]])
            pos = pos[: int(np.searchsorted(cum, part, side="right"))]
        keep[pos] = True
    return order[keep]


def gumbel_order(scores: np.ndarray, ids: np.ndarray, order: str, temperature: float,
                 rng: np.random.Generator) -> np.ndarray:
    """All positions in the order of a seeded sample without replacement with P ~ exp(z / T)
    (Gumbel top-k: sort by z / T + Gumbel noise), z the score standardised over the given rows
    and negated for ``order="low"``, so T is in standard deviations for every score.  The noise
    is drawn in the rows' order (callers pass them sorted by id); keys that overflow at a tiny T
    fall back to z, then id, so T -> 0 is exactly top-k."""
    sd = float(scores.std()) if len(scores) else 0.0
    z = (scores - scores.mean()) / sd if sd > 0 else np.zeros(len(scores))
    if order == "low":
        z = -z
    with np.errstate(over="ignore", invalid="ignore"):
        keys = z / temperature + rng.gumbel(size=len(scores))
    return np.lexsort((ids, -z, -keys))


def _domain_rng(seed: int, domain: str) -> np.random.Generator:
    # One stream per domain: adding a domain to the mix does not change another domain's sample.
    key = int.from_bytes(hashlib.sha256(domain.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, key]))


# ----------------------------------------------------------------------------------------------
# select


@dataclass
class DomainPlan:
    """How one domain fared: its share, pool, eligible rows, allocation and result."""

    share: float
    pool: int
    eligible: int
    quota: int  # units (examples or tokens) the share alone gives
    allocated: int  # after capping at what is eligible (and fill)
    shortfall: int  # quota - what the domain could take
    selected: int = 0
    tokens: int = 0


@dataclass
class Selection:
    """The result of applying a recipe: selected rows plus how the budget was spent."""

    rows: "object"  # pandas DataFrame: example_id, source, source_index, domain, rank, n_tokens, <score>
    recipe: Recipe
    score_column: str | None  # column of rows holding the score used (None for random)
    unit: str  # "examples" | "tokens"
    budget_units: int  # the budget in ``unit``
    domains: dict[str, DomainPlan]
    unfilled: int  # budget no domain could take
    warnings: list[str]
    eligible_mask: "object"  # numpy bool array over the input table
    details: dict = field(default_factory=dict)  # per-feature reports (strata, ...) for the summary


ID_COLUMNS = ["example_id", "source", "source_index", "domain"]
TOKEN_COLUMNS = ["n_prompt_tokens", "n_response_tokens"]


def select(table, recipe: Recipe):
    """The selected rows of ``table`` (a score table) under ``recipe``, with their ``rank``: the
    1-based position within the row's domain, best first (for random and s2l: the sampling order).

    Pure and seeded: the same rows and recipe give the same ids.  See :func:`apply_recipe` for
    the budget accounting.
    """
    return apply_recipe(table, recipe).rows


def apply_recipe(table, recipe: Recipe, run_kind: str | None = None) -> Selection:
    """Apply ``recipe`` to a score table; raise :class:`SelectionError` when it cannot be applied.

    ``run_kind`` (from run.json) only improves the message for a missing column.
    """
    _require(table, ID_COLUMNS + TOKEN_COLUMNS, "selection", run_kind)
    df = table.reset_index(drop=True)
    # Name the run kind in messages about missing columns (a table alone: learn runs have trajectories).
    run_kind = run_kind or ("learn" if trajectory_columns(df.columns) else "score")
    n_pool = len(df)
    if n_pool == 0:
        raise SelectionError("empty selection: the run's score table has no rows")
    domain = df["domain"].astype(str).to_numpy()
    ids = df["example_id"].astype(str).to_numpy()
    tokens = (df["n_prompt_tokens"].fillna(0).astype(np.int64) + df["n_response_tokens"].fillna(0).astype(np.int64)).to_numpy()
    budget = recipe.budget_spec
    unit = "tokens" if budget.kind == "tokens" else "examples"
    pool_domains = sorted(set(domain))

    # Shares (exact fractions).
    if recipe.mix == "natural":
        weight = tokens if unit == "tokens" else np.ones(n_pool, dtype=np.int64)
        shares = {d: Fraction(int(weight[domain == d].sum()), max(int(weight.sum()), 1)) for d in pool_domains}
    else:
        missing = [d for d in recipe.mix if d not in pool_domains]
        if missing:
            raise SelectionError(
                f"impossible mix: domain(s) {missing} have no examples in this run; its domains are "
                f"{pool_domains}"
            )
        # Shares are decimal fractions as written (12 significant digits drop float noise such
        # as 1 - 0.7 = 0.30000000000000004), then normalised to sum to exactly 1.
        raw = {d: Fraction(f"{v:.12g}") for d, v in recipe.mix.items()}
        total = sum(raw.values())
        shares = {d: v / total for d, v in raw.items()}

    # Eligibility: scored, score known, thresholds passed.
    score_col, score = _score_values(df, recipe.method, run_kind, recipe.aggregate)
    eligible = np.ones(n_pool, dtype=bool)
    if "scored" in df.columns:
        eligible &= df["scored"].fillna(False).astype(bool).to_numpy()
    if score is not None:
        eligible &= ~np.isnan(score)
    for which, bounds in (("min", recipe.min), ("max", recipe.max)):
        for name, bound in bounds.items():
            _, values = _threshold_values(df, name, which, run_kind)
            with np.errstate(invalid="ignore"):
                ok = values >= bound if which == "min" else values <= bound
            eligible &= ok & ~np.isnan(values)
    details: dict = {}
    if recipe.decontaminate:
        details["contamination"] = _decontaminate(df, recipe, eligible)
    if recipe.dedup:
        details["dedup"] = _dedup(df, recipe, eligible, score, ids)
    if recipe.diversity:
        embedding = _annotation(df, "embedding")
        known = np.array([e is not None and bool(np.isfinite(e).all()) for e in embedding])
        details["diversity"] = {"method": recipe.diversity, "eligible_without_embedding": int((eligible & ~known).sum()),
                                "by_domain": {}}
        eligible &= known
    if recipe.method == "s2l":
        labels = _s2l_labels(df, recipe, eligible, domain, run_kind)
        eligible &= labels >= 0  # rows without a cluster cannot be sampled
        score = labels.astype(np.float64)

    # Allocation.
    budget_units = budget.units(n_pool)
    if budget_units < 1:
        raise SelectionError(f"empty selection: a budget of {recipe.budget} of {n_pool} examples rounds to 0")
    capacity = {d: int(tokens[eligible & (domain == d)].sum()) if unit == "tokens"
                else int((eligible & (domain == d)).sum()) for d in shares}
    quota = largest_remainder(budget_units, shares)
    alloc, shortfall, unfilled = allocate(budget_units, shares, capacity, recipe.fill)

    # Picking.
    resp_len = df["n_response_tokens"].fillna(0).astype(np.int64).to_numpy()
    picked_rows: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    for d in shares:
        rows_d = np.flatnonzero(eligible & (domain == d))
        # Canonical order (by id) so the result does not depend on the table's row order.
        rows_d = rows_d[np.argsort(ids[rows_d], kind="stable")]
        if alloc[d] == 0 or len(rows_d) == 0:
            continue
        rng = _domain_rng(recipe.seed, d)
        if recipe.method == "s2l":
            order = s2l_sample(score[rows_d].astype(np.int64), alloc[d], rng)
        elif recipe.method == "random":
            order = rng.permutation(len(rows_d))
        elif recipe.diversity is not None:
            order, details["diversity"]["by_domain"][d] = diverse_order(
                np.stack(embedding[rows_d]).astype(np.float32), score[rows_d], ids[rows_d], alloc[d], recipe)
        elif recipe.temperature is not None:
            order = gumbel_order(score[rows_d], ids[rows_d], recipe.order, recipe.temperature, rng)
        else:
            order = rank_order(score[rows_d], ids[rows_d], recipe.order)
        if recipe.strata is not None:
            strata = length_strata(resp_len[rows_d], ids[rows_d], recipe.strata)
            order = take_stratified(order, strata, alloc[d], tokens[rows_d] if unit == "tokens" else None)
            details.setdefault("strata", {})[d] = {
                "edges": [float(resp_len[rows_d][strata == s].max()) for s in range(int(strata.max()) + 1)],
                "eligible": np.bincount(strata).tolist(),
                "selected": np.bincount(strata[order], minlength=int(strata.max()) + 1).tolist()}
        elif unit == "tokens":
            # Longest prefix of the ranking that fits: keeps the top-k law, never exceeds the budget.
            cum = np.cumsum(tokens[rows_d][order])
            order = order[: int(np.searchsorted(cum, alloc[d], side="right"))]
        else:
            order = order[: alloc[d]]
        picked_rows.append(rows_d[order])
        ranks.append(np.arange(1, len(order) + 1))
    picked = np.concatenate(picked_rows) if picked_rows else np.zeros(0, dtype=np.int64)
    rank = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)

    out = df.loc[picked, ID_COLUMNS].reset_index(drop=True)
    out["source_index"] = out["source_index"].astype(np.int64)
    out["rank"] = rank.astype(np.int64)
    out["n_tokens"] = tokens[picked].astype(np.int64)
    if score_col is not None:
        out[score_col] = score[picked] if recipe.method != "s2l" else score[picked].astype(np.int64)

    plans: dict[str, DomainPlan] = {}
    warnings: list[str] = []
    for d in shares:
        sel = out["domain"] == d
        plans[d] = DomainPlan(
            share=float(shares[d]), pool=int((domain == d).sum()), eligible=int((eligible & (domain == d)).sum()),
            quota=int(quota[d]), allocated=int(alloc[d]), shortfall=int(shortfall[d]),
            selected=int(sel.sum()), tokens=int(out.loc[sel, "n_tokens"].sum()),
        )
        if shortfall[d] > 0:
            warnings.append(
                f"domain {d}: {plans[d].eligible} eligible example(s) ({capacity[d]} {unit}) for a share "
                f"of {quota[d]} {unit}; {shortfall[d]} {unit} short"
                + ("" if recipe.fill else "; use --fill to spread them over the other domains")
            )
    if recipe.fill and unfilled > 0:
        warnings.append(f"--fill: no domain had room for the last {unfilled} {unit} of the budget")
    if len(out) == 0:
        n_eligible = int(eligible.sum())
        why = (f"no example is eligible ({n_eligible} of {n_pool} pass 'scored', the score and the "
               f"thresholds {_fmt_thresholds(recipe)})" if n_eligible == 0 else
               f"{n_eligible} example(s) are eligible but none fits the budget of {recipe.budget} per the mix "
               f"{recipe.mix}")
        raise SelectionError(f"empty selection: {why}")
    return Selection(
        rows=out, recipe=recipe, score_column=score_col, unit=unit, budget_units=budget_units,
        domains=plans, unfilled=int(unfilled), warnings=warnings, eligible_mask=eligible, details=details,
    )


ANNOTATIONS = {"near_dup_group": "--dedup near", "contaminated": "--decontaminate", "embedding": "--diversity"}
COVERAGE_CLUSTERS = 20  # at most this many k-means clusters per domain measure --diversity kcenter's coverage


def diverse_order(x: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int, recipe: Recipe):
    """``(positions, report)``: the ``k`` rows ``--diversity`` picks from one domain's eligible
    rows (embeddings ``x``), and the share of the domain's embedding clusters they touch beside
    plain top-k's (``clusters:N``: those N clusters; ``kcenter``: k-means with as many clusters as
    picks, at most :data:`COVERAGE_CLUSTERS`, so full coverage is reachable)."""
    from curation.diversity import balanced_topk, coverage, kcenter, kmeans_labels

    n_clusters = recipe.diversity_clusters or max(1, min(k, COVERAGE_CLUSTERS))
    labels = kmeans_labels(x, ids, n_clusters, recipe.seed)
    if recipe.diversity == "kcenter":
        order = kcenter(x, scores, ids, k, order=recipe.order)
    else:
        order = balanced_topk(labels, scores, ids, k, recipe.order)
    top = rank_order(scores, ids, recipe.order)[:k]
    return order, {"clusters": int(labels.max()) + 1, "coverage": coverage(labels[order], labels),
                   "top_k_coverage": coverage(labels[top], labels)}


def _annotation(df, column: str) -> np.ndarray:
    if column not in df.columns:
        raise SelectionError(f"{ANNOTATIONS[column]} needs the column {column!r} beside the scores; "
                             "selection.annotate(run, table, recipe) adds it (select_run and the Select page do)")
    return df[column].to_numpy()


def _decontaminate(df, recipe: Recipe, eligible: np.ndarray) -> dict:
    """Drop (unless ``keep_contaminated``) the rows flagged by the eval sets; return the report."""
    flagged = _annotation(df, "contaminated").astype(bool)
    by = df["contaminated_by"].to_numpy() if "contaminated_by" in df.columns else np.full(len(df), None)
    rows = np.flatnonzero(flagged)
    rows = rows[np.argsort(df["example_id"].astype(str).to_numpy()[rows], kind="stable")]
    report = {"eval_sets": list(recipe.decontaminate), "ngram": recipe.ngram, "flagged": int(len(rows)),
              "flagged_by_domain": {str(d): int(c) for d, c in df.loc[flagged, "domain"].astype(str).value_counts().sort_index().items()},
              "flagged_eligible": int((flagged & eligible).sum()), "excluded": not recipe.keep_contaminated,
              "first": [{"example_id": str(df["example_id"].iat[i]), "domain": str(df["domain"].iat[i]),
                         "eval_example": by[i]} for i in rows[:5]]}
    if not recipe.keep_contaminated:
        eligible &= ~flagged
    return report


def _dedup(df, recipe: Recipe, eligible: np.ndarray, score, ids: np.ndarray) -> dict:
    """Keep the best-ranked eligible member of each near-duplicate group (for samplers: the
    smallest example id); return the report."""
    from curation.neardup import dedup_keep_best

    groups = _annotation(df, "near_dup_group").astype(np.int64)
    rows = np.flatnonzero(eligible)
    ranking = score[rows] if score is not None and recipe.order else np.zeros(len(rows))
    keep = dedup_keep_best(groups[rows], ranking, ids[rows], recipe.order or "high")
    dropped = rows[~keep]
    eligible[dropped] = False
    sizes = np.bincount(groups)
    dropped = dropped[np.argsort(ids[dropped], kind="stable")]
    return {"threshold": recipe.near_dup_threshold, "groups_with_duplicates": int((sizes > 1).sum()),
            "rows_in_such_groups": int(sizes[sizes > 1].sum()), "dropped": int(len(dropped)),
            "first_dropped": [str(ids[i]) for i in dropped[:5]]}


def annotation_key(recipe: Recipe) -> tuple:
    """The recipe's settings that decide what :func:`annotate` adds (a cache key for callers that
    re-apply many recipes to one run)."""
    return (recipe.diversity is not None, recipe.near_dup_threshold if recipe.dedup else None,
            tuple(recipe.decontaminate), recipe.ngram if recipe.decontaminate else None)


def annotate(run, table, recipe: Recipe, progress: Callable[[dict], None] | None = None):
    """``table`` (the run's scores) with the columns the recipe's ``diversity``, ``dedup`` and
    ``decontaminate`` need: ``embedding`` (a float16 vector per row, from the run's
    ``embeddings.npy``), ``near_dup_group`` (:func:`curation.neardup.near_dup_groups`, cached in the
    run folder) and ``contaminated``/``contaminated_by`` (:func:`curation.contamination.flag_run`)."""
    from curation.runs import Run

    run = run if isinstance(run, Run) else Run(run)
    df = table.drop(columns=[c for c in ("near_dup_group", "group_size", "contaminated", "contaminated_by",
                                         "embedding") if c in table.columns])
    if recipe.diversity:
        got = run.embeddings()
        if got is None:
            raise SelectionError(f"--diversity needs the run's embeddings, and {run.path} has no embeddings.npy (it was "
                                 f"scored before the scoring pass kept them); add them with: python -m curation embed {run.path}")
        row_of = {i: j for j, i in enumerate(got[0])}
        df["embedding"] = [got[1][row_of[i]] if i in row_of else None for i in df["example_id"].astype(str)]
    if not recipe.dedup and not recipe.decontaminate:
        return df
    texts = run.texts() if recipe.decontaminate else None  # read once for both
    if recipe.dedup:
        from curation.neardup import near_dup_groups

        df = df.merge(near_dup_groups(run, recipe.near_dup_threshold, texts=texts, progress=progress)[
            ["example_id", "near_dup_group"]], on="example_id", how="left")
    if recipe.decontaminate:
        from curation.contamination import flag_run

        ids = df["example_id"].astype(str).tolist()
        missing = [i for i in ids if i not in texts]
        if missing:
            raise SelectionError(f"{len(missing)} example(s) of the run (e.g. {missing[0]}) are no longer in its "
                                 "sources; re-run the scoring on the current files")
        df = df.merge(flag_run(ids, [texts[i] for i in ids], recipe.decontaminate, recipe.ngram),
                      on="example_id", how="left")
    return df


def _fmt_thresholds(recipe: Recipe) -> str:
    parts = [f"{k}>={v:g}" for k, v in recipe.min.items()] + [f"{k}<={v:g}" for k, v in recipe.max.items()]
    return ", ".join(parts) if parts else "(none)"


def _require(df, columns: list[str], what: str, run_kind: str | None) -> None:
    for c in columns:
        if c not in df.columns:
            raise SelectionError(f"the run's scores.parquet has no column {c!r}, which {what} needs; "
                                 f"it is written by {ANY_RUN}")


def _missing(column: str, what: str, produced_by: str, run_kind: str | None) -> SelectionError:
    return SelectionError(
        f"{what} needs the column {column!r}, which this {run_kind + ' ' if run_kind else ''}run's "
        f"scores.parquet does not have; {column!r} is written by {produced_by}"
    )


def _score_values(df, method: str, run_kind: str | None, aggregate: str | None = None):
    """``(column name, float array)`` of the score a method ranks by; ``(None, None)`` for random.
    With ``aggregate``, the mean or median of the score over the run's reference runs."""
    info = SCORES[method]
    if info.column is None:
        return None, None
    if method == "s2l":
        return info.column, None  # labels are resolved by _s2l_labels
    if aggregate is not None:
        cols = run_columns(df.columns, info.column)
        if len(cols) < 2:
            raise _missing(f"{info.column}_r1..{info.column}_rN", f"--aggregate {aggregate}",
                           "a learnability run with --stability-runs N (N >= 2)", run_kind)
        m = df[cols].astype("float64").to_numpy()  # (n, N)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN (not eligible)
            return f"{info.column}_{aggregate}", (np.nanmean(m, axis=1) if aggregate == "mean" else np.nanmedian(m, axis=1))
    if info.column in df.columns:
        return info.column, df[info.column].astype("float64").to_numpy()
    if info.fallback is not None and info.fallback in df.columns:
        values = df[info.fallback].astype("float64").to_numpy()
        if method == "ppl":
            with np.errstate(over="ignore"):
                return "ppl", np.exp(values)
        return info.fallback, values
    raise _missing(info.column, f"--method {method}", info.produced_by, run_kind)


def _threshold_values(df, name: str, which: str, run_kind: str | None):
    """Values a ``--min``/``--max`` threshold compares: a score name or any numeric column."""
    if name in SCORES and SCORES[name].column is not None and name != "s2l":
        col, values = _score_values(df, name, run_kind)
        return col, values
    if name in df.columns:
        try:
            return name, df[name].astype("float64").to_numpy()
        except (TypeError, ValueError):
            raise SelectionError(f"--{which} {name}: column {name!r} is not numeric") from None
    numeric = [c for c in df.columns if c not in ID_COLUMNS and _is_numeric(df[c])]
    raise SelectionError(
        f"--{which} {name}: unknown score or column {name!r}; scores: "
        f"{', '.join(n for n in SCORES if SCORES[n].default_order)}; numeric columns of this run: {', '.join(numeric)}"
    )


def _is_numeric(s) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


def _s2l_labels(df, recipe: Recipe, eligible: np.ndarray, domain: np.ndarray, run_kind) -> np.ndarray:
    """Cluster label per row (-1: none): the run's ``s2l_cluster`` or, with ``s2l_clusters``,
    K-means over each domain's eligible trajectories."""
    if recipe.s2l_clusters is None:
        if "s2l_cluster" not in df.columns:
            raise _missing("s2l_cluster", "--method s2l", LEARN_RUN, run_kind)
        labels = df["s2l_cluster"].astype("float64").to_numpy()
        return np.where(np.isnan(labels) | (labels < 0), -1, np.nan_to_num(labels)).astype(np.int64)
    from curation.formulas import s2l_clusters

    traj_cols = trajectory_columns(df.columns)
    if len(traj_cols) < 2:
        raise _missing("loss_ckpt_0..loss_ckpt_K", "--method s2l with s2l_clusters", LEARN_RUN, run_kind)
    traj = df[traj_cols].astype("float64").to_numpy()
    labels = np.full(len(df), -1, dtype=np.int64)
    ids = df["example_id"].astype(str).to_numpy()
    for d in sorted(set(domain)):
        rows = np.flatnonzero(eligible & (domain == d))
        rows = rows[np.argsort(ids[rows], kind="stable")]  # canonical order: independent of row order
        if len(rows):
            labels[rows] = s2l_clusters(traj[rows], recipe.s2l_clusters, recipe.seed)  # NaN rows: -1
    return labels


# ----------------------------------------------------------------------------------------------
# Summary


STAT_COLUMNS = ["davir", "rho", "ifd", "ppl_base", "loss_base", "loss", "n_response_tokens", "n_prompt_tokens"]


def describe(values) -> dict:
    """count, mean, std, min, quartiles and max of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"count": 0}
    q = np.quantile(v, [0.25, 0.5, 0.75])
    return {"count": int(len(v)), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "p25": float(q[0]), "median": float(q[1]), "p75": float(q[2]), "max": float(v.max())}


def summarize(table, selection: Selection, baseline: Selection | None = None) -> dict:
    """Per-domain counts and tokens, and score statistics of the pool, the eligible rows, the
    selection and (if given) the random baseline at the same budget and mix."""
    df = table.reset_index(drop=True)
    cols = []
    if selection.score_column and selection.score_column != "s2l_cluster":
        cols.append(selection.score_column)
    cols += [c for c in STAT_COLUMNS if c in df.columns and c not in cols]
    if selection.score_column == "ppl" and "ppl" not in df.columns:
        df = df.assign(ppl=np.exp(df["loss"].astype("float64")))
    if selection.recipe.aggregate and selection.score_column not in df.columns:  # the ensemble score
        df = df.assign(**{selection.score_column: _score_values(df, selection.recipe.method, None,
                                                                selection.recipe.aggregate)[1]})
    by_id = df.set_index("example_id")

    def stats(sub) -> dict:
        out = {}
        for c in cols:
            entry = {"all": describe(sub[c])}
            entry["by_domain"] = {str(d): describe(g[c]) for d, g in sub.groupby("domain", sort=True)}
            out[c] = entry
        return out

    def counts(sel: Selection) -> dict:
        return {d: {"examples": p.selected, "tokens": p.tokens} for d, p in sel.domains.items()}

    summary = {
        "recipe": selection.recipe.to_dict(),
        "score": _score_meta(selection),
        "budget": {"spec": selection.recipe.budget, "unit": selection.unit, "units": selection.budget_units,
                   "pool_examples": len(df)},
        "domains": {d: asdict(p) for d, p in selection.domains.items()},
        "totals": {"examples": int(len(selection.rows)), "tokens": int(selection.rows["n_tokens"].sum()),
                   "eligible": int(selection.eligible_mask.sum()), "unfilled": selection.unfilled},
        "warnings": selection.warnings,
        "stats": {
            "pool": stats(df),
            "eligible": stats(df[selection.eligible_mask]),
            "selection": stats(by_id.loc[selection.rows["example_id"]].reset_index()),
        },
    }
    summary["length"] = length_profile(df, selection, baseline)
    summary.update(selection.details)
    stability = pick_stability(table, selection)
    if stability is not None:
        summary["pick_stability"] = stability
    if baseline is not None:
        summary["random_baseline"] = {
            "seed": baseline.recipe.seed, "counts": counts(baseline),
            "totals": {"examples": int(len(baseline.rows)), "tokens": int(baseline.rows["n_tokens"].sum())},
        }
        summary["stats"]["random"] = stats(by_id.loc[baseline.rows["example_id"]].reset_index())
    return summary


LENGTH_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def length_quantiles(values) -> list[float] | None:
    """The :data:`LENGTH_QUANTILES` of ``values`` (None when empty)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(x) for x in np.quantile(v, LENGTH_QUANTILES)] if len(v) else None


def length_profile(table, selection: Selection, baseline: Selection | None = None) -> dict:
    """Response-length (``n_response_tokens``) quantiles of the pool, the eligible rows, the
    selection and the random baseline, overall and per domain: what a length-biased score does
    to the selection shows as a shift of the selection's quantiles from the eligible rows'."""
    df = table.reset_index(drop=True)
    groups = {"pool": np.ones(len(df), dtype=bool), "eligible": np.asarray(selection.eligible_mask, dtype=bool),
              "selection": df["example_id"].isin(set(selection.rows["example_id"])).to_numpy()}
    if baseline is not None:
        groups["random"] = df["example_id"].isin(set(baseline.rows["example_id"])).to_numpy()
    length = df["n_response_tokens"].astype("float64").to_numpy()
    domain = df["domain"].astype(str).to_numpy()
    out: dict = {"column": "n_response_tokens", "quantiles": list(LENGTH_QUANTILES)}
    for name, mask in groups.items():
        out[name] = {"all": length_quantiles(length[mask]),
                     "by_domain": {d: length_quantiles(length[mask & (domain == d)]) for d in sorted(set(domain))}}
    return out


def pick_stability(table, selection: Selection, run_kind: str | None = None) -> dict | None:
    """How many picks would survive a rerun of the reference training: for each reference run i of
    a learn run with ``--stability-runs`` (columns ``{score}_r{i}``), apply the same recipe ranking
    by that run's score alone; report per domain the share of the selection that every other run
    also selects, and the Jaccard overlap of the selection with each other run's.  Run 1 is the main
    reference (its columns equal the unsuffixed score), so a selection ranked by the score itself is
    compared with runs 2..N; an ensemble (``aggregate``) with every run.  None when the score has no
    per-run columns (a single reference, or a sampling method)."""
    info = SCORES[selection.recipe.method]
    if info.default_order is None or info.column is None:
        return None
    cols = run_columns(table.columns, info.column)
    if len(cols) < 2:
        return None
    df = table.reset_index(drop=True)
    chosen = {d: set(g["example_id"]) for d, g in selection.rows.groupby("domain")}
    per_run = []
    compared = cols if selection.recipe.aggregate else cols[1:]
    recipe = replace(selection.recipe, aggregate=None)
    for c in compared:
        rows = apply_recipe(df.assign(**{info.column: df[c]}), recipe, run_kind).rows
        per_run.append({d: set(g["example_id"]) for d, g in rows.groupby("domain")})
    out = {"runs": len(cols), "columns": cols, "compared_with": compared, "by_domain": {}}
    for d in sorted(chosen):
        mine = chosen[d]
        others = [r.get(d, set()) for r in per_run]
        kept = set.intersection(mine, *others)
        jac = [len(mine & o) / len(mine | o) if mine | o else 1.0 for o in others]
        out["by_domain"][str(d)] = {"selected": len(mine), "kept_by_every_run": len(kept),
                                    "share": len(kept) / len(mine) if mine else None,
                                    "jaccard_mean": float(np.mean(jac)), "jaccard_min": float(np.min(jac))}
    n = sum(v["selected"] for v in out["by_domain"].values())
    k = sum(v["kept_by_every_run"] for v in out["by_domain"].values())
    out["all"] = {"selected": n, "kept_by_every_run": k, "share": k / n if n else None}
    return out


def _score_meta(selection: Selection) -> dict:
    info = SCORES[selection.recipe.method]
    return {"method": info.name, "column": selection.score_column, "order": selection.recipe.order,
            "explanation": info.explanation}


def random_baseline(table, recipe: Recipe, run_kind: str | None = None) -> Selection:
    """The seeded random selection at the same budget, mix, thresholds and fill as ``recipe``."""
    d = recipe.to_dict()
    d.update(method="random", order=None, s2l_clusters=None, aggregate=None, stratify=None, temperature=None,
             diversity=None)
    return apply_recipe(table, Recipe.from_dict(d), run_kind)


# ----------------------------------------------------------------------------------------------
# The select command: run folder in, selection folder out


def select_run(run_dir: str | Path, recipe: Recipe, out: str | Path,
               progress: Callable[[dict], None] | None = None) -> Path:
    """Apply ``recipe`` to a finished run folder and save the selection (:func:`save_selection`)."""
    from curation.runs import Run

    report = progress or (lambda p: None)
    report({"phase": "reading run", "done": 0, "total": 3})
    run = Run(run_dir)
    meta = run.require_finished()
    table = annotate(run, run.scores(), recipe)
    report({"phase": "selecting", "done": 1, "total": 3})
    sel = apply_recipe(table, recipe, meta.get("kind"))
    base = sel if recipe.method == "random" else random_baseline(table, recipe, meta.get("kind"))
    report({"phase": "writing", "done": 2, "total": 3})
    save_selection(out, table, sel, base, run.provenance())
    report({"phase": "done", "done": 3, "total": 3})
    return Path(out)


def save_selection(out: str | Path, table, sel: Selection, baseline: Selection | None, provenance: dict) -> Path:
    """Write the selection ``sel`` of ``table`` (as applied: nothing is recomputed) to ``out/``,
    atomically: ``recipe.yaml``, ``selected.parquet`` and ``summary.json``, which also records the
    run's ``provenance`` so an export needs only the selection folder and the source files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation import __version__
    from curation.atomic import atomic_dir

    summary = summarize(table, sel, baseline)
    summary["run"] = provenance
    summary["code_version"] = __version__
    # The folder is renamed into place as a whole, so plain writes inside it are atomic enough.
    with atomic_dir(out, marker="recipe.yaml", what="selection") as tmp:
        (tmp / "recipe.yaml").write_text(recipe_yaml(sel.recipe))
        pq.write_table(pa.Table.from_pandas(sel.rows, preserve_index=False), tmp / "selected.parquet")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return Path(out)
