"""curation.validation.answers: final-answer extraction and comparison (GSM8K, boxed, CHAMP styles)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.validation.answers import answers_match, extract_answer, normalise_answer, to_number

SHARED_GSM8K = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.mark.parametrize("text, want", [
    # GSM8K
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72", "72"),
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### $18.", "18"),
    ("#### 1,234\n\nQuestion: next problem with 99 in it", "1234"),
    ("a #### 5 then #### -3", "-3"),  # the last ####
    # boxed
    ("So the probability is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("First \\boxed{3}, corrected: \\boxed{ \\dfrac{3}{4} }", "\\frac{3}{4}"),
    ("Thus $x = \\boxed{\\sqrt{2^{\\frac{1}{2}}}}$", "\\sqrt{2^{\\frac{1}{2}}}"),  # nested braces
    ("The set is \\boxed{\\{1, 2\\}}", "\\{1,2\\}"),
    ("cut off: \\boxed{7} and \\boxed{\\frac{1}{", "7"),  # the last complete box
    # "The answer is"
    ("Step 1.\nStep 2.\nThe answer is: 12", "12"),
    ("The answer is: n=2", "n=2"),
    ("The answer is: \\sqrt{2}", "\\sqrt{2}"),
    ("... so the final answer is $\\boxed{42}$.", "42"),
    ("the answer is 7.\n\nQuestion: what is 3 + 4? 9", "7"),  # the rest of its line only
    ("The answer isn't obvious; try 5 then 6", "6"),  # not a marker: last number
    ("#### 10\nThe answer is: 11", "10"),  # #### first
    # last number
    ("So she has 5 apples and 1,250 pears", "1250"),
    ("x is -3.5", "-3.5"),
    ("half, i.e. 3/4 of it", "3/4"),
    ("no digits here", None),
    ("", None),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_empty_marker_falls_through():
    assert extract_answer("so \\boxed{9}\n#### ") == "9"
    assert extract_answer("we get 4\nThe answer is:") == "4"


@pytest.mark.parametrize("pred, gold", [
    ("72.0", "72"), ("72", "72.00"), ("$1,234", "1234"), ("\\frac{1}{2}", "1/2"), ("0.5", "\\dfrac{1}{2}"),
    ("-\\frac{3}{4}", "-0.75"), ("50%", "50"), ("1e3", "1000"), ("n = 2", "n=2"), ("\\sqrt{2}", "\\sqrt{ 2 }"),
    ("No integer solutions", "No integer solutions."), ("0.3333333", "1/3"),
])
def test_answers_match(pred, gold):
    assert answers_match(pred, gold)


@pytest.mark.parametrize("pred, gold", [
    ("72", "73"), ("0.333", "1/3"), ("\\frac{1}{2}", "\\frac{1}{3}"), ("n=2", "n=3"), ("C(10,500)", "C(10500)"),
    (None, "1"), ("1", None), ("0", "0 is the only possible value"),
])
def test_answers_do_not_match(pred, gold):
    assert not answers_match(pred, gold)


def test_normalise_and_numbers():
    assert normalise_answer(" $ 1,234 . ") == "1234"
    assert normalise_answer("x=6, y=5") == "x=6,y=5"  # commas between values stay
    assert normalise_answer("C(10, 500)") == "C(10,500)"
    assert to_number("1/0") is None and to_number("\\frac{a}{b}") is None and to_number("2^3") is None
    assert to_number("\\boxed{3}") == 3.0


def champ_problems() -> dict:
    import importlib.util

    spec = importlib.util.find_spec("champ_dataset")
    if spec is None:
        pytest.skip("champ-dataset is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_files" / "v0.json"
    return json.loads(path.read_text())["problems"]


def test_champ_answers_round_trip():
    """Every CHAMP answer survives the pool's solution format (steps + "The answer is: <answer>")."""
    problems = champ_problems()
    ok = 0
    for p in problems.values():
        solution = "\n".join(s["_text"].strip() for s in p["solution"]["steps"])
        got = extract_answer(solution + "\nThe answer is: " + p["_answer"].strip())
        ok += answers_match(got, p["_answer"])
    assert ok == len(problems) == 270


@pytest.mark.skipif(not SHARED_GSM8K.is_file(), reason="shared GSM8K data not present")
def test_gsm8k_gold_answers_extract_as_numbers():
    rows = [json.loads(line) for line in SHARED_GSM8K.open()]
    for r in rows:
        gold = r["answer"].rsplit("####", 1)[1].strip()
        got = extract_answer(r["answer"])
        assert to_number(got) is not None, r["answer"][-80:]
        assert answers_match(got, gold)
        # without the #### line, the last number of the worked solution is nearly always the answer
    no_marker = sum(answers_match(extract_answer(r["answer"].rsplit("####", 1)[0]), r["answer"].rsplit("####", 1)[1])
                    for r in rows)
    assert no_marker / len(rows) > 0.95
