"""What each candidate of a validation trains on, seed by seed.

A candidate is a selection or one of its baselines (:mod:`curation.selection.baselines`); its
training set is drawn per seed by :meth:`Candidate.grow`, so a validation with seeds until decided
(:mod:`curation.validation.sequential`) draws the next seed of exactly the arms that still need one.

==================  ===============================================================================
the selection       its examples; only the training order changes with the seed.  A *random*
                    selection (``--method random``: e.g. a mix a mix study recommended) stands for
                    its recipe, not for one sample of it, so by default (``--draws coupled``) it is
                    drawn again at every seed from the stream its baselines draw from at that seed:
                    per domain the smaller sample is a prefix of the larger one (the natural
                    baseline's math examples are the first ones of the candidate's, or the other way
                    round), and what the two arms share at a seed cancels in their paired difference.
                    ``independent`` draws it from another stream; ``fixed`` keeps the file's examples
``random``          per domain as many examples as the selection, from the same eligible rows, a
                    new sample per seed; a draw that is the selection itself is passed over (it
                    would compare the selection with itself); a random selection drawn again per
                    seed, coupled, draws exactly its random baseline's examples: not compared
``random-tokens``   per domain a random sample with as many assistant tokens as the selection
``longest``         per domain the longest responses, as many as the selection
``full``            every eligible example, one seed: the ceiling
``natural``         as many examples as the selection, at the pool's natural domain proportions
==================  ===============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from curation.validation.proxy import Training

MAX_REDRAWS = 20  # seeds a random baseline tries beyond its own when its draws are the selection itself
DRAWS = ("coupled", "independent", "fixed")
INDEPENDENT_STREAM = 1_000_003  # --draws independent: a random selection's seed s draws with seed s + this


@dataclass
class Candidate:
    """A training set to validate: a selection or a baseline, with its examples per seed."""

    name: str
    kind: str  # "selection" | a baseline name
    selection: str  # the selection it belongs to (its own name for a selection)
    seeds: list[int] = field(default_factory=list)
    ids: dict[int, list[str]] = field(default_factory=dict)  # seed -> training example ids
    note: str | None = None  # what the report must say about it (natural mix not reachable, ...)
    draw: Callable[[int], list[str]] | None = field(default=None, repr=False, compare=False)
    own: set[str] | None = field(default=None, repr=False)  # a random baseline's draws must differ from these
    skipped: list[int] = field(default_factory=list)  # seeds whose draw was the selection itself
    once: bool = False  # the full pool: one seed
    redrawn: str | None = None  # a random selection drawn again per seed: "coupled" | "independent"
    dpo_loss: str | None = None  # a pair validation's DPO objective (None: SFT)

    def grow(self, n: int, start: int) -> list[int]:
        """Give the candidate its first ``n`` seeds (``start``, ``start + 1``, ...), drawing each
        training set; a random baseline passes over a seed whose draw is the selection's own examples
        (at most :data:`MAX_REDRAWS` of them).  Returns the seeds added."""
        n = min(n, 1) if self.once else n
        s = max(self.seeds + self.skipped) + 1 if self.seeds or self.skipped else start
        added = []
        while len(self.seeds) < n and len(self.skipped) <= MAX_REDRAWS:
            ids = self.draw(s)
            if self.own is not None and set(ids) == self.own:
                self.skipped.append(s)
            else:
                self.seeds.append(s)
                self.ids[s] = ids
                added.append(s)
            s += 1
        return added

    def trainings(self) -> list[Training]:
        return [Training(self.name, s, self.ids[s], self.dpo_loss) for s in self.seeds]

    def notes(self) -> list[str]:
        """What the report must say about this candidate's draws."""
        out = [self.note] if self.note else []
        if self.skipped and not self.seeds:
            out.append(f"{self.name}: every draw ({len(self.skipped)} seeds) is {self.selection}'s own examples (its "
                       f"eligible rows hold no other sample of its size), so {self.selection} cannot be compared "
                       "with it; no comparison is made")
        elif self.skipped:
            out.append(f"{self.name}: the draw of seed(s) {', '.join(map(str, self.skipped))} is {self.selection}'s own "
                       f"examples (comparing it with itself), so seeds {', '.join(map(str, self.seeds))} were drawn "
                       "instead")
        if self.redrawn:
            out.append(f"{self.name} is a random selection: it was drawn again at every seed ({self.redrawn} with its "
                       "baselines' draws), so its verdicts are about its recipe (method, budget, mix), not one sample")
        return out


def comparison_pairs(candidates: list[Candidate]) -> list[tuple[str, str]]:
    """``(candidate, baseline)`` pairs the report compares, always with baselines built for the same
    selection: every selection against the random baselines (:data:`curation.validation.verdicts.RANDOM_BASELINES`);
    ``longest`` and ``full`` against ``random`` only (same examples per domain: is "long is more"
    true on this pool, how far is the ceiling?), since ``random-tokens`` matches the selection's
    tokens, not theirs.  Two arms that drew the same examples at every seed (a random selection drawn
    again per seed, coupled, is its own ``random`` baseline) are not compared."""
    from curation.validation.verdicts import RANDOM_BASELINES

    against = {"selection": RANDOM_BASELINES, "longest": ("random",), "full": ("random",)}
    return [(c.name, b.name) for c in candidates for b in candidates
            if b.selection == c.selection and b.kind in against.get(c.kind, ()) and b.seeds
            and not same_draws(c, b)]


def same_draws(c: Candidate, b: Candidate) -> bool:
    """Whether two arms trained on the same examples at every seed they share (a random selection
    drawn again per seed at the natural mix is its natural baseline): no comparison to make."""
    common = [s for s in c.seeds if s in b.ids]
    return bool(common) and all(set(c.ids[s]) == set(b.ids[s]) for s in common)


def build_candidates(cfg, sels, table, run_kind, run=None) -> list[Candidate]:
    """Each selection and its baselines, each with the function that draws its training set for a
    seed (``run``: the run folder, for recipes that leave out near-duplicates or contaminated
    examples); no seed is drawn yet (:meth:`Candidate.grow`)."""
    from curation.selection.annotate import annotate
    from curation.selection.apply import apply_recipe
    from curation.selection.baselines import baseline_ids, random_baseline
    from curation.validation.verdicts import RANDOM_BASELINES

    df = table.reset_index(drop=True)
    resp = df.set_index("example_id")["n_response_tokens"].fillna(0).astype(np.int64)
    out: list[Candidate] = []
    single = len(sels) == 1
    for sel in sels:
        rows, recipe = sel.rows_in(df), sel.recipe()
        own = rows["example_id"].tolist()
        # The eligible rows: thresholds, scored, and the recipe's dedup/decontamination if any.
        annotated = annotate(run, df, recipe) if run is not None else df
        redraw = cfg.draws if recipe.method == "random" and cfg.draws != "fixed" else None
        if redraw:
            offset = 0 if redraw == "coupled" else INDEPENDENT_STREAM
            pick = lambda s, r=recipe, a=annotated, o=offset: (  # noqa: E731
                apply_recipe(a, replace(r, seed=s + o), run_kind).rows["example_id"].tolist())
            out.append(Candidate(sel.name, "selection", sel.name, draw=pick, redrawn=redraw))
        else:
            out.append(Candidate(sel.name, "selection", sel.name, draw=lambda s, ids=own: list(ids)))
        base = random_baseline(annotated, recipe, run_kind)
        eligible, kept = base.eligible_mask, base.kept_mask  # the curator's decisions, as the selection applied them
        wanted = {str(d): (len(g), int(resp.loc[g["example_id"]].sum())) for d, g in rows.groupby("domain")}
        for b in cfg.baseline_list():
            name = b if single else f"{b}@{sel.name}"
            draw = lambda s, b=b: baseline_ids(b, df, eligible, wanted, s, kept)  # noqa: E731
            c = Candidate(name, b, sel.name, draw=draw, once=b == "full",
                          own=set(own) if b in RANDOM_BASELINES and not redraw else None)
            if b == "natural":
                c.note = natural_note(c, annotated, recipe, eligible, kept, len(rows), run_kind)
            out.append(c)
    return out


def natural_note(c: Candidate, table, recipe, eligible, kept, n: int, run_kind) -> str | None:
    """What keeps the ``natural`` baseline ``c`` (``n`` examples) off the pool's natural mix, or
    None: a domain short of eligible examples (and what left them out), kept examples counted
    inside its size."""
    from fractions import Fraction

    from curation.selection.allocation import largest_remainder
    from curation.selection.apply import domain_funnel
    from curation.selection.baselines import natural_quota

    domain = table["domain"].astype(str).to_numpy()
    pool = sorted(set(domain.tolist()))
    want = largest_remainder(n, {d: Fraction(int((domain == d).sum()), len(domain)) for d in pool})
    got = {d: k for d, (k, _) in natural_quota(domain, eligible, n, kept).items()}
    why = []
    for d in pool:
        cap, held = int((eligible & (domain == d)).sum()), int((kept & (domain == d)).sum()) if kept is not None else 0
        if got.get(d, 0) < want[d] and cap < want[d]:
            why.append(f"domain {d} has {cap} eligible examples ({domain_funnel(table, recipe, d, run_kind)}) for its "
                       f"{want[d]}")
        elif got.get(d, 0) > want[d] and held > want[d]:
            why.append(f"the {held} kept {d} examples count inside its {n}")
    if not why:
        return None
    shown = lambda m: ", ".join(f"{d} {m.get(d, 0)}" for d in pool)  # noqa: E731
    return (f"{c.name} is not at the pool's natural mix ({shown(got)} examples instead of {shown(want)}): "
            + "; ".join(why))
