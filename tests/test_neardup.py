"""Near-duplicate groups: planted near-duplicates group, templated problems with other numbers do not."""

from __future__ import annotations

import numpy as np
import pytest

from curation.selection.neardup import (
    NearDupError, _sorted_jaccard, dedup_keep_best, lsh_params, minhash_values, group_texts, shingle_sets,
)

PARAGRAPH = (
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light into "
    "chemical energy. In the chloroplasts, chlorophyll absorbs mostly blue and red light, and the "
    "energy is used to split water molecules, which releases oxygen as a by-product. The hydrogen "
    "and the energy carriers made in these light-dependent reactions then drive the Calvin cycle, "
    "where carbon dioxide from the air is fixed into sugars. Those sugars feed the plant and, through "
    "food chains, almost every other living thing, which is why the process matters so much for life."
)
OTHER = [
    "Write a haiku about autumn leaves falling in a quiet park at dusk, with a mood of calm reflection.",
    "Explain the difference between a list and a tuple in Python, and when you would choose each one.",
    "The French Revolution began in 1789 and transformed the political landscape of Europe for decades.",
    "To bake sourdough bread you need a lively starter, flour, water and salt, plus a lot of patience.",
]

# GSM8K-style templated problems: the same words, other numbers (question only, as an eval set or a
# prompt-only pool has them, and whole conversations with the worked answer).
JANET = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
         "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 "
         "per fresh duck egg. How much in dollars does she make every day at the farmers' market?")
JANET_20 = JANET.replace("16 eggs", "20 eggs")
JANET_A = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every "
           "day at the farmer's market.\n#### 18")
JANET_20_A = ("Janet sells 20 - 3 - 4 = <<20-3-4=13>>13 duck eggs a day.\nShe makes 13 * 2 = $<<13*2=26>>26 "
              "every day at the farmer's market.\n#### 26")
KYLAR = ("Kylar went to the store to buy glasses for his new apartment. One glass costs $5, but every second "
         "glass costs only 60% of the price. Kylar wants to buy 16 glasses. How much does he need to pay for "
         "them? He also wants to buy plates for the kitchen, and each plate costs the same as one full-price "
         "glass. If he buys as many plates as he buys glasses, what is the total he pays for glasses and "
         "plates together?")
KYLAR_6 = KYLAR.replace("$5", "$6")
ROBE = "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?"


def ids_for(n: int) -> list[str]:
    return [f"ex{i:04d}" for i in range(n)]


def one_word_changed(text: str, i: int, new: str = "remarkably") -> str:
    w = text.split(" ")
    w[i] = new
    return " ".join(w)


def test_planted_near_duplicates_are_grouped():
    reflowed = "  " + PARAGRAPH.upper().replace(". ", ".\n\n").replace(", ", " ,  ") + "\n"
    texts = [PARAGRAPH, one_word_changed(PARAGRAPH, 40), reflowed, *OTHER,
             PARAGRAPH + " Let me know if you have any other questions."]
    groups, stats = group_texts(texts, ids_for(len(texts)), return_stats=True)
    assert groups.tolist() == [0, 0, 0, 1, 2, 3, 4, 0]
    assert stats.n_exact_duplicate_rows == 1  # case, spacing and punctuation: the same shingles
    assert np.bincount(groups)[groups].tolist() == [4, 4, 4, 1, 1, 1, 1, 4]


def test_templated_problems_with_other_numbers_stay_apart():
    texts = [JANET, JANET_20, f"User: {JANET}\nAssistant: {JANET_A}", f"User: {JANET_20}\nAssistant: {JANET_20_A}",
             KYLAR, KYLAR_6, ROBE, ROBE.replace("2 bolts", "4 bolts")]
    ids = ids_for(len(texts))
    sets = shingle_sets(texts)
    j = lambda a, b: _sorted_jaccard(sets.shingle_set(a), sets.shingle_set(b))  # noqa: E731
    # Why shingles alone are not enough: one changed number in a 60-80 word question keeps the
    # 5-word-shingle Jaccard above 0.8 ...
    assert j(0, 1) > 0.8 and j(4, 5) > 0.8
    assert group_texts(texts, ids, number_threshold=0).tolist()[:6] == [0, 0, 1, 2, 3, 3]
    # ... so the numbers must agree as well: every templated pair stays apart.
    groups, stats = group_texts(texts, ids, return_stats=True)
    assert len(set(groups.tolist())) == len(texts)
    assert stats.n_rejected_by_numbers == 2
    # The same problem with the same numbers, reworded slightly, is still a near-duplicate.
    assert group_texts([KYLAR, KYLAR.replace("new apartment", "new flat")], ids_for(2)).tolist() == [0, 0]


def test_short_texts_and_numbers_are_exact():
    texts = ["What is 2+2?", "what is 2 + 2", "What is 3+3?", "Hi", "hi!", "", "  ", "2 plus 2"]
    assert group_texts(texts, ids_for(len(texts))).tolist() == [0, 0, 1, 2, 2, 3, 3, 4]


def test_groups_are_transitive_and_numbered_by_smallest_id():
    b = one_word_changed(PARAGRAPH, 20)
    c = one_word_changed(b, 70, "plainly")
    texts = [OTHER[0], c, OTHER[1], PARAGRAPH, b]
    ids = ["e", "b", "d", "c", "a"]  # "a" (b) is the smallest id of the paragraph group
    groups = group_texts(texts, ids)
    assert groups.tolist() == [2, 0, 1, 0, 0]  # numbered in order of smallest id: a (paragraph), d, e
    perm = [4, 2, 0, 3, 1]
    again = group_texts([texts[i] for i in perm], [ids[i] for i in perm])
    assert again.tolist() == groups[perm].tolist()


def test_cjk_text_is_tokenised_per_character():
    zh = "光合作用是绿色植物利用光能把二氧化碳和水转化成储存能量的有机物并释放出氧气的过程这个过程对地球上的生命非常重要"
    assert group_texts([zh, zh.replace("重要", "关键"), "今天天气很好我们去公园散步吧然后一起吃午饭"], ids_for(3)).tolist() == [0, 0, 1]


def test_minhash_is_datasketch_bit_for_bit():
    from datasketch import MinHash

    texts = [PARAGRAPH, *OTHER, JANET]
    sets = shingle_sets(texts)
    sig = minhash_values(sets, np.arange(len(texts)), num_perm=64)
    for i in range(len(texts)):
        m = MinHash(num_perm=64, hashfunc=int)
        m.update_batch(sets.shingle_set(i).tolist())
        assert (m.hashvalues == sig[i]).all()


def test_lsh_recall_near_the_threshold():
    b, r = lsh_params(0.8, 128)
    assert b * r <= 128 and 1 - (1 - 0.8 ** r) ** b >= 0.95
    # 150 pairs of random 200-word texts with 4 words changed 5+ words apart: Jaccard 176/216 =
    # 0.815 (a few up to 0.85), just above the threshold, where a pair is a candidate with P = 0.993.
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]
    texts = []
    for _ in range(150):
        words = list(rng.choice(vocab, 200))
        texts.append(" ".join(words))
        for pos in rng.choice(40, 4, replace=False) * 5 + rng.integers(5):
            words[pos] = "zz" + str(rng.integers(1000))
        texts.append(" ".join(words))
    sets = shingle_sets(texts)
    jac = np.array([_sorted_jaccard(sets.shingle_set(2 * i), sets.shingle_set(2 * i + 1)) for i in range(150)])
    assert 0.81 < jac.min() and jac.max() < 0.86  # (a change near an end touches fewer shingles)
    groups = group_texts(texts, ids_for(len(texts)))
    found = groups[0::2] == groups[1::2]
    assert found.mean() >= 0.95 and len(set(groups.tolist())) == 300 - found.sum()


def test_dedup_keep_best():
    groups = np.array([0, 0, 1, 2, 2, 2])
    scores = np.array([0.5, 0.9, 0.1, np.nan, 0.3, 0.3])
    ids = np.array(["a", "b", "c", "d", "f", "e"])
    assert dedup_keep_best(groups, scores, ids).tolist() == [False, True, True, False, False, True]
    assert dedup_keep_best(groups, scores, ids, "low").tolist() == [True, False, True, False, False, True]
    with pytest.raises(NearDupError, match="one value per row"):
        dedup_keep_best(groups, scores[:-1], ids)


def test_validation():
    with pytest.raises(NearDupError, match="strings"):
        group_texts(["a", 3], ["x", "y"])
    with pytest.raises(NearDupError, match="unique"):
        group_texts(["a", "b"], ["x", "x"])
    with pytest.raises(NearDupError, match="threshold"):
        group_texts(["a"], ["x"], threshold=1.5)
    with pytest.raises(NearDupError, match="shingle"):
        group_texts(["a"], ["x"], shingle=0)
    assert group_texts([], []).tolist() == []


# ----------------------------------------------------------------------------------------------
# A run's groups (cached in the run folder), select --dedup near and --decontaminate


@pytest.fixture
def dup_run(tmp_path):
    """A run over real files: planted near-duplicates (a reworded paragraph answer), GSM8K-style
    problems with other numbers, and a chat example copying 13+ words of an eval question."""
    from tests.conftest import write_jsonl
    from tests.synthetic import make_run

    math_rows = [{"question": JANET, "answer": JANET_A}, {"question": JANET_20, "answer": JANET_20_A},
                 {"question": KYLAR, "answer": "He pays 64 for the glasses. #### 64"},
                 {"question": KYLAR_6, "answer": "He pays 76.8 for the glasses. #### 76.8"},
                 {"question": ROBE, "answer": "It takes 2 + 1 = 3 bolts. #### 3"}]
    chat_rows = [{"instruction": "Explain photosynthesis.", "input": "", "output": PARAGRAPH},
                 {"instruction": "Explain photosynthesis.", "input": "", "output": one_word_changed(PARAGRAPH, 40)},
                 {"instruction": "explain photosynthesis!", "input": "", "output": PARAGRAPH.replace(", ", " , ")},
                 *[{"instruction": "Tell me something.", "input": "", "output": t} for t in OTHER],
                 {"instruction": "Solve this: " + EVAL_Q, "input": "", "output": "Let me think about it."}]
    math = write_jsonl(tmp_path / "math.jsonl", math_rows)
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_rows)
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"question": EVAL_Q, "answer": "Moving on. #### 0"},
                                                  {"question": "An unrelated eval question.", "answer": "#### 1"}])
    return make_run(tmp_path / "run", [f"math={math}", f"chat={chat}"]), evals


EVAL_Q = ("A train leaves the station at noon travelling north at a steady speed of sixty miles per hour "
          "while a second train follows it an hour later. When does the second train catch up?")


def test_run_groups_are_cached_by_threshold_and_keep_number_variants_apart(dup_run):
    import pandas as pd

    from curation.selection.neardup import cache_path, group_listing, near_dup_groups
    from curation.runs.folder import Run

    run_dir, _ = dup_run
    run = Run(run_dir)
    texts = run.texts()
    g = near_dup_groups(run_dir)
    assert cache_path(run_dir, 0.8).is_file() and list(g.columns) == ["example_id", "near_dup_group", "group_size"]
    by_text = {texts[i]: grp for i, grp in zip(g["example_id"], g["near_dup_group"])}
    para = [t for t in texts.values() if "Photosynthesis" in t or "photosynthesis" in t]
    assert len(para) == 3 and len({by_text[t] for t in para}) == 1  # the planted near-duplicates
    janet = [by_text[t] for t in texts.values() if "Janet" in t]
    kylar = [by_text[t] for t in texts.values() if "Kylar" in t]
    assert len(set(janet)) == 2 and len(set(kylar)) == 2  # other numbers: different examples
    listing = group_listing(g)
    assert listing["size"].tolist() == [3]
    # cached: a changed file is not read again at the same threshold; another threshold is its own file
    pd.testing.assert_frame_equal(near_dup_groups(run_dir, texts={}), g)
    assert near_dup_groups(run_dir, 0.5, texts=texts)["near_dup_group"].nunique() <= g["near_dup_group"].nunique()
    assert cache_path(run_dir, 0.5).is_file()


def test_select_dedup_keeps_the_best_member_and_decontaminate_excludes(dup_run, tmp_path, capsys):
    import json

    import pandas as pd

    from curation.cli import main
    from curation.selection.apply import apply_recipe
    from curation.selection.recipe import Recipe, SelectionError

    run_dir, evals = dup_run
    table = pd.read_parquet(run_dir / "scores.parquet")
    assert main(["select", str(run_dir), "--method", "davir", "--budget", "100%", "--dedup", "near",
                 "--decontaminate", str(evals), "--out", str(tmp_path / "sel")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "sel" / "summary.json").read_text())
    sel = pd.read_parquet(tmp_path / "sel" / "selected.parquet")
    groups = pd.read_parquet(next(run_dir.glob("near_dups-t0.8.parquet"))).merge(table, on="example_id")
    dup = groups[groups["group_size"] == 3]
    best = dup.loc[dup["davir"].idxmax(), "example_id"]
    assert best in set(sel["example_id"]) and len(set(dup["example_id"]) & set(sel["example_id"])) == 1
    assert summary["dedup"]["dropped"] == 2 and summary["dedup"]["groups_with_duplicates"] == 1
    c = summary["contamination"]
    assert c["flagged"] == 1 and c["excluded"] and c["first"][0]["eval_example"] == "eval.jsonl#0"
    assert c["first"][0]["example_id"] not in set(sel["example_id"])
    assert len(sel) == len(table) - 3  # 2 near-duplicates and 1 contaminated example left out
    assert "1 flagged" in printed and "near-duplicates" in printed
    # --keep-contaminated: reported, kept
    assert main(["select", str(run_dir), "--method", "davir", "--budget", "100%", "--decontaminate", str(evals),
                 "--keep-contaminated", "--out", str(tmp_path / "sel2")]) == 0
    s2 = json.loads((tmp_path / "sel2" / "summary.json").read_text())
    assert s2["contamination"]["flagged"] == 1 and not s2["contamination"]["excluded"]
    assert s2["totals"]["examples"] == len(table)
    # the recipe round-trips and the bare table says what is missing
    r = Recipe.from_dict(json.loads(json.dumps(summary["recipe"])))
    assert r.dedup == "near" and r.decontaminate == [str(evals)] and r.ngram == 13
    with pytest.raises(SelectionError, match="needs the column 'near_dup_group'"):
        apply_recipe(table, Recipe("davir", dedup="near"))
    with pytest.raises(SelectionError, match="near_dup_threshold"):
        Recipe("davir", dedup="near", near_dup_threshold=1.5)
    with pytest.raises(SelectionError, match="applies with --decontaminate"):
        Recipe("davir", keep_contaminated=True)
    assert main(["select", str(run_dir), "--method", "davir", "--decontaminate", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_validate_baselines_leave_out_what_the_recipe_left_out(dup_run, tmp_path):
    """validate's random baselines apply the selection's --dedup near and --decontaminate: one
    member per near-duplicate group, never the flagged example."""
    import json

    import pandas as pd

    from curation.selection.folder import select_run
    from curation.selection.recipe import Recipe
    from curation.validation.candidates import build_candidates
    from curation.validation.validate import ValidateConfig, read_selections

    run_dir, evals = dup_run
    out = select_run(run_dir, Recipe("davir", budget="100%", dedup="near", decontaminate=[str(evals)]), tmp_path / "sel")
    summary = json.loads((out / "summary.json").read_text())
    flagged = summary["contamination"]["first"][0]["example_id"]
    groups = pd.read_parquet(run_dir / "near_dups-t0.8.parquet")
    group = set(groups.loc[groups["group_size"] == 3, "example_id"])
    run, sels = read_selections([str(out)])
    cfg = ValidateConfig(selections=[str(out)], eval={"math": str(evals)}, out=str(tmp_path / "v"), seeds=2,
                         baselines="random")
    cands = build_candidates(cfg, sels, run.scores(), "learn", run)
    for c in cands:
        c.grow(2, 0)
    rnd = next(c for c in cands if c.kind == "random")
    for ids in rnd.ids.values():
        # (a random sample keeps the smallest id of a group, the method its best-ranked member)
        assert len(ids) == len(sels[0].rows()) and flagged not in ids and len(group & set(ids)) == 1


def test_a_threshold_of_1_groups_identical_texts_only():
    texts = ["The quick brown fox jumps over the dog.", "the quick brown fox, jumps over the dog",
             "The quick brown fox jumps over the cat.", "Something else entirely here."]
    assert group_texts(texts, ["a", "b", "c", "d"], threshold=1).tolist() == [0, 0, 1, 2]
    assert group_texts(texts, ["a", "b", "c", "d"], threshold=0.5).tolist()[:3] == [0, 0, 0]
