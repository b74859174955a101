"""Preference pairs as data: every format on real records, each rejection reason, ids, kinds, round trips."""

import csv
import json

import pytest

from curation.data.load import RecordError, SourceError, SourceSpec, example_id, load_sources
from curation.data.pair_formats import detect_pair_format
from curation.data.pairs import (
    Pair, load_pairs, pair_id, record_kind, run_kind, source_kind, trl_row,
)
from tests.conftest import SHARED_DATA, write_jsonl

DPO_DEMO = SHARED_DATA / "dpo_en_demo" / "dpo_en_demo.json"


def msgs(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def conv(*turns):
    return msgs(*turns)


# One record of each shape, and the pair it must read as: (format, record, prompt, chosen, rejected).
SHAPES = [
    ("trl-standard", {"prompt": "2+2?", "chosen": "4", "rejected": "5"}, msgs(("user", "2+2?")), "4", "5"),
    ("trl-conversational",
     {"prompt": msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Name a colour")),
      "chosen": msgs(("assistant", "Blue")), "rejected": msgs(("assistant", "Seven"))},
     msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Name a colour")), "Blue", "Seven"),
    ("trl-implicit",
     {"chosen": conv(("user", "Sky colour?"), ("assistant", "It is blue.")),
      "rejected": conv(("user", "Sky colour?"), ("assistant", "It is green."))},
     msgs(("user", "Sky colour?")), "It is blue.", "It is green."),
    ("anthropic-hh",
     {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Recommend a book\n\nAssistant: Dune, by Frank Herbert.",
      "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Recommend a book\n\nAssistant: No."},
     msgs(("user", "Hi"), ("assistant", "Hello!"), ("user", "Recommend a book")), "Dune, by Frank Herbert.", "No."),
    ("llamafactory-ranking",
     {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                        {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Thanks"}],
      "chosen": {"from": "gpt", "value": "You are welcome."}, "rejected": {"from": "gpt", "value": "Whatever."}},
     msgs(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Thanks")),
     "You are welcome.", "Whatever."),
    ("alpaca-ranking",
     {"instruction": "Translate to French", "input": "cat", "chosen": "chat", "rejected": "chien"},
     msgs(("user", "Translate to French\n\ncat")), "chat", "chien"),
    ("ultrafeedback",
     {"prompt": "Capital of France?", "prompt_id": "abc", "messages": conv(("user", "Capital of France?"),
                                                                            ("assistant", "Paris.")),
      "chosen": conv(("user", "Capital of France?"), ("assistant", "Paris.")),
      "rejected": conv(("user", "Capital of France?"), ("assistant", "Lyon.")),
      "score_chosen": 8.5, "score_rejected": 3.0},
     msgs(("user", "Capital of France?")), "Paris.", "Lyon."),
]


@pytest.mark.parametrize("fmt, record, prompt, chosen, rejected", SHAPES, ids=[s[0] for s in SHAPES])
def test_every_format_is_detected_and_read(tmp_path, fmt, record, prompt, chosen, rejected):
    f = write_jsonl(tmp_path / "p.jsonl", [record])
    res = load_pairs([SourceSpec(str(f))])
    assert res.sources[0].format == fmt and not res.rejected
    (pair,) = res.pairs
    assert (pair.prompt, pair.chosen, pair.rejected) == (prompt, chosen, rejected)
    assert pair.pair_id == pair_id(prompt, chosen, rejected) and pair.source_index == 0 and pair.domain == "p"
    assert source_kind(SourceSpec(str(f))) == "pairs"


def test_ultrafeedback_ratings_are_kept_with_their_margin(tmp_path):
    fmt, record, *_ = SHAPES[-1]
    swapped = {**record, "chosen": record["rejected"], "rejected": record["chosen"], "score_chosen": 3,
               "score_rejected": 8.5}
    f = write_jsonl(tmp_path / "uf.jsonl", [record, swapped])
    a, b = load_pairs([SourceSpec(str(f))]).pairs
    assert (a.rating_chosen, a.rating_rejected, a.rating_margin) == (8.5, 3.0, 5.5)
    assert (b.rating_chosen, b.rating_rejected, b.rating_margin) == (3.0, 8.5, -5.5)
    assert a.pair_id != b.pair_id  # swapped chosen and rejected: another pair
    # Ratings from a CSV (cells are text), with other column names.
    with (tmp_path / "r.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows([["question", "good", "bad", "good_score", "bad_score"], ["2+2?", "4", "5", "9", "1.5"]])
    spec = SourceSpec(str(tmp_path / "r.csv"), columns={"prompt": "question", "chosen": "good", "rejected": "bad",
                                                         "score_chosen": "good_score", "score_rejected": "bad_score"})
    res = load_pairs([spec])
    (p,) = res.pairs
    assert res.sources[0].format == "trl-standard"
    assert (p.prompt, p.chosen, p.rejected) == (msgs(("user", "2+2?")), "4", "5")
    assert (p.rating_chosen, p.rating_rejected, p.rating_margin) == (9.0, 1.5, 7.5)
    assert Pair("x", "s", 0, "d", p.prompt, "4", "5").rating_margin is None


GOOD = {"prompt": msgs(("user", "Hi")), "chosen": msgs(("assistant", "Hello")), "rejected": msgs(("assistant", "Go"))}
BAD = [
    ({**GOOD, "rejected": GOOD["chosen"]}, "chosen equals rejected"),
    ({**GOOD, "chosen": msgs(("assistant", "  \n"))}, "empty chosen response"),
    ({**GOOD, "prompt": msgs(("user", "Hi"), ("assistant", "Hello"))},
     "the prompt ends with an assistant turn; a pair's prompt must end with a user turn"),
    ({**GOOD, "prompt": msgs(("user", "Hi"), ("user", "Again"))}, "impossible role order: turn 1 is user"),
    ({**GOOD, "prompt": []}, "field 'prompt' must be a non-empty list of messages"),
    ({**GOOD, "rejected": msgs(("assistant", "a"), ("assistant", "b"))},
     "the rejected response must be one assistant message, got a list of 2"),
    ({**GOOD, "chosen": msgs(("user", "Hello"))}, "the chosen response has the role 'user'"),
    ({**GOOD, "score_chosen": 4}, "score_chosen without score_rejected"),
    ({**GOOD, "score_chosen": 4, "score_rejected": "high"}, "score_rejected is 'high', expected a number"),
    ({"chosen": conv(("user", "A"), ("assistant", "x")), "rejected": conv(("user", "B"), ("assistant", "y"))},
     "no shared prompt: chosen and rejected differ from their first turn"),
    ({"chosen": conv(("user", "A"), ("assistant", "x"), ("user", "more"), ("assistant", "z")),
      "rejected": conv(("user", "A"), ("assistant", "y"))},
     "after their shared prompt of 1 turn(s) the chosen goes on with 3 turn(s) and the rejected with 1"),
    ({"chosen": "\n\nHuman: A\n\nAssistant: x\n\nHuman: B\n\nAssistant: z", "rejected": "\n\nHuman: A\n\nAssistant: y"},
     "after their shared prompt of 1 turn(s) the chosen goes on with 3 turn(s)"),
    ({"chosen": "just a better answer", "rejected": "a worse one"}, "is not an Anthropic HH dialogue"),
    ({"prompt": "Capital of Spain?", "chosen": conv(("user", "Capital of France?"), ("assistant", "Paris.")),
      "rejected": conv(("user", "Capital of France?"), ("assistant", "Lyon."))},
     "the 'prompt' column differs from the user turn"),
    ({"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "Hello"}},
     "no rejected response"),
    ({"text": "neither a pair nor an SFT example"}, "missing field 'prompt'"),
]


@pytest.mark.parametrize("record, reason", BAD, ids=[r for _, r in BAD])
def test_bad_pairs_are_rejected_with_their_reason(tmp_path, record, reason):
    try:  # first a good record of the same format (a source's format is detected on its first record)
        first = {s[0]: s[1] for s in SHAPES}[detect_pair_format(record)]
    except RecordError:
        first = GOOD
    f = write_jsonl(tmp_path / "p.jsonl", [first, record])
    res = load_pairs([SourceSpec(str(f))])
    assert len(res.pairs) + len(res.rejected) == 2 == res.sources[0].n_records  # rows in = pairs + rejected
    (rej,) = res.rejected
    assert (rej.source, rej.source_index, rej.line) == ("p.jsonl", 1, 2)
    assert reason in rej.reason, rej.reason


def test_exact_duplicate_pairs_are_rejected_naming_the_kept_copy(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [GOOD, GOOD])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"chosen": conv(("user", "Hi"), ("assistant", "Hello")),
                                            "rejected": conv(("user", "Hi"), ("assistant", "Go"))}])
    res = load_pairs([SourceSpec(str(a)), SourceSpec(str(b)), SourceSpec(str(c))])
    (kept,) = res.pairs  # the same pair twice, then in two other formats
    assert [(r.source, r.source_index, r.example_id) for r in res.rejected] == [
        ("a.jsonl", 1, kept.pair_id), ("b.jsonl", 0, kept.pair_id), ("c.jsonl", 0, kept.pair_id)]
    assert {r.reason for r in res.rejected} == {f"exact duplicate of pair {kept.pair_id} (a.jsonl #0)"}
    assert [(s.format, s.n_records, s.n_accepted, s.n_rejected) for s in res.sources] == [
        ("trl-conversational", 2, 1, 1), ("trl-standard", 1, 0, 1), ("trl-implicit", 1, 0, 1)]
    assert res.sources[0].fingerprint.startswith("sha256:") and res.rejected_rows()[0]["reason"].startswith("exact")


def test_limit_keeps_the_first_records_of_each_source(tmp_path):
    rows = [{"prompt": f"q{k}", "chosen": "yes", "rejected": "no"} for k in range(5)]
    a, b = write_jsonl(tmp_path / "a.jsonl", rows), write_jsonl(tmp_path / "b.jsonl", rows[::-1])
    res = load_pairs([SourceSpec(str(a)), SourceSpec(str(b))], limit=2)
    assert [(p.source, p.prompt[0]["content"]) for p in res.pairs] == [
        ("a.jsonl", "q0"), ("a.jsonl", "q1"), ("b.jsonl", "q4"), ("b.jsonl", "q3")]
    with pytest.raises(SourceError, match="--limit must be a positive number"):
        load_pairs([SourceSpec(str(a))], limit=0)


def test_a_source_with_no_usable_pair_is_refused(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{**GOOD, "rejected": GOOD["chosen"]}])
    with pytest.raises(SourceError, match=r"p.jsonl: no usable pair among 1 record\(s\); first problem: chosen equals"):
        load_pairs([SourceSpec(str(f))])
    g = write_jsonl(tmp_path / "q.jsonl", [{"text": "neither a pair nor an SFT example"}])
    with pytest.raises(SourceError, match=r"q.jsonl: no usable pair .* first problem: not a preference pair: fields"):
        load_pairs([SourceSpec(str(g))])


def test_columns_rename_and_a_forced_format(tmp_path):
    row = {"q": "2+2?", "good": "4", "bad": "5"}
    f = write_jsonl(tmp_path / "p.jsonl", [row])
    res = load_pairs([SourceSpec(str(f), columns={"prompt": "q", "chosen": "good", "rejected": "bad"})])
    assert res.pairs[0].prompt == msgs(("user", "2+2?")) and (res.pairs[0].chosen, res.pairs[0].rejected) == ("4", "5")
    with pytest.raises(SourceError, match="no column 'answer'"):
        load_pairs([SourceSpec(str(f), columns={"chosen": "answer"})])
    assert source_kind(SourceSpec(str(f), columns={"chosen": "good", "rejected": "bad"})) == "pairs"
    with pytest.raises(SourceError, match="none of its first 1 readable record"):  # without the mapping: neither kind
        source_kind(SourceSpec(str(f)))
    # Forced: an UltraFeedback row read as trl-implicit ignores its prompt string (as TRL does).
    _, uf, *_ = SHAPES[-1]
    g = write_jsonl(tmp_path / "uf.jsonl", [{**uf, "prompt": "something else"}])
    with pytest.raises(SourceError, match="differs from the user turn"):  # detected: ultrafeedback, the row rejected
        load_pairs([SourceSpec(str(g))])
    res = load_pairs([SourceSpec(str(g), format="trl-implicit")])
    assert res.sources[0].format == "trl-implicit" and res.pairs[0].prompt == msgs(("user", "Capital of France?"))
    assert source_kind(SourceSpec(str(g), format="gsm8k")) == "sft"
    with pytest.raises(SourceError, match="--format messages reads SFT examples; preference pairs are read as one of"):
        load_pairs([SourceSpec(str(g), format="messages")])


def test_a_source_mixing_pairs_and_sft_examples_is_refused(tmp_path):
    sft = {"messages": msgs(("user", "Hi"), ("assistant", "Hello"))}
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, {"question": "q", "answer": "a"}, sft])
    one_line = ("mixed.jsonl: mixes preference pairs and SFT examples (record #0 (line 1) is a preference pair "
                "(chosen/rejected), record #1 (line 2) is an SFT example); a run holds pairs or SFT examples, not both")
    with pytest.raises(SourceError, match=one_line.replace("(", r"\(").replace(")", r"\)")):
        source_kind(SourceSpec(str(mixed)))
    with pytest.raises(SourceError, match="mixes preference pairs and SFT examples"):
        load_pairs([SourceSpec(str(mixed))])
    # Past the records source_kind looks at, loading still finds the SFT record.
    late = write_jsonl(tmp_path / "late.jsonl", [{**GOOD, "chosen": f"Hello {k}"} for k in range(30)] + [sft])
    assert source_kind(SourceSpec(str(late))) == "pairs"
    with pytest.raises(SourceError, match=r"record #0 \(line 1\) is a preference pair .*#30 \(line 31\) is an SFT"):
        load_pairs([SourceSpec(str(late))])
    only_sft = write_jsonl(tmp_path / "sft.jsonl", [sft])
    assert source_kind(SourceSpec(str(only_sft))) == "sft"
    assert record_kind(sft) == "sft" and record_kind({"x": 1}) is None and record_kind({"rejected": "r"}) == "pairs"
    with pytest.raises(SourceError, match="record #0 is an SFT example, not a preference pair"):
        load_pairs([SourceSpec(str(only_sft))])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [GOOD])
    assert run_kind([SourceSpec(str(pairs))]) == "pairs"
    with pytest.raises(SourceError, match="pairs.jsonl holds preference pairs and .*sft.jsonl SFT examples"):
        run_kind([SourceSpec(str(pairs)), SourceSpec(str(only_sft))])


def test_pair_ids_are_order_sensitive_and_responses_score_as_their_sft_examples(tmp_path):
    prompt = msgs(("user", "What is 6 * 7?"))
    assert pair_id(prompt, "42", "41") == pair_id([dict(m) for m in prompt], "42", "41")
    assert pair_id(prompt, "42", "41") != pair_id(prompt, "41", "42")
    assert pair_id(prompt, "42", "41") != example_id(prompt + msgs(("assistant", "42")))
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 6 * 7?", "chosen": "42", "rejected": "41"}])
    g = write_jsonl(tmp_path / "s.jsonl", [{"question": "What is 6 * 7?", "answer": "42"},
                                           {"question": "What is 6 * 7?", "answer": "41"}])
    (pair,) = load_pairs([SourceSpec(str(f))]).pairs
    sft = load_sources([SourceSpec(str(g))]).examples
    assert [pair.sft_id("chosen"), pair.sft_id("rejected")] == [e.example_id for e in sft]
    assert pair.sft_messages("rejected") == sft[1].messages
    with pytest.raises(ValueError, match="side 'both'"):
        pair.response("both")


def test_trl_conversational_round_trip_keeps_ids_and_ratings(tmp_path):
    pairs = [load_pairs([SourceSpec(str(write_jsonl(tmp_path / f"{k}.jsonl", [shape[1]])))]).pairs[0]
             for k, shape in enumerate(SHAPES)]
    out = write_jsonl(tmp_path / "out.jsonl", [p.trl_row() for p in pairs])
    back = load_pairs([SourceSpec(str(out))])
    assert back.sources[0].format == "trl-conversational" and not back.rejected
    assert [(p.pair_id, p.prompt, p.chosen, p.rejected, p.rating_chosen, p.rating_rejected) for p in back.pairs] == \
        [(p.pair_id, p.prompt, p.chosen, p.rejected, p.rating_chosen, p.rating_rejected) for p in pairs]
    assert back.pairs[-1].rating_margin == 5.5
    assert trl_row(msgs(("user", "u")), "a", "b") == {"prompt": msgs(("user", "u")), "chosen": msgs(("assistant", "a")),
                                                      "rejected": msgs(("assistant", "b"))}


def test_records_larger_than_the_bound_are_rejected_by_name(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "chosen": msgs(("assistant", "x" * 500))}])
    res = load_pairs([SourceSpec(str(f), max_record_bytes=300)])
    assert len(res.pairs) == 1 and "larger than the limit of 300 bytes" in res.rejected[0].reason


def test_trl_extracts_the_same_implicit_prompt(tmp_path):
    """TRL's own reading (trl==1.16.0 ``maybe_extract_prompt`` / ``is_conversational``) of implicit-prompt
    and UltraFeedback rows agrees with ours."""
    data_utils = pytest.importorskip("trl.data_utils", reason="the TRL check needs trl (requirements.txt)")
    rows = [SHAPES[2][1], SHAPES[6][1],
            {"chosen": conv(("system", "s"), ("user", "A"), ("assistant", "x"), ("user", "B"), ("assistant", "good")),
             "rejected": conv(("system", "s"), ("user", "A"), ("assistant", "x"), ("user", "B"), ("assistant", "bad"))}]
    for row in rows:
        # On the whole UltraFeedback row TRL's answer depends on which key a set pops first (string hashing
        # differs per process), so ask about the responses, as maybe_extract_prompt itself does.
        assert data_utils.is_conversational({"chosen": row["chosen"]})
        theirs = data_utils.maybe_extract_prompt(row)
        (ours,) = load_pairs([SourceSpec(str(write_jsonl(tmp_path / "row.jsonl", [row])))]).pairs
        assert theirs["prompt"] == ours.prompt
        assert theirs["chosen"] == msgs(("assistant", ours.chosen))
        assert theirs["rejected"] == msgs(("assistant", ours.rejected))
    assert not data_utils.is_conversational(SHAPES[0][1])


def test_llamafactory_dpo_demo_loads(shared_pairs_demo):
    """LLaMA-Factory's 300-pair demo: every row a pair; its five repeated rows are exact duplicates."""
    res = load_pairs([SourceSpec(str(shared_pairs_demo))])
    (src,) = res.sources
    assert (src.format, src.n_records, src.n_accepted, src.n_rejected) == ("llamafactory-ranking", 300, 295, 5)
    assert all(r.reason.startswith("exact duplicate of pair ") for r in res.rejected)
    raw = json.loads(shared_pairs_demo.read_text())
    assert all(raw[r.source_index] == raw[int(r.reason.split("#")[1].rstrip(")"))] for r in res.rejected)
    roles = [{m["role"] for m in p.prompt} for p in res.pairs]
    assert sum("assistant" in r for r in roles) > 100 and sum("system" in r for r in roles) > 10  # multi-turn, system


@pytest.fixture
def shared_pairs_demo():
    if not DPO_DEMO.is_file():
        pytest.skip(f"{DPO_DEMO} (../shared/data/dpo_en_demo, LLaMA-Factory's pair demo) is not next to this clone")
    return DPO_DEMO


def _render(pair: Pair, fmt: str) -> dict | None:
    """``pair`` written in the shape ``fmt`` (None where the shape cannot hold its prompt)."""
    prompt, roles = pair.prompt, [m["role"] for m in pair.prompt]
    single = roles == ["user"]
    sharegpt = {"system": "system", "user": "human", "assistant": "gpt"}
    if fmt == "trl-conversational":
        return pair.trl_row()
    if fmt == "trl-implicit":
        return {"chosen": pair.sft_messages("chosen"), "rejected": pair.sft_messages("rejected")}
    if fmt == "ultrafeedback":
        return {"prompt": prompt[-1]["content"], "prompt_id": pair.pair_id, "messages": pair.sft_messages("chosen"),
                **_render(pair, "trl-implicit"), "score_chosen": 7.0, "score_rejected": 2.0}
    if fmt == "llamafactory-ranking":
        return {"conversations": [{"from": sharegpt[m["role"]], "value": m["content"]} for m in prompt],
                "chosen": {"from": "gpt", "value": pair.chosen}, "rejected": {"from": "gpt", "value": pair.rejected}}
    if fmt == "anthropic-hh" and "system" not in roles:
        said = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in prompt)
        return {"chosen": f"{said}\n\nAssistant: {pair.chosen}", "rejected": f"{said}\n\nAssistant: {pair.rejected}"}
    if fmt == "trl-standard" and single:
        return {"prompt": prompt[0]["content"], "chosen": pair.chosen, "rejected": pair.rejected}
    if fmt == "alpaca-ranking" and single:
        return {"instruction": prompt[0]["content"], "input": "", "chosen": pair.chosen, "rejected": pair.rejected}
    return None


@pytest.mark.parametrize("fmt", [s[0] for s in SHAPES])
def test_every_format_reads_real_pairs_back_to_the_same_ids(tmp_path, fmt):
    """Real pairs (CHAMP's, and LLaMA-Factory's demo where ../shared/data is there: multi-turn, system
    turns, long markdown answers) written in each shape load back as the same pairs, none rejected."""
    pytest.importorskip("champ_dataset", reason="the default pairs need the champ-dataset wheel (make setup)")
    from curation.data.default_data import math_pair_eval_records

    src = write_jsonl(tmp_path / "champ.jsonl", math_pair_eval_records())
    specs = [SourceSpec(str(src))] + ([SourceSpec(str(DPO_DEMO))] if DPO_DEMO.is_file() else [])
    pairs = load_pairs(specs).pairs
    rows = [(p, _render(p, fmt)) for p in pairs]
    rows = [(p, r) for p, r in rows if r is not None]
    assert len(rows) >= 100
    res = load_pairs([SourceSpec(str(write_jsonl(tmp_path / "x.jsonl", [r for _, r in rows])))])
    assert res.sources[0].format == fmt and not res.rejected
    assert [p.pair_id for p in res.pairs] == [p.pair_id for p, _ in rows]


def test_load_data_tells_pairs_from_sft_and_counts_each_responses_tokens(tmp_path, tiny_tokenizer):
    from curation.data.load import SourceSpec
    from curation.data.pairs import load_data, pair_token_lengths
    from curation.data.templates import resolve_template, token_lengths
    from tests.synthetic import write_pair_sources

    chat, _ = (SourceSpec(s.split("=", 1)[1], domain=s.split("=", 1)[0]) for s in write_pair_sources(tmp_path, 4, 4))
    kind, res = load_data([chat])
    assert kind == "pairs" and len(res.pairs) == 4
    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n')
    assert load_data([SourceSpec(str(sft), domain="math")])[0] == "sft"
    template = resolve_template(tiny_tokenizer, "auto")
    got = pair_token_lengths(tiny_tokenizer, template, res.pairs)
    p = res.pairs[0]
    want = {s: token_lengths(tiny_tokenizer, template, [type("E", (), {"example_id": p.sft_id(s), "domain": "chat",
                                                                        "messages": p.sft_messages(s)})])
            for s in ("chosen", "rejected")}
    row = got.set_index("pair_id").loc[p.pair_id]
    assert row["n_chosen_tokens"] == want["chosen"]["n_response_tokens"].item()
    assert row["n_rejected_tokens"] == want["rejected"]["n_response_tokens"].item()
    assert row["len_diff"] == row["n_chosen_tokens"] - row["n_rejected_tokens"]
    assert row["n_prompt_tokens"] == want["chosen"]["n_prompt_tokens"].item()
