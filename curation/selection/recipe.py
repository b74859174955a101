"""A selection recipe: what to rank by, how much to take, from which domains, under which filters.

:class:`Recipe` is a dataclass whose fields carry their help (the CLI's ``select`` flags, the
Select page and ``recipe.yaml`` are built from it); it validates and normalises itself, so a
recipe that exists can be applied.  :class:`Budget` parses ``200``, ``10%`` and ``25000tok``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path

from curation.config import option, parse_pairs
from curation.data.overlap import NGRAM
from curation.scores import METHODS, ORDERS, SCORES

AGGREGATES = ("mean", "median")
DEDUPS = ("near",)


MAX_RECIPE_BYTES = 1_000_000  # a recipe file is a few lines (its targets and thresholds included)


class SelectionError(ValueError):
    """A recipe cannot be applied to a run (the message says what to change)."""


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
    order: str | None = option(None, "keep the highest or lowest scores (default: the method's own; the other "
                                     "takes the other end)", choices=ORDERS)
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
                                        "eligible rows (of a pair run: len_diff, chosen - rejected tokens), the budget "
                                        "split by stratum size, so the selection's length distribution is the "
                                        "eligible pool's", metavar="length:Q")
    temperature: float | None = option(None, "soft selection: a seeded sample without replacement with probability "
                                             "proportional to exp(z / T), z the score standardised within the domain "
                                             "(small T: top-k; large T: random)", metavar="T")
    diversity: str | None = option(None, "kcenter: greedy k-center on the run's embeddings inside each domain, seeded by "
                                         "the top-scored example; clusters:N: k-means the embeddings into N clusters per "
                                         "domain, the budget spread smallest cluster first, top-scored inside each",
                                   metavar="kcenter|clusters:N")
    dedup: str | None = option(None, "near: keep only the best-ranked eligible member of each near-duplicate group "
                                     "(MinHash LSH over word shingles of the whole conversation; curation.selection.neardup)",
                               choices=DEDUPS)
    near_dup_threshold: float = option(0.8, "--dedup near: word-shingle Jaccard similarity from which two examples are "
                                            "near-duplicates (their sets of numbers must agree as much); 1: only "
                                            "identical word sequences")
    decontaminate: list[str] = option(help="eval files (any format the loader reads): pool examples sharing an n-gram "
                                           "with one of their examples are not eligible", default_factory=list,
                                      metavar="PATH")
    ngram: int = option(NGRAM, "--decontaminate: consecutive words of a shared n-gram that flags an example")
    keep_contaminated: bool = option(False, "--decontaminate: report the flagged examples but keep them eligible")
    target: dict[str, list[str]] = option(help="examples of what you want more of, as DOMAIN=PATH (any format the loader "
                                               "reads; repeat for several files): --method target selects toward them, "
                                               "and any method can threshold target_sim (their RDS+ cosine)",
                                          default_factory=dict, metavar="DOMAIN=PATH")
    decisions: str = option("current", "the curator's decisions to honour (excluded examples are never selected, kept "
                                       "ones are selected first): current (the workspace's), none, or a decisions "
                                       "JSONL file (a selection keeps the one it used as decisions.jsonl)",
                            metavar="none|current|FILE")
    budget_spec: Budget = field(init=False, repr=False, compare=False)  # the budget, parsed once
    strata: int | None = field(init=False, repr=False, compare=False, default=None)  # Q of ``stratify``
    diversity_clusters: int | None = field(init=False, repr=False, compare=False, default=None)  # N of clusters:N

    def __post_init__(self):
        if self.method not in METHODS:
            raise SelectionError(f"unknown method/score {self.method!r}; expected one of {', '.join(METHODS)}")
        self.budget_spec = Budget.parse(self.budget)
        self.budget = str(self.budget_spec)
        info = SCORES[self.method]
        if info.order is None:
            if self.order is not None:
                raise SelectionError(f"--order does not apply to {self.method} (it samples, it does not rank)")
        else:
            self.order = self.order or info.order
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
            if SCORES[self.method].order is None:
                raise SelectionError(f"--aggregate applies to a ranking score, not to {self.method}")
        if self.method == "s2l" and self.budget_spec.kind == "tokens":
            raise SelectionError("s2l balances example counts across clusters; give a budget in examples (N or P%), not tokens")
        ranks = SCORES[self.method].order is not None
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
        if not isinstance(self.decisions, str) or not self.decisions.strip():
            raise SelectionError(f"decisions: expected none, current or a decisions JSONL file, got {self.decisions!r}")
        self.decisions = self.decisions.strip()
        self.target = _parse_target(self.target)
        if self.method == "target":
            if not self.target:
                raise SelectionError("--method target needs the examples to select toward: --target DOMAIN=PATH "
                                     "(the default workspace has workspace/dev/chat.jsonl and workspace/dev/math.jsonl)")
            if self.order != "high":
                raise SelectionError("--method target takes each target's most similar examples; --order low does not apply")
            if self.strata is not None or self.temperature is not None or self.diversity is not None:
                raise SelectionError("--method target picks round-robin over the targets by itself; leave out "
                                     "--stratify, --temperature and --diversity")

    def to_dict(self) -> dict:
        """The normalised recipe as plain data (what recipe.yaml holds)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def to_yaml(self) -> str:
        """The recipe as YAML text (:meth:`from_yaml` reads it back)."""
        import yaml

        head = "# selection recipe: python -m curation select RUN_DIR --recipe recipe.yaml --out SEL_DIR\n"
        return head + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str, where: str = "recipe", base=None) -> "Recipe":
        """A recipe from YAML text; errors name ``where`` (the file).  A relative ``decisions`` file
        is found beside the recipe (``base``: its folder), as a selection folder keeps it."""
        import yaml

        class Loader(yaml.SafeLoader):
            """A YAML mapping that names a key twice is refused (PyYAML keeps the last silently)."""

            def construct_mapping(self, node, deep=False):
                keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
                twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
                if twice is not None:
                    raise yaml.constructor.ConstructorError(None, None, f"{twice!r} is given twice; give it once",
                                                            node.start_mark)
                return super().construct_mapping(node, deep=deep)

        try:
            data = yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as e:
            raise SelectionError(f"{where}: not valid YAML ({e})") from None
        if base is not None and isinstance(data, dict) and isinstance(data.get("decisions"), str) \
                and data["decisions"] not in ("none", "current") and not Path(data["decisions"]).is_absolute():
            data = {**data, "decisions": str(Path(base) / data["decisions"])}
        try:
            return cls.from_dict(data)
        except SelectionError as e:
            raise SelectionError(f"{where}: {e}") from None

    @classmethod
    def read(cls, path: str | Path) -> "Recipe":
        """The recipe of a YAML file (a regular file of at most :data:`MAX_RECIPE_BYTES`), its
        relative ``decisions`` file found beside it."""
        p = Path(path)
        if not p.is_file():
            raise SelectionError(f"{p}: no such recipe file" if not p.exists() else f"{p}: not a regular file")
        if p.stat().st_size > MAX_RECIPE_BYTES:
            raise SelectionError(f"{p}: larger than a recipe may be ({MAX_RECIPE_BYTES:,} bytes); is this the right file?")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SelectionError(f"{p}: cannot read the recipe ({e})") from None
        return cls.from_yaml(text, str(p), base=p.parent)

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


def budget_text(amount: float, kind: str) -> str:
    """The budget ``amount`` of ``kind`` (``percent``, ``count`` or ``tokens``) as :meth:`Budget.parse`
    reads it: ``10%``, ``200``, ``25000tok`` (counts and tokens are whole)."""
    if kind == "percent":
        return f"{amount:g}%"
    if kind not in ("count", "tokens"):
        raise SelectionError(f"budget unit {kind!r}: expected percent, count or tokens")
    return f"{int(amount)}" + ("tok" if kind == "tokens" else "")


def stratify_text(strata: int) -> str | None:
    """``length:Q`` for ``strata`` response-length strata (:func:`parse_stratify`); None (off) below 2."""
    return f"length:{int(strata)}" if strata >= 2 else None


def diversity_text(kind: str, clusters: int | None = None) -> str | None:
    """``kcenter``, ``clusters:N`` or None (``off``), as :func:`parse_diversity` reads it."""
    if kind == "off":
        return None
    return parse_diversity("kcenter" if kind == "kcenter" else f"clusters:{int(clusters)}")[0]


def targets_from_files(paths) -> dict[str, list[str]]:
    """``{DOMAIN: [PATH, ...]}`` for ``recipe.target`` from files named after their domain
    (``dev/math.jsonl`` -> math), in the order given."""
    from curation.data.load import source_stem

    out: dict[str, list[str]] = {}
    for p in paths:
        out.setdefault(source_stem(str(p)), []).append(str(p))
    return out


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
        try:
            mix = parse_pairs(mix, "DOMAIN=SHARE")
        except ValueError as e:
            raise SelectionError(f"mix {mix!r}: {e} (e.g. chat=0.5,math=0.5, or natural)") from None
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


def _parse_target(d) -> dict[str, list[str]]:
    """``{DOMAIN: [PATH, ...]}`` from a mapping whose values are a path or a list of paths."""
    if not d:
        return {}
    if not isinstance(d, dict):
        raise SelectionError(f"target: expected DOMAIN=PATH pairs, got {d!r}")
    out = {}
    for domain, paths in d.items():
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise SelectionError(f"--target {domain}: expected one or more file paths, got {paths!r}")
        out[str(domain)] = list(dict.fromkeys(paths))
    return dict(sorted(out.items()))


def _parse_thresholds(d, which: str) -> dict[str, float]:
    if d is None:
        return {}
    if isinstance(d, (list, tuple, str)):  # ["ifd=1", ...] as given on the command line
        try:
            d = parse_pairs(d, "SCORE=VALUE")
        except ValueError as e:
            raise SelectionError(f"--{which}: {e}, e.g. ifd=1") from None
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
