"""Recipes: budgets, fields, validation and the YAML round trip."""

from __future__ import annotations

from fractions import Fraction

import pytest

from curation.selection.recipe import Budget, Recipe, SelectionError


def test_budget_parsing_and_rounding():
    assert Budget.parse("200").units(1000) == 200
    assert Budget.parse("10%").units(1000) == 100
    assert Budget.parse("2.5%").units(30) == 1  # 0.75 rounds half up to 1
    assert Budget.parse("5%").units(30) == 2  # 1.5 -> 2 (half up, exact arithmetic)
    assert Budget.parse("25000tok") == Budget("tokens", Fraction(25000))
    assert str(Budget.parse("2.5%")) == "2.5%" and str(Budget.parse("25_000tok")) == "25000tok"
    for bad in ("0", "-3", "150%", "1.5", "ten", "10 apples"):
        with pytest.raises(SelectionError, match="budget"):
            Budget.parse(bad)


def test_recipe_defaults_and_validation():
    assert Recipe("davir").order == "high" and Recipe("rho").order == "high"
    assert Recipe("ifd").order == "high" and Recipe("ppl").order == "low" and Recipe("loss").order == "high"
    assert Recipe("random").order is None
    r = Recipe("davir", budget="10%", mix="math=0.5, chat=0.5", max=["ifd=1"], min={"n_response_tokens": 5})
    assert r.mix == {"chat": 0.5, "math": 0.5} and r.max == {"ifd": 1.0} and r.min == {"n_response_tokens": 5.0}
    with pytest.raises(SelectionError, match="unknown method/score 'bogus'"):
        Recipe("bogus")
    with pytest.raises(SelectionError, match="impossible mix: shares sum to 0.9"):
        Recipe("davir", mix="chat=0.5,math=0.4")
    with pytest.raises(SelectionError, match="impossible mix"):
        Recipe("davir", mix="chat=-0.5,math=1.5")
    with pytest.raises(SelectionError, match="order does not apply"):
        Recipe("random", order="high")
    with pytest.raises(SelectionError, match="min 2.0 is above max 1.0"):
        Recipe("davir", min={"ifd": 2}, max={"ifd": 1})
    with pytest.raises(SelectionError, match="not tokens"):
        Recipe("s2l", budget="1000tok")
    with pytest.raises(SelectionError, match=r"unknown recipe field\(s\) \['budgte'\]"):
        Recipe.from_dict({"method": "davir", "budgte": "10%"})


def test_recipe_yaml_round_trip(tmp_path):
    r = Recipe("davir", budget="7%", mix={"math": 0.25, "chat": 0.75}, max={"ifd": 1}, fill=True, seed=3)
    p = tmp_path / "recipe.yaml"
    p.write_text(r.to_yaml())
    assert Recipe.from_yaml(p.read_text(), str(p)) == r
    p.write_text("method: davir\nbudget: [oops\n")
    with pytest.raises(SelectionError, match="not valid YAML"):
        Recipe.from_yaml(p.read_text(), str(p))


def test_new_recipe_fields_validate_and_round_trip(tmp_path):
    r = Recipe("loss", budget="10%", stratify=" length : 4 ", temperature=0.3, seed=2)
    assert r.stratify == "length:4" and r.strata == 4
    p = tmp_path / "recipe.yaml"
    p.write_text(r.to_yaml())
    assert Recipe.from_yaml(p.read_text(), str(p)) == r and Recipe.from_yaml(p.read_text(), str(p)).strata == 4
    for kw, msg in [({"stratify": "length:1"}, "Q >= 2"), ({"stratify": "tokens:3"}, "length:Q"),
                    ({"temperature": 0}, "positive number"), ({"temperature": float("nan")}, "positive number")]:
        with pytest.raises(SelectionError, match=msg):
            Recipe("davir", **kw)
    with pytest.raises(SelectionError, match="ranking method"):
        Recipe("random", stratify="length:3")
    with pytest.raises(SelectionError, match="ranking method"):
        Recipe("s2l", temperature=1.0)


def test_recipe_mini_syntax_is_built_by_the_library_as_the_parsers_read_it(tmp_path):
    from curation.selection.recipe import (Budget, budget_text, diversity_text, parse_diversity, parse_stratify,
                                           stratify_text, targets_from_files)

    assert [budget_text(10.0, "percent"), budget_text(2.5, "percent"), budget_text(200.0, "count"),
            budget_text(25000.0, "tokens")] == ["10%", "2.5%", "200", "25000tok"]
    assert str(Budget.parse(budget_text(2.5, "percent"))) == "2.5%"
    assert stratify_text(5) == "length:5" and parse_stratify(stratify_text(5)) == 5 and stratify_text(1) is None
    assert diversity_text("off", 20) is None and diversity_text("kcenter", 20) == "kcenter"
    assert parse_diversity(diversity_text("clusters", 20)) == ("clusters:20", 20)
    assert targets_from_files([tmp_path / "math.jsonl", tmp_path / "chat.json", tmp_path / "math.parquet"]) == {
        "math": [str(tmp_path / "math.jsonl"), str(tmp_path / "math.parquet")], "chat": [str(tmp_path / "chat.json")]}


def test_a_repeated_key_is_refused_in_thresholds_mixes_and_recipe_files():
    with pytest.raises(SelectionError, match="score 'ifd' is given twice"):
        Recipe(method="davir", budget="10", max=["ifd=1", "ifd=2"])
    with pytest.raises(SelectionError, match="domain 'chat' is given twice"):
        Recipe(method="davir", budget="10", mix="chat=0.5,chat=0.5")
    with pytest.raises(SelectionError, match="r.yaml: not valid YAML .*'budget' is given twice"):
        Recipe.from_yaml("method: davir\nbudget: 10\nbudget: 20\n", "r.yaml")
    with pytest.raises(SelectionError, match="'ifd' is given twice"):
        Recipe.from_yaml("method: davir\nbudget: 10\nmax:\n  ifd: 1\n  ifd: 2\n", "r.yaml")
    assert Recipe.from_yaml("method: davir\nbudget: 10\nmax:\n  ifd: 1\n").max == {"ifd": 1.0}


def test_a_domain_given_twice_in_a_mix_is_refused():
    with pytest.raises(SelectionError, match="domain 'chat' is given twice"):
        Recipe("loss", mix="chat=0.5,chat=0.5")
