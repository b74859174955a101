"""Loading and normalising records: every format, every rejection reason, duplicates."""

import gzip
import json

import pytest

from curation.data.load import SourceError, SourceSpec, check_domain, example_id, load_sources, normalise, parse_source_arg
from curation.data.readers import is_hub_id, read_record
from tests.conftest import math_rows, write_jsonl


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def test_alpaca_with_and_without_input():
    assert normalise({"instruction": "Add", "input": "2 and 3", "output": "5"}, "alpaca") == msgs(
        ("user", "Add\n\n2 and 3"), ("assistant", "5"))
    assert normalise({"instruction": "Hi", "input": "", "output": "Hello"}, "alpaca") == msgs(
        ("user", "Hi"), ("assistant", "Hello"))
    assert normalise({"instruction": "Hi", "output": "Hello"}, "alpaca") == msgs(("user", "Hi"), ("assistant", "Hello"))


def test_gsm8k_prompt_sharegpt_messages():
    assert normalise({"question": "q", "answer": "a"}, "gsm8k") == msgs(("user", "q"), ("assistant", "a"))
    assert normalise({"prompt": "p", "completion": "c"}, "prompt") == msgs(("user", "p"), ("assistant", "c"))
    assert normalise({"prompt": "p", "response": "r"}, "prompt") == msgs(("user", "p"), ("assistant", "r"))
    conv = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "u1"},
                              {"from": "gpt", "value": "a1"}, {"from": "human", "value": "u2"},
                              {"from": "gpt", "value": "a2"}]}
    assert normalise(conv, "sharegpt") == msgs(("system", "s"), ("user", "u1"), ("assistant", "a1"),
                                               ("user", "u2"), ("assistant", "a2"))
    m = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    assert normalise(m, "messages") == msgs(("user", "u"), ("assistant", "a"))


def test_format_accepts_the_pair_shapes_and_an_unknown_one_names_both_lists():
    from curation.data.load import FORMATS, PAIR_FORMATS, SOURCE_FORMATS

    assert SOURCE_FORMATS == FORMATS + PAIR_FORMATS and len(set(SOURCE_FORMATS)) == 12
    assert SourceSpec("x.jsonl", format="anthropic-hh").format == "anthropic-hh"
    with pytest.raises(SourceError, match=r"x.jsonl: unknown format 'dpo'; expected one of messages, .*prompt \(SFT "
                                          r"examples\) or trl-standard, .*ultrafeedback \(preference pairs\)"):
        SourceSpec("x.jsonl", format="dpo")


def test_column_mapping_overrides_detection(tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [{"problem": "1+1?", "solution": "2"}])
    res = load_sources([SourceSpec(str(f), columns={"question": "problem", "answer": "solution"})])
    assert res.examples[0].messages == msgs(("user", "1+1?"), ("assistant", "2"))
    assert res.sources[0].format == "gsm8k"


@pytest.mark.parametrize("record, reason", [
    ({"question": "q"}, "missing field 'messages'"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": " \n"}]},
     "empty assistant turn at position 1"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "impossible role order"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "user", "content": "v"},
                   {"role": "assistant", "content": "a"}]}, "impossible role order"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "system", "content": "s"},
                   {"role": "assistant", "content": "a"}]}, "system turn"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "tool", "content": "a"}]}, "unknown role"),
    ({"messages": [{"role": "user", "content": "u"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": 3}]}, "expected text"),
])
def test_bad_records_are_rejected_with_reason(tmp_path, record, reason):
    good = {"messages": msgs(("user", "u"), ("assistant", "a"))}
    f = write_jsonl(tmp_path / "d.jsonl", [good, record])
    res = load_sources([SourceSpec(str(f))])
    assert len(res.examples) == 1
    [rej] = res.rejected
    assert (rej.source, rej.source_index, rej.line) == ("d.jsonl", 1, 2)
    assert reason in rej.reason


def test_malformed_lines_and_invalid_utf8(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"question": "q1", "answer": "a1"}\n\n{"question": \n'
                  b'{"question": "q\xff", "answer": "a"}\n[1, 2]\n{"question": "q2", "answer": "a2"}\n')
    res = load_sources([SourceSpec(str(f), domain="math")])
    assert [(e.source_index, e.domain) for e in res.examples] == [(0, "math"), (4, "math")]
    reasons = {(r.source_index, r.line): r.reason for r in res.rejected}
    assert "malformed JSON" in reasons[(1, 3)]
    assert "invalid UTF-8" in reasons[(2, 4)]
    assert "JSON list" in reasons[(3, 5)]


def test_json_array_truncated_and_bad_utf8(tmp_path):
    f = tmp_path / "d.json"
    f.write_bytes(b'[{"question": "q0", "answer": "a0"},\n {"question": "q\xfe", "answer": "a"},\n'
                  b' {"question": "q2", "answer": "a2"},\n {"question": "q3", "ans')
    res = load_sources([SourceSpec(str(f))])
    assert [e.source_index for e in res.examples] == [0, 2]
    assert [(r.source_index, r.line) for r in res.rejected] == [(1, 2), (3, 4)]
    assert "invalid UTF-8" in res.rejected[0].reason
    assert "malformed JSON" in res.rejected[1].reason


def test_duplicates_kept_once_and_reported(tmp_path):
    rows = [{"question": "q", "answer": "a"}, {"question": "x", "answer": "y"}, {"question": "q", "answer": "a"}]
    f1 = write_jsonl(tmp_path / "a.jsonl", rows)
    f2 = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "response": "a"}])
    res = load_sources([SourceSpec(str(f1)), SourceSpec(str(f2))])
    assert [(e.source, e.source_index) for e in res.examples] == [("a.jsonl", 0), ("a.jsonl", 1)]
    kept = res.examples[0].example_id
    assert [(r.source, r.source_index) for r in res.rejected] == [("a.jsonl", 2), ("b.jsonl", 0)]
    assert all(kept in r.reason and "a.jsonl #0" in r.reason for r in res.rejected)
    ids = [e.example_id for e in res.examples]
    assert len(set(ids)) == len(ids)


def test_example_id_is_a_content_hash():
    a = msgs(("user", "u"), ("assistant", "a"))
    assert example_id(a) == example_id([dict(m) for m in a])
    assert example_id(a) != example_id(msgs(("user", "u"), ("assistant", "b")))
    assert len(example_id(a)) == 16


def test_source_with_no_usable_row_is_an_error(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"foo": 1}, {"bar": 2}])
    with pytest.raises(SourceError, match=r"bad.jsonl: no usable row among 2 record\(s\).*unrecognised"):
        load_sources([SourceSpec(str(f))])
    with pytest.raises(SourceError, match="no such file"):
        load_sources([SourceSpec(str(tmp_path / "missing.jsonl"))])
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(SourceError, match="unsupported file type"):
        load_sources([SourceSpec(str(tmp_path / "x.txt"))])


def test_every_file_format_reads_the_same(tmp_path):
    import datasets
    import pandas as pd

    rows = [{"instruction": f"i{k}", "input": "" if k % 2 else f"x{k}", "output": f"o{k}"} for k in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress((tmp_path / "a.jsonl").read_bytes()))
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hfd"))
    expected = None
    for name in ("a.json", "a.jsonl", "a.jsonl.gz", "a.parquet", "a.csv", "hf", "hfd"):
        res = load_sources([SourceSpec(str(tmp_path / name))])
        got = [(e.source_index, e.messages) for e in res.examples]
        assert not res.rejected, name
        expected = expected or got
        assert got == expected, name
        assert res.examples[0].messages == msgs(("user", "i0\n\nx0"), ("assistant", "o0"))
        assert read_record(SourceSpec(str(tmp_path / name)), 3)["instruction"] == "i3"


def test_limit_and_domains(tmp_path):
    f = write_jsonl(tmp_path / "gsm.jsonl", [{"question": f"q{k}", "answer": "a"} for k in range(10)])
    spec = parse_source_arg(f"math={f}")
    assert spec.domain == "math"
    assert parse_source_arg(str(f)).domain == "gsm"
    res = load_sources([spec], limit=3)
    assert [e.source_index for e in res.examples] == [0, 1, 2]
    assert res.sources[0].n_records == 3


def test_the_embedded_default_pool_loads(default_pool):
    res = load_sources([SourceSpec(str(default_pool["math"]), "math"), SourceSpec(str(default_pool["chat"]), "chat")])
    by = {s.source: (s.format, s.n_records, s.n_accepted) for s in res.sources}
    assert by == {"math.jsonl": ("gsm8k", 200, 200), "chat.jsonl": ("sharegpt", 300, 300)}
    assert len(res.examples) + len(res.rejected) == 500


def test_real_data_loads(shared_data):
    res = load_sources([SourceSpec(str(shared_data / "gsm8k/test.jsonl"), "math"),
                        SourceSpec(str(shared_data / "alpaca_gpt4_demo/alpaca_en_demo.json"), "chat")])
    by = {s.source: (s.format, s.n_records) for s in res.sources}
    assert by == {"test.jsonl": ("gsm8k", 1319), "alpaca_en_demo.json": ("alpaca", 999)}
    assert len(res.examples) + len(res.rejected) == 1319 + 999


# ----------------------------------------------------------------------------------------------
# Bounded input: every row is accounted for, nothing large is kept


def _accounted(res, n_in):
    total = sum(s.n_records for s in res.sources)
    assert total == n_in == len(res.examples) + len(res.rejected), (total, n_in, len(res.examples), len(res.rejected))


def test_a_csv_field_beyond_the_csv_modules_limit_and_an_oversized_row_are_accounted_for(tmp_path):
    import csv

    rows = [{"question": f"What is {k} + 1?", "answer": f"{k + 1}"} for k in range(10)]
    rows[1]["answer"] = "x" * 140_000  # beyond Python's csv field limit (131,072): read, it is under 1 MB
    rows[4]["answer"] = "y" * 1_200_000  # beyond --max-record-bytes: one rejected row, named
    path = tmp_path / "qa.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["question", "answer"])
        w.writeheader()
        w.writerows(rows)
    res = load_sources([SourceSpec(str(path))])
    _accounted(res, 10)
    assert len(res.examples) == 9 and res.rejected[0].source_index == 4
    assert "larger than the limit of 1,000,000 bytes" in res.rejected[0].reason
    # A quoted field with line breaks still parses after the rejected row.
    with path.open("a", newline="") as f:
        csv.writer(f).writerow(["a\nmultiline question", "an\nanswer"])
    res = load_sources([SourceSpec(str(path))])
    _accounted(res, 11)
    assert res.examples[-1].messages[0]["content"] == "a\nmultiline question"


def test_a_huge_record_and_a_gzip_bomb_are_rejected_without_being_held(tmp_path):
    import tracemalloc

    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"question": "q", "answer": "a" * 5_000_000}) + "\n"
                   + json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb") as f:
        for _ in range(64):
            f.write(b"0" * (1 << 20))  # one 64 MiB line of zeros, ~64 KB compressed
        f.write(b"\n" + json.dumps({"question": "What is 2 + 2?", "answer": "4"}).encode() + b"\n")
    assert bomb.stat().st_size < 1_000_000
    for path in (big, bomb):
        tracemalloc.start()
        res = load_sources([SourceSpec(str(path))])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        _accounted(res, 2)
        assert len(res.examples) == 1 and res.rejected[0].source_index == 0 and res.rejected[0].line == 1
        assert "bytes is larger than the limit of 1,000,000 bytes (--max-record-bytes)" in res.rejected[0].reason
        assert peak < 12_000_000, peak  # never the whole record, let alone the unpacked file
    # The limit is a setting.
    res = load_sources([SourceSpec(str(big), max_record_bytes=10_000_000)])
    assert len(res.examples) == 2


def test_a_pretty_printed_object_of_records_is_read_and_other_shapes_are_named(tmp_path):
    p = tmp_path / "wrapped.json"
    p.write_text(json.dumps({"version": 2, "data": [{"question": "What is 1 + 1?", "answer": "2"},
                                                    {"question": "What is 2 + 2?", "answer": "4"}]}, indent=2))
    res = load_sources([SourceSpec(str(p))])
    assert len(res.examples) == 2 and res.sources[0].n_records == 2
    p.write_text(json.dumps({"train": [{"question": "q", "answer": "a"}], "test": [{"question": "q2", "answer": "b"}]},
                            indent=2))
    with pytest.raises(SourceError, match="several lists of records \\(train, test\\)"):
        load_sources([SourceSpec(str(p))])
    p.write_text(json.dumps({"version": 2, "note": "x"}, indent=2))
    with pytest.raises(SourceError, match="no list of records; expected a JSON array"):
        load_sources([SourceSpec(str(p))])


def test_a_mistyped_local_path_is_not_tried_on_the_hub(tmp_path):
    import time

    t0 = time.time()
    with pytest.raises(SourceError, match="data/mth.jsonl: no such file or folder"):
        load_sources([SourceSpec("data/mth.jsonl")])
    assert time.time() - t0 < 2
    assert is_hub_id("openai/gsm8k") and not is_hub_id("data/mth.jsonl") and not is_hub_id("data/x.csv.gz")


def test_a_domain_taken_from_a_file_name_obeys_the_domain_rule(tmp_path):
    p = write_jsonl(tmp_path / "<img src=x onerror=alert(1)>.jsonl", [{"question": "q", "answer": "a"}])
    spec = parse_source_arg(str(p))
    assert spec.domain == "img_src_x_onerror_alert_1" and check_domain(spec.domain) == spec.domain
    assert parse_source_arg(str(write_jsonl(tmp_path / "my data.jsonl", [{"question": "q", "answer": "a"}]))).domain \
        == "my_data"


def _deep(depth: int) -> str:
    return '{"question": "deep", "answer": ' + "[" * depth + "]" * depth + "}"


GOOD_ROWS = math_rows(3)


@pytest.mark.parametrize("name,lines,bad", [
    ("deeply nested line", [json.dumps(GOOD_ROWS[0]), _deep(100_000), json.dumps(GOOD_ROWS[1])], ["nested too deeply"]),
    ("U+2028, U+2029, CRLF and a BOM", [
        "\ufeff" + json.dumps(GOOD_ROWS[0]),
        json.dumps({"question": "Line\u2028separator and para\u2029graph?", "answer": "Both are fine.\u2028#### 1"},
                   ensure_ascii=False),
        json.dumps(GOOD_ROWS[1]) + "\r", json.dumps(GOOD_ROWS[2])], []),
    ("one broken row among good ones", [json.dumps(GOOD_ROWS[0]), '{"question": "cut', json.dumps(GOOD_ROWS[1])],
     ["malformed JSON"]),
])
def test_one_bad_row_never_aborts_the_rest_and_every_row_is_accounted(tmp_path, name, lines, bad):
    f = tmp_path / "rows.jsonl"
    f.write_bytes("\n".join(lines).encode("utf-8"))
    res = load_sources([SourceSpec(str(f), "math")])
    assert len(res.examples) + len(res.rejected) == res.sources[0].n_records == len(lines)  # rows in = out
    assert [e.source_index for e in res.examples] == [i for i in range(len(lines))
                                                      if not any(i == r.source_index for r in res.rejected)]
    assert len(res.rejected) == len(bad) and all(b in r.reason for b, r in zip(bad, res.rejected))
    if "U+2028" in name:
        assert "\u2028" in res.examples[1].messages[0]["content"] and res.examples[0].source_index == 0


def test_a_deeply_nested_json_array_record_is_one_rejected_row(tmp_path):
    f = tmp_path / "arr.json"
    f.write_text("[" + json.dumps(GOOD_ROWS[0]) + "," + _deep(100_000) + "]")
    res = load_sources([SourceSpec(str(f), "math")])
    assert len(res.examples) == 1 and "nested too deeply" in res.rejected[0].reason
