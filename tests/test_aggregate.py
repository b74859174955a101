"""The dashboard's aggregations (curation.views.aggregate) and conversation HTML (curation.views.render): exact on toy tables, small outputs on 1M rows."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from curation.views import aggregate

from curation.views import render


def _toy():
    return pd.DataFrame({
        "example_id": list("abcdef"), "domain": ["chat"] * 3 + ["math"] * 3,
        "davir": [0.1, 0.2, 0.3, 0.4, 0.5, np.nan], "rho": [3.0, 2.0, 1.0, 0.5, 0.4, 0.3],
        "n_response_tokens": [10, 20, 30, 40, 50, 60],
    })


def test_histogram_counts_per_domain_on_shared_edges():
    df = _toy().assign(davir=[1.0, 2.0, 3.0, 4.0, 5.0, np.nan])  # edges 1, 2, 3, 4, 5 exactly
    h = aggregate.histogram(df, "davir", bins=4, clip_quantiles=None)
    assert h.groupby("group")["count"].sum().to_dict() == {"chat": 3, "math": 2}  # NaN left out
    assert (h[h.group == "chat"]["left"].to_numpy() == h[h.group == "math"]["left"].to_numpy()).all()
    assert h[h.group == "chat"]["count"].tolist() == [1, 1, 1, 0]
    assert h[h.group == "math"]["count"].tolist() == [0, 0, 0, 2]


def test_disagreement_uses_each_scores_direction():
    d = aggregate.disagreement(_toy(), "davir", "rho", n=2)
    # davir likes e (0.5) best, rho ranks e near the bottom: the largest disagreement.
    assert d["example_id"].iloc[0] in ("a", "e")
    assert set(d["example_id"]) == {"a", "e"}
    assert d.loc[d.example_id == "e", "rank_diff"].item() < 0


def test_directions_agree_with_the_selection_methods():
    from curation.scores import SCORES, keeps_high

    # Every ranking method's name and column sort the way its selection keeps by default.
    for name, info in SCORES.items():
        if info.order:
            assert keeps_high(name) == (info.order == "high"), name
            assert keeps_high(info.column) == (info.order == "high"), info.column
    assert keeps_high("loss") and keeps_high("ifd") and not keeps_high("ppl_base")
    # loss keeps the hardest examples and ppl the easiest: their ranks are exact mirror images.
    df = _toy().assign(loss=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], ppl_base=np.exp([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    r_loss = aggregate.percentile_rank(df["loss"], keeps_high("loss"))
    r_ppl = aggregate.percentile_rank(df["ppl_base"], keeps_high("ppl_base"))
    assert np.allclose(r_loss + r_ppl, 1 + 1 / 6)


def test_correlation_and_summary():
    c = aggregate.correlation(_toy(), "n_response_tokens", "rho").set_index("group")
    assert c.loc["chat", "spearman"] == -1.0 and c.loc["all", "n"] == 6
    s = aggregate.domain_summary(_toy(), ["davir"])
    assert s.loc["chat", "examples"] == 3 and s.loc["all", "davir mean"] == 0.3


def test_conversation_html_escapes_every_piece_of_text():
    probe = '<img src=x onerror=alert(1)><script>alert(2)</script>'
    msgs = [{"role": "user", "content": probe}, {"role": "assistant", "content": probe}]
    html = render.conversation_html(msgs, pieces=[probe, "&ok"], values=[1.0, 2.0], positions=[5, 6])
    assert "<img" not in html and "<script" not in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") == 2 and "&amp;ok" in html


def test_token_pieces_rebuild_the_decoded_text(tiny_tokenizer):
    text = "Natalia sold 48 clips — half as many in May ✓"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = render.token_pieces(tiny_tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tiny_tokenizer.decode(ids)


def test_cluster_trajectories_means_and_sizes():
    df = pd.DataFrame({"domain": ["chat", "chat", "math"], "s2l_cluster": [0, 0, 1],
                       "loss_ckpt_0": [2.0, 4.0, 1.0], "loss_ckpt_1": [1.0, 3.0, 0.5]})
    traj, sizes = aggregate.cluster_means(df)
    assert traj[(traj.cluster == 0) & (traj.checkpoint == 1)]["loss"].item() == 2.0
    assert sizes.set_index("cluster")["size"].to_dict() == {0: 2, 1: 1}


def test_aggregations_stay_small_and_fast_on_a_million_rows():
    n = 1_000_000
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "example_id": np.char.add("id", np.arange(n).astype(str)),
        "domain": np.where(rng.random(n) < 0.5, "chat", "math"),
        "davir": rng.normal(0.2, 0.1, n), "rho": rng.normal(1, 0.5, n), "loss_base": rng.normal(2, 0.5, n),
        "loss_ref": rng.normal(1.5, 0.5, n), "n_response_tokens": rng.integers(1, 2000, n),
        "s2l_cluster": rng.integers(0, 100, n), "loss_ckpt_0": rng.random(n), "loss_ckpt_1": rng.random(n),
    })
    t0 = time.time()
    h = aggregate.histogram(df, "davir", bins=60)
    s = aggregate.sample_rows(df, 4000, columns=["davir", "n_response_tokens", "domain"])
    c = aggregate.correlation(df, "n_response_tokens", "rho")
    summ = aggregate.domain_summary(df)
    traj, sizes = aggregate.cluster_means(df)
    dis = aggregate.disagreement(df, "davir", "rho", 20)
    elapsed = time.time() - t0
    print(f"\n1M rows: histogram + sample + correlation + summary + S2L + disagreement in {elapsed:.2f}s")
    # What goes to the browser is bounded, whatever the pool size.
    assert len(h) == 120 and len(s) == 4000 and len(c) == 3 and len(summ) == 3
    assert len(traj) == 200 and len(sizes) == 100 and len(dis) == 20
    assert int(h["count"].sum()) == n
    assert elapsed < 60  # generous for a shared 2-core machine; typically a few seconds


def test_map_previews_escape_markup_but_not_quotes():
    assert render.hover_text('He said "hi" & <b>left</b>') == 'He said "hi" &amp; &lt;b&gt;left&lt;/b&gt;'
