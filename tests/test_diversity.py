"""Diversity pickers over embeddings: k-center, cluster balancing, coverage; and select --diversity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.selection.diversity import (
    DiversityError, balanced_topk, cluster_balanced, coverage, kcenter, kmeans_labels, water_fill,
)
from curation.selection.pickers import rank_order


def make_ids(n: int, rng=None) -> np.ndarray:
    ids = np.array([f"ex{i:05d}" for i in range(n)])
    return ids if rng is None else ids[rng.permutation(n)]


# ----------------------------------------------------------------------------------------------
# k-center


def naive_kcenter(emb, scores, ids, k, weight=0.0, order="high"):
    """Textbook farthest-first traversal (float64), the reference for the blocked implementation."""
    from curation.selection.diversity import _rank_unit

    canon = rank_order(scores, ids, order)
    x = emb[canon].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mult = 1 + weight * _rank_unit(scores[canon], order)
    dist = np.full(len(x), np.inf)
    taken = np.zeros(len(x), dtype=bool)
    out, cur = [0], 0
    for _ in range(k - 1):
        dist = np.minimum(dist, np.sqrt(np.maximum(2 - 2 * x @ x[cur], 0)))
        taken[cur] = True
        cur = int(np.argmax(np.where(taken, -1, dist * mult)))
        out.append(cur)
    return canon[np.array(out)]


@pytest.mark.parametrize("n,d,k,weight,candidates,batch", [
    (400, 16, 60, 0.0, 32, 8), (1500, 32, 300, 0.5, 128, 64), (2000, 8, 800, 2.0, 256, 512),
    (1200, 64, 200, 0.0, 4096, 512),
])
def test_kcenter_equals_textbook_farthest_first(n, d, k, weight, candidates, batch):
    rng = np.random.default_rng(n + k)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    scores, ids = rng.standard_normal(n), make_ids(n, rng)
    got = kcenter(emb, scores, ids, k, weight=weight, candidates=candidates, max_batch=batch)
    assert got.tolist() == naive_kcenter(emb, scores, ids, k, weight).tolist()


def planted_clusters(n_clusters, per, d, rng, sep=10.0, noise=0.3):
    centres = rng.standard_normal((n_clusters, d)) * sep
    labels = np.repeat(np.arange(n_clusters), per)
    return centres[labels] + noise * rng.standard_normal((len(labels), d)), labels


def test_kcenter_covers_every_planted_cluster():
    rng = np.random.default_rng(7)
    emb, labels = planted_clusters(25, rng.integers(5, 200, 25), 48, rng)
    n = len(labels)
    scores, ids = rng.standard_normal(n), make_ids(n, rng)
    got = kcenter(emb.astype(np.float16), scores, ids, 25)
    assert got[0] == rank_order(scores, ids, "high")[0]  # seeded by the top-scored example
    assert sorted(set(labels[got].tolist())) == list(range(25))  # k == clusters: one each
    assert coverage(labels[kcenter(emb, scores, ids, 40)], labels) == 1.0
    # plain top-k of the same size misses clusters
    assert coverage(labels[rank_order(scores, ids, "high")[:25]], labels) < 1.0


def test_kcenter_weight_prefers_better_scores_at_equal_distance():
    # Seed at the origin direction; four rows equally far from it; the weight decides by score.
    emb = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, -1, 0, 0], [0, 0, 1, 0], [0, 0, -1, 0]], dtype=np.float32)
    scores = np.array([9.0, 1.0, 2.0, 4.0, 3.0])
    ids = make_ids(5)
    assert kcenter(emb, scores, ids, 2, weight=1.0).tolist() == [0, 3]
    assert kcenter(emb, scores, ids, 2, weight=0.0).tolist() == [0, 3]  # tie -> better score first
    assert kcenter(emb, -scores, ids, 2, weight=1.0, order="low").tolist() == [0, 3]
    # duplicates: once everything is covered, the rest go by score
    dup = np.repeat(emb[:1], 4, axis=0)
    assert kcenter(dup, np.array([1.0, 3.0, 2.0, 0.0]), make_ids(4), 4).tolist() == [1, 2, 0, 3]


def test_kcenter_is_row_order_free_and_validates():
    rng = np.random.default_rng(8)
    emb = rng.standard_normal((300, 12))
    scores, ids = rng.standard_normal(300), make_ids(300)
    perm = rng.permutation(300)
    a = ids[kcenter(emb, scores, ids, 30)]
    b = ids[perm][kcenter(emb[perm], scores[perm], ids[perm], 30)]
    assert a.tolist() == b.tolist()
    assert kcenter(emb, scores, ids, 0).tolist() == []
    assert len(kcenter(emb, scores, ids, 1000)) == 300
    with pytest.raises(DiversityError, match="embeddings"):
        kcenter(emb[:-1], scores, ids, 3)
    with pytest.raises(DiversityError, match="weight"):
        kcenter(emb, scores, ids, 3, weight=-1)
    with pytest.raises(DiversityError, match="NaN"):
        kcenter(np.where(emb > 2, np.nan, emb), scores, ids, 3)


# ----------------------------------------------------------------------------------------------
# Cluster-balanced top-k, coverage


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=15), frac=st.floats(0, 1.2))
def test_water_fill_places_the_budget_and_balances(sizes, frac):
    k = int(frac * sum(sizes))
    take = water_fill(sizes, k)
    assert take.sum() == min(k, sum(sizes)) and (take <= np.array(sizes)).all()
    for g in range(len(sizes)):
        if take[g] < sizes[g]:  # not taken whole: got at least as much as any other group - 1
            assert all(take[g] >= take[o] - 1 for o in range(len(sizes)))


def test_balanced_topk_takes_the_best_in_each_group():
    labels = np.array([0] * 3 + [1] * 10 + [2] * 20)
    rng = np.random.default_rng(9)
    scores, ids = rng.standard_normal(33), make_ids(33, rng)
    got = balanced_topk(labels, scores, ids, 15)
    assert np.bincount(labels[got]).tolist() == [3, 6, 6]
    for g in (1, 2):
        rows = np.flatnonzero(labels == g)
        assert set(got[labels[got] == g].tolist()) == set(rows[rank_order(scores[rows], ids[rows], "high")[:6]].tolist())


def test_cluster_balanced_covers_clusters_and_is_deterministic():
    rng = np.random.default_rng(10)
    sizes = np.array([400, 200, 100, 50, 20, 10, 5, 5])
    emb, truth = planted_clusters(8, sizes, 32, rng)
    n = len(truth)
    ids = make_ids(n, rng)
    scores = np.where(truth == 0, 5.0, 0.0) + rng.standard_normal(n)  # cluster 0 scores best
    got = cluster_balanced(emb, scores, ids, 40, n_clusters=8, seed=0)
    assert len(got) == 40 and coverage(truth[got], truth) == 1.0
    assert coverage(truth[rank_order(scores, ids, "high")[:40]], truth) < 0.5  # top-k: one cluster
    labels = kmeans_labels(emb, ids, 8, seed=0)
    assert np.bincount(labels).tolist() == sorted(sizes.tolist(), reverse=True)  # largest first
    perm = rng.permutation(n)
    again = cluster_balanced(emb[perm], scores[perm], ids[perm], 40, n_clusters=8, seed=0)
    assert sorted(ids[got].tolist()) == sorted(ids[perm][again].tolist())
    assert cluster_balanced(emb, scores, ids, 40, n_clusters=500, seed=0).size == 40  # clusters capped


def test_coverage():
    assert coverage([1, 1, 2], [0, 1, 2, 3, -1]) == 0.5  # -1 (no cluster) is not a cluster
    assert coverage([], [0, 1]) == 0.0
    with pytest.raises(DiversityError, match="no cluster"):
        coverage([0], [-1, -1])


# ----------------------------------------------------------------------------------------------
# select --diversity on a run folder with embeddings


@pytest.fixture
def clustered_run(tmp_path):
    """A run folder (real sources, synthetic scores) whose embeddings.npy plants 6 clusters per
    domain, and whose best scores all sit in one cluster."""
    from curation.runs.folder import Run
    from tests.conftest import write_jsonl
    from tests.synthetic import make_run, table_of

    math = write_jsonl(tmp_path / "m.jsonl", [{"question": f"What is {k} + 1?", "answer": f"#### {k + 1}"} for k in range(90)])
    chat = write_jsonl(tmp_path / "c.jsonl", [{"instruction": f"Tell me about item {k}.", "input": "", "output": f"Item {k}."}
                                             for k in range(60)])
    run = make_run(tmp_path / "run", [f"math={math}", f"chat={chat}"])
    t = table_of(run)
    rng = np.random.default_rng(0)
    truth = rng.permutation(np.arange(len(t)) % 6)  # (n,) planted cluster of each row
    emb = np.eye(6, 24)[truth] * 10 + 0.3 * rng.standard_normal((len(t), 24))  # well apart
    t["davir"] = np.where(truth == 0, 5.0, 0.0) + rng.standard_normal(len(t))
    t.to_parquet(run / "scores.parquet", index=False)
    ids = t["example_id"].tolist()
    Run(run).write_embeddings(ids, {i: {"embedding": emb[j].astype(np.float16).tobytes(), "n_tokens": 1}
                                    for j, i in enumerate(ids)})
    return run, dict(zip(ids, truth))


@pytest.mark.parametrize("diversity", ["kcenter", "clusters:6"])
def test_select_diversity_covers_every_planted_cluster(clustered_run, tmp_path, capsys, diversity):
    import json

    import pandas as pd

    from curation.cli import main

    run, truth = clustered_run
    out = tmp_path / "sel"
    assert main(["select", str(run), "--method", "davir", "--budget", "12", "--mix", "chat=0.5,math=0.5",
                 "--diversity", diversity, "--out", str(out)]) == 0
    assert f"Diversity {diversity}: embedding clusters covered" in capsys.readouterr().out
    sel = pd.read_parquet(out / "selected.parquet")
    summary = json.loads((out / "summary.json").read_text())
    for d, g in sel.groupby("domain"):
        assert len(g) == 6 and {truth[i] for i in g["example_id"]} == set(range(6))  # every cluster
        cov = summary["diversity"]["by_domain"][d]
        assert cov["coverage"] == 1.0 and cov["top_k_coverage"] < 0.5  # top-k stays in the best cluster
    assert summary["recipe"]["diversity"] == diversity
    assert main(["select", str(run), "--method", "davir", "--budget", "12", "--mix", "chat=0.5,math=0.5",
                 "--out", str(tmp_path / "top")]) == 0
    top = pd.read_parquet(tmp_path / "top" / "selected.parquet")
    assert len({truth[i] for i in top["example_id"]}) < 6  # plain top-k misses clusters


def test_diversity_recipe_validation():
    from curation.selection.recipe import Recipe, SelectionError

    for kw, msg in [({"diversity": "clusters:1"}, "N >= 2"), ({"diversity": "pca"}, "kcenter or clusters:N"),
                    ({"diversity": "kcenter", "stratify": "length:3"}, "leave out --stratify"),
                    ({"diversity": "kcenter", "budget": "100tok"}, "not tokens")]:
        with pytest.raises(SelectionError, match=msg):
            Recipe("davir", **kw)
    with pytest.raises(SelectionError, match="ranking method"):
        Recipe("random", diversity="kcenter")
    assert Recipe("davir", diversity=" clusters : 8 ").diversity_clusters == 8


def test_select_diversity_on_a_run_without_embeddings_says_what_to_do(clustered_run, tmp_path, capsys):
    from curation.cli import main

    run, _ = clustered_run
    (run / "embeddings.npy").unlink()
    assert main(["select", str(run), "--method", "davir", "--diversity", "kcenter", "--out", str(tmp_path / "s")]) == 2
    assert "score the data again into a new folder" in capsys.readouterr().err
