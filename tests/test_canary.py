"""Canaries: planted defects with known truth, and how well a score ranks them below clean examples."""

from __future__ import annotations

import json

import pytest

from curation.data.canary import KINDS, REFUSALS, CanaryConfig, final_answer_span, plant, read_truth, split_counts
from curation.data.load import load_sources, parse_source_arg
from tests.conftest import write_jsonl


@pytest.fixture
def pool(tmp_path):
    math = write_jsonl(tmp_path / "math.jsonl", [
        {"question": f"Tom has {k} apples and buys {k + 3} more. How many apples does he have now?",
         "answer": f"He starts with {k} apples.\nHe buys {k + 3} more, so {k} + {k + 3} = {2 * k + 3}.\n#### {2 * k + 3}"}
        for k in range(50)])
    chat = tmp_path / "chat.json"  # another file type and record shape: the copy keeps the shape
    chat.write_text(json.dumps([
        {"instruction": f"Write a sentence about fox number {k}.", "input": "",
         "output": f"Fox number {k} is a quick brown fox that jumps over the lazy dog every morning."} for k in range(40)]))
    conv = write_jsonl(tmp_path / "conv.jsonl", [
        {"messages": [{"role": "user", "content": f"Hi {k}"}, {"role": "assistant", "content": f"Hello {k}, how are you today?"},
                      {"role": "user", "content": "Tell me a fact."},
                      {"role": "assistant", "content": f"Octopuses have three hearts and {k} arms in this story."}]}
        for k in range(30)])
    return [f"math={math}", f"chat={chat}", f"conv={conv}"]


def _answers(folder, truth):
    """The last answer of every record of the canary pool, by its example id."""
    files = sorted({s for s in truth["source"]})
    data = load_sources([parse_source_arg(str(folder / f)) for f in files])
    return {e.example_id: [m["content"] for m in e.messages if m["role"] == "assistant"][-1] for e in data.examples}, data


def test_each_kind_corrupts_exactly_its_share_per_domain_reproducibly(tmp_path, pool):
    out = plant(CanaryConfig(sources=pool, out=str(tmp_path / "c1"), rate=0.2, seed=3))
    m = json.loads((out / "canary.json").read_text())
    truth = read_truth(out)
    for domain, n in (("math", 50), ("chat", 40), ("conv", 30)):
        t = truth[truth["domain"] == domain]
        assert len(t) == n and (t["kind"] != "clean").sum() == round(0.2 * n) == m["counts"][domain]["corrupted"]
    # Math answers all have a final answer: every kind takes exactly its part (10 = 2 per kind).
    got = truth[truth["domain"] == "math"]["kind"].value_counts().to_dict()
    assert {k: got.get(k, 0) for k in KINDS} == split_counts(10, list(KINDS)) == {k: 2 for k in KINDS}
    # Chat answers have no final-answer marker: wrong-number corrupts none, the others take its part.
    chat = truth[truth["domain"] == "chat"]["kind"].value_counts().to_dict()
    assert chat.get("wrong-number", 0) == 0 and sum(v for k, v in chat.items() if k != "clean") == 8
    assert any("chat: wrong-number could corrupt 0 of its 2" in w for w in m["warnings"])
    # The same seed gives the same files; another seed other picks.
    again = plant(CanaryConfig(sources=pool, out=str(tmp_path / "c2"), rate=0.2, seed=3))
    for f in ("math.jsonl", "chat.jsonl", "conv.jsonl", "canary_truth.jsonl"):
        assert (out / f).read_bytes() == (again / f).read_bytes()
    other = read_truth(plant(CanaryConfig(sources=pool, out=str(tmp_path / "c3"), rate=0.2, seed=4)))
    assert set(other.loc[other["kind"] != "clean", "original_example_id"]) != \
        set(truth.loc[truth["kind"] != "clean", "original_example_id"])
    # Only the kinds asked for are planted.
    few = read_truth(plant(CanaryConfig(sources=pool, out=str(tmp_path / "c4"), rate=0.1, kinds="refusal,swap")))
    assert set(few["kind"]) == {"clean", "refusal", "swap"}


def test_the_truth_file_matches_the_records_and_every_record_still_loads(tmp_path, pool):
    before = load_sources([parse_source_arg(s) for s in pool])
    original = {e.example_id: [m["content"] for m in e.messages if m["role"] == "assistant"][-1] for e in before.examples}
    first_turns = {e.example_id: e.messages[:-1] for e in before.examples}
    out = plant(CanaryConfig(sources=pool, out=str(tmp_path / "c"), rate=0.3, seed=0))
    truth = read_truth(out)
    answers, data = _answers(out, truth)
    assert not data.rejected and len(data.examples) == len(before.examples) == len(truth)
    assert [s.format for s in data.sources] == ["alpaca", "messages", "gsm8k"]  # chat.json -> chat.jsonl, same shape
    by_id = {e.example_id: e for e in data.examples}
    for t in truth.itertuples():
        new, old = answers[t.example_id], original[t.original_example_id]
        assert by_id[t.example_id].messages[:-1] == first_turns[t.original_example_id]  # only the last answer changes
        if t.kind == "clean":
            assert t.example_id == t.original_example_id and new == old
            continue
        assert t.example_id != t.original_example_id and new != old
        if t.kind == "truncate":
            kept, words = len(new.split()), len(old.split())
            assert old.startswith(new) and 0.2 * words - 1 <= kept <= 0.5 * words
        elif t.kind == "swap":
            partner = t.detail.split()[-1]
            assert new == original[partner] and truth.set_index("original_example_id").loc[partner, "domain"] == t.domain
        elif t.kind == "wrong-number":
            a, _ = final_answer_span(old)
            assert new[:a] == old[:a] and new[a:] != old[a:]  # the reasoning is kept, the final answer is not
        elif t.kind == "refusal":
            assert new in REFUSALS
        elif t.kind == "shuffle-words":
            assert sorted(new.split()) == sorted(old.split())


def test_bad_settings_get_one_clear_line(tmp_path, pool, capsys):
    from curation.cli import main

    for args, msg in ((["--rate", "1.5"], "rate must be a share between 0 and 1"),
                      (["--kinds", "swap,typo"], "kinds 'swap,typo': expected a comma-separated list of swap")):
        assert main(["canary", *pool, "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["canary", *pool, "--out", str(tmp_path / "mine")]) == 2
    assert "does not hold a previous canary pool" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert main(["canary", *pool, "--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "math: 10 of 50 examples corrupted" in out and "python -m curation learn math=" in out


def test_a_canary_pool_is_never_written_over_its_own_source(tmp_path, pool, capsys):
    """Issue 30 #10: canary c/math.jsonl --out c replaced its input and the earlier truth (its defects
    became 'clean')."""
    from curation.cli import main

    out = plant(CanaryConfig(sources=pool[:2], out=str(tmp_path / "c"), rate=0.2, seed=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for out_arg in (str(out), str(out / "."), str(tmp_path)):
        assert main(["canary", f"math={out / 'math.jsonl'}", "--out", out_arg, "--seed", "2"]) == 2
        err = capsys.readouterr().err
        assert "math.jsonl is inside --out" in err and "would replace its own source" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_source_whose_rows_all_duplicate_another_gets_no_empty_copy_nor_a_place_in_learn(tmp_path, pool, capsys):
    """Issue 30 #11: such a source was written as an empty file, and the printed learn command failed on it."""
    from curation.cli import main

    math = pool[0].split("=", 1)[1]
    again = tmp_path / "again.jsonl"
    again.write_bytes(open(math, "rb").read())  # every row a duplicate of math.jsonl's
    assert main(["canary", pool[0], f"again={again}", "--out", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    assert "again.jsonl: none of its 50 record(s) is in the pool" in err
    assert not (tmp_path / "c" / "again.jsonl").exists()
    m = json.loads((tmp_path / "c" / "canary.json").read_text())
    assert [s["file"] for s in m["sources"]] == ["math.jsonl", None] and "again" not in m["learn_with"]
    learn_sources = m["learn_with"].split()[4:]  # python -m curation learn DOMAIN=PATH ...
    assert learn_sources and all(load_sources([parse_source_arg(s)]).examples for s in learn_sources)
    assert "again" not in out.split("score it:")[1]


def test_a_pair_pool_gets_chosen_and_rejected_swapped_and_the_truth_maps_the_new_pair_ids(tmp_path):
    """``canary`` on preference pairs: 20% of each domain's pairs with chosen and rejected exchanged
    (ratings kept in their places), every pair written as a TRL row that loads back; a swapped
    pair's id is another (ids are order-sensitive) and the truth is keyed by it, with the original."""
    from curation.data.load import parse_source_arg
    from curation.data.pairs import load_pairs
    from tests.synthetic import write_pair_sources

    src = write_pair_sources(tmp_path / "pool", n_chat=20, n_math=15)
    before = {p.pair_id: p for p in load_pairs([parse_source_arg(s) for s in src]).pairs}
    out = plant(CanaryConfig(sources=src, out=str(tmp_path / "c"), rate=0.2, seed=3))
    m = json.loads((out / "canary.json").read_text())
    assert m["kinds"] == ["swapped"] and m["data"] == "pairs"
    assert {d: (c["examples"], c["swapped"]) for d, c in m["counts"].items()} == {"chat": (20, 4), "math": (15, 3)}
    truth = read_truth(out)
    after = {p.pair_id: p for p in load_pairs([parse_source_arg(s) for s in m["learn_with"].split()[4:]]).pairs}
    assert set(after) == set(truth["example_id"]) and len(after) == len(before)
    for t in truth.itertuples():
        old, new = before[t.original_example_id], after[t.example_id]
        assert new.prompt == old.prompt and new.rating_chosen == old.rating_chosen
        if t.kind == "swapped":
            assert (new.chosen, new.rejected) == (old.rejected, old.chosen) and t.example_id != t.original_example_id
        else:
            assert t.kind == "clean" and t.example_id == t.original_example_id
    again = plant(CanaryConfig(sources=src, out=str(tmp_path / "c2"), rate=0.2, seed=3))
    assert read_truth(again).equals(truth)  # seeded
    with pytest.raises(ValueError, match="one kind planted in pairs is swapped"):
        plant(CanaryConfig(sources=src, out=str(tmp_path / "c3"), kinds="truncate"))
