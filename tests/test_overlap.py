"""Decontamination: a shared 13-gram flags a pool row, a 12-gram does not, unrelated texts never do."""

from __future__ import annotations

import numpy as np
import pytest

from curation.data.overlap import ContaminationError, contaminated
from curation.data.textnorm import words

EVAL = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for "
    "her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh "
    "duck egg. How much in dollars does she make every day at the farmers' market?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
    "Which of the following best describes the function of mitochondria in eukaryotic cells? (A) protein "
    "synthesis (B) energy production through cellular respiration (C) storage of genetic material",
    "Short eval question?",
]


def passage(text: str, start: int, n: int) -> str:
    return " ".join(words(text)[start:start + n])


def test_planted_13_gram_is_flagged_12_gram_is_not():
    pool = [
        "Here is a problem I found. " + passage(EVAL[0], 10, 13).upper() + "! Can you solve it?",  # 13 words
        "Here is a problem I found. " + passage(EVAL[0], 10, 12) + " Can you solve it?",  # 12 words only
        "Explain, step by step: " + passage(EVAL[2], 3, 20),
        "Write a poem about the sea, the wind and the gulls over the harbour at dawn.",
    ]
    res = contaminated(pool, EVAL, n=13)
    assert res.flags.tolist() == [True, False, True, False]
    assert res.eval_index.tolist() == [0, -1, 2, -1]
    assert res.pool_start.tolist() == [6, -1, 4, -1]  # word offset of the shared 13-gram
    assert res.n_eval_too_short == 1  # "Short eval question?" can never match at n = 13
    # the same pairs with n = 12: now the 12-word passage counts
    assert contaminated(pool, EVAL, n=12).flags.tolist() == [True, True, True, False]
    # tuple unpacking, for callers that only want the flags
    flags, which, *_ = res
    assert flags.sum() == 2 and which[0] == 0


def test_first_match_is_by_position_in_the_pool_row_then_eval_index():
    shared = passage(EVAL[1], 0, 13)
    evals = ["intro words " + passage(EVAL[0], 0, 20), "other words " + shared, "more " + shared]
    pool = ["x " + passage(EVAL[0], 2, 14) + " y " + shared, "z " + shared + " w " + passage(EVAL[0], 0, 13)]
    res = contaminated(pool, evals)
    assert res.eval_index.tolist() == [0, 1]  # row 1: the shared 13-gram comes first; evals 1 and 2 hold it -> 1
    assert res.pool_start.tolist() == [1, 1]


def test_no_false_positives_on_unrelated_texts():
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(3000)] + [str(i) for i in range(100)])
    p = 1 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    def texts(n, length):  # Zipf words: many common short phrases, no shared 13-gram by design
        return [" ".join(rng.choice(vocab, length, p=p)) for _ in range(n)]
    res = contaminated(texts(800, 300), texts(300, 60) + EVAL)
    assert not res.flags.any() and (res.eval_index == -1).all()


def test_token_id_sequences():
    rng = np.random.default_rng(1)
    evals = [rng.integers(0, 50_000, 200) for _ in range(50)]
    pool = [rng.integers(0, 50_000, 300) for _ in range(300)]
    pool[7] = np.concatenate([pool[7][:100], evals[33][50:63], pool[7][100:]])  # 13 ids
    pool[8] = np.concatenate([pool[8][:100], evals[34][50:62], pool[8][100:]])  # 12 ids
    pool[9] = list(evals[5][:13])  # a plain list of ints, exactly one n-gram long
    res = contaminated(pool, evals, n=13, batch=64)  # several batches
    assert np.flatnonzero(res.flags).tolist() == [7, 9]
    assert res.eval_index[[7, 9]].tolist() == [33, 5] and res.pool_start[[7, 9]].tolist() == [100, 0]
    # the word path and the id path agree on the same tokens
    vocab = {}
    def ids_of(t):
        return [vocab.setdefault(w, len(vocab)) for w in words(t)]
    text_pool = ["so " + passage(EVAL[0], 5, 13), passage(EVAL[2], 0, 12)]
    by_text = contaminated(text_pool, EVAL)
    by_ids = contaminated([ids_of(t) for t in text_pool], [ids_of(t) for t in EVAL])
    assert by_text.flags.tolist() == by_ids.flags.tolist() == [True, False]


def test_validation_and_edges():
    with pytest.raises(ContaminationError, match="mixes texts"):
        contaminated(["a b c", [1, 2, 3]], EVAL)
    with pytest.raises(ContaminationError, match="tokenize both the same way"):
        contaminated([[1, 2, 3]], EVAL)
    with pytest.raises(ContaminationError, match="non-negative token ids"):
        contaminated([[1, -2, 3]], [[1, 2, 3]], n=3)
    with pytest.raises(ContaminationError, match="n must be"):
        contaminated(["a"], ["a"], n=0)
    with pytest.raises(ContaminationError, match="list of texts"):
        contaminated("a single string", EVAL)
    assert contaminated([], EVAL).flags.tolist() == []
    assert contaminated(["a b c"], []).flags.tolist() == [False]
    assert contaminated(["a b c", ""], ["a b c"], n=3).flags.tolist() == [True, False]
