"""Baselines: one random baseline for the Select page, summaries and validate; the others match
the selection's examples, tokens or lengths."""

from __future__ import annotations

import numpy as np

from curation.selection.apply import apply_recipe
from curation.selection.baselines import baseline_ids, baseline_positions, random_baseline
from curation.selection.recipe import Recipe
from tests.synthetic import table_of


def test_baselines_match_counts_tokens_and_lengths():
    resp = np.array([5, 50, 10, 30, 20, 40, 15, 25])
    ids = np.array([f"e{i}" for i in range(8)])
    assert len(baseline_positions("random", ids, resp, 3, 0, 0, "d")) == 3
    assert baseline_positions("random", ids, resp, 3, 0, 0, "d").tolist() == \
        baseline_positions("random", ids, resp, 3, 0, 0, "d").tolist()
    assert baseline_positions("random", ids, resp, 3, 0, 0, "d").tolist() != \
        baseline_positions("random", ids, resp, 3, 0, 1, "d").tolist()
    assert sorted(baseline_positions("longest", ids, resp, 3, 0, 0, "d").tolist()) == [1, 3, 5]
    undershoots = overshoots = 0
    for seed in range(20):
        got = baseline_positions("random-tokens", ids, resp, 0, 60, seed, "d")
        # The seeded order is the same whatever the target: asked for every token, it is the whole order.
        order = baseline_positions("random-tokens", ids, resp, 0, int(resp.sum()), seed, "d")
        assert sorted(order.tolist()) == list(range(8))
        sums = np.cumsum(resp[order])  # sums[j]: the tokens of the first j + 1 examples
        gap = np.abs(sums - 60)
        # The prefix whose tokens come closest to 60 (the shorter one on a tie), above or below it.
        assert got.tolist() == order[: int(np.argmin(gap)) + 1].tolist(), (seed, sums.tolist())
        undershoots += int(sums[len(got) - 1] < 60)
        overshoots += int(sums[len(got) - 1] > 60)
    assert undershoots and overshoots  # both sides are exercised by these seeds
    assert len(baseline_positions("full", ids, resp, 0, 0, 0, "d")) == 8


def test_validates_random_baseline_is_the_select_pages_random_baseline(run_dir):
    """One random baseline: validate's ``random`` candidate for a selection with k examples per
    domain is the same sample as the recipe's random baseline at that budget and seed."""
    table = table_of(run_dir)
    for seed in (0, 7):
        recipe = Recipe("davir", budget="12", mix="chat=0.5,math=0.5", max={"ifd": 1.1}, seed=seed)
        sel = apply_recipe(table, recipe)
        base = random_baseline(table, recipe)
        wanted = {d: (len(g), 0) for d, g in sel.rows.groupby("domain")}
        got = baseline_ids("random", table, base.eligible_mask, wanted, seed)
        assert sorted(got) == sorted(base.rows["example_id"])
        assert len(got) == 12


def test_the_natural_baseline_uses_the_pools_proportions_whatever_the_selections_mix(run_dir):
    table = table_of(run_dir)  # 40 math + 30 chat: natural 4/7 math
    for mix in ("chat=1,math=0", "chat=0.2,math=0.8"):
        recipe = Recipe("random", budget="14", mix=mix, seed=3)
        sel = apply_recipe(table, recipe)
        wanted = {d: (len(g), 0) for d, g in sel.rows.groupby("domain")}
        got = baseline_ids("natural", table, sel.eligible_mask, wanted, seed=5)
        by_domain = table.set_index("example_id").loc[got, "domain"].value_counts().to_dict()
        assert by_domain == {"math": 8, "chat": 6}
        # The same sample as the random baseline of a natural recipe of that size and seed.
        natural = random_baseline(table, Recipe("random", budget="14", mix="natural", fill=True, seed=5))
        assert sorted(got) == sorted(natural.rows["example_id"])
        # A new sample per seed.
        assert sorted(baseline_ids("natural", table, sel.eligible_mask, wanted, seed=6)) != sorted(got)


def test_the_natural_baseline_counts_kept_examples_inside_its_size(run_dir):
    """Issue 30, item 1 (validate's share): kept examples beyond a domain's natural part were added
    on top, so the natural baseline trained on more examples than the selection it is compared with."""
    from curation.selection.baselines import natural_quota

    table = table_of(run_dir)  # 40 math + 30 chat: 10 examples are 4 chat + 6 math at the natural mix
    domain = table["domain"].astype(str).to_numpy()
    eligible = np.ones(len(table), dtype=bool)
    kept = np.zeros(len(table), dtype=bool)
    kept[np.flatnonzero(domain == "chat")[:6]] = True
    assert natural_quota(domain, eligible, 10) == {"chat": (4, 0), "math": (6, 0)}
    assert natural_quota(domain, eligible, 10, kept) == {"chat": (6, 0), "math": (4, 0)}
    got = baseline_ids("natural", table, eligible, {"chat": (7, 0), "math": (3, 0)}, seed=1, kept=kept)
    assert len(got) == 10 and set(table.loc[kept, "example_id"]) <= set(got)
