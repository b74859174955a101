"""Settings have one source of truth: the config dataclasses; the CLI is built from them."""

import dataclasses

import pytest

from curation.cli import build_parser, job_kind_parser
from curation.config import field_info, from_arguments, result_key
from curation.runs.steps import RunConfig
from curation.runs.learn import LearnConfig
from curation.runs.score import ScoreConfig
from curation.runs.training import TrainConfig


def _parse(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("cls,kind", [(ScoreConfig, "score"), (LearnConfig, "learn")])
def test_absent_flags_give_the_dataclass_defaults(cls, kind):
    cfg = from_arguments(cls, _parse(kind, "a.jsonl", "--out", "o"))
    assert cfg == cls(sources=["a.jsonl"], out="o")
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_flags_of_the_previous_version_still_parse():
    args = _parse("learn", "math=m.jsonl", "chat=c.json", "--model", "m", "--max-length", "64", "--batch-tokens", "512",
                  "--limit", "3", "--template", "alpaca", "--device", "cpu", "--dtype", "float32",
                  "--columns", "question=problem,answer=solution", "--format", "gsm8k", "--out", "o",
                  "--checkpoints", "3", "--reference", "r", "--heldout-folds", "2", "--epochs", "2", "--lr", "1e-3",
                  "--warmup-ratio", "0.2", "--weight-decay", "0.1", "--train-batch-tokens", "256",
                  "--grad-accum", "2", "--lora", "--lora-r", "8", "--seed", "5", "--clusters", "7", "--no-ifd",
                  "--cache", "cache", "--chunk-examples", "8")
    cfg = from_arguments(LearnConfig, args)
    assert cfg.sources == ["math=m.jsonl", "chat=c.json"] and cfg.max_length == 64 and cfg.limit == 3
    assert cfg.columns == {"question": "problem", "answer": "solution"} and cfg.format == "gsm8k"
    assert (cfg.n_clusters, cfg.ifd, cfg.lora, cfg.lora_r, cfg.lora_alpha) == (7, False, True, 8, 16)
    assert cfg.train_config() == TrainConfig(epochs=2, lr=1e-3, warmup_ratio=0.2, weight_decay=0.1,
                                             train_batch_tokens=256, grad_accum=2, lora=True, lora_r=8, seed=5)
    s = from_arguments(ScoreConfig, _parse("score", "x.jsonl", "--out", "o", "--compile", "--chunk-examples", "9"))
    assert s.compile and s.chunk_examples == 9


def test_repeated_pair_flags_merge_and_bad_pairs_are_one_line_errors(capsys):
    cfg = from_arguments(ScoreConfig, _parse("score", "x", "--out", "o", "--columns", "a=b", "--columns", "c=d"))
    assert cfg.columns == {"a": "b", "c": "d"}
    with pytest.raises(SystemExit):
        _parse("score", "x", "--out", "o", "--columns", "nonsense")
    assert "expected FIELD=COLUMN pairs" in capsys.readouterr().err


def test_jobs_submit_parses_the_same_arguments_with_out_optional():
    args = job_kind_parser("learn").parse_args(["a.jsonl", "--checkpoints", "2", "--workspace", "ws"])
    cfg = from_arguments(LearnConfig, args, out="")
    assert cfg.checkpoints == 2 and cfg.out == "" and args.workspace == "ws"


def test_result_key_leaves_out_what_does_not_change_results():
    a = ScoreConfig(sources=["x"], out="a", batch_tokens=512, chunk_examples=3, compile=True, cache="c")
    b = ScoreConfig(sources=["x"], out="b")
    assert result_key(a) == result_key(b)
    assert result_key(ScoreConfig(sources=["x"], out="a", max_length=7)) != result_key(b)
    full, lora = LearnConfig(sources=["x"], out="o"), LearnConfig(sources=["x"], out="o", lora=True)
    assert "lora_r" not in full.result_key() and full.result_key()["lr"] == 5e-5
    assert lora.result_key()["lr"] == 3e-4 and lora.result_key()["lora_alpha"] == 32
    attached = LearnConfig(sources=["x"], out="o", reference="r", lr=1.0)
    assert "lr" not in attached.result_key() and attached.result_key()["seed"] == 0


def test_each_default_lives_in_its_field():
    assert field_info(RunConfig, "max_length")["default"] == RunConfig(sources=["x"], out="o").max_length
    assert field_info(LearnConfig, "checkpoints")["type"] is int
    assert field_info(ScoreConfig, "limit")["type"] is int  # `int | None`: the form shows a number
    with pytest.raises(KeyError, match="no setting"):
        field_info(ScoreConfig, "nope")


def test_parse_pairs_refuses_a_repeated_key_in_every_input(capsys):
    from curation.config import parse_pairs

    assert parse_pairs("a=1, b = 2") == {"a": "1", "b": "2"} and parse_pairs(["a=1", "b=2,c=3"]) == {"a": "1", "b": "2", "c": "3"}
    assert parse_pairs({"a": 1}) == {"a": "1"} and parse_pairs(None) == {}
    for given in ("a=1,a=2", ["a=1", "a=2"], {"a": 1, " a": 2}):
        with pytest.raises(ValueError, match="field 'a' is given twice"):
            parse_pairs(given)
    with pytest.raises(ValueError, match="expected DOMAIN=PATH pairs"):
        parse_pairs("=x", "DOMAIN=PATH")
    with pytest.raises(SystemExit):
        _parse("score", "x", "--out", "o", "--columns", "a=b", "--columns", "a=c")
    assert "field 'a' is given twice ('b' and 'c')" in capsys.readouterr().err


def test_a_single_valued_option_given_twice_is_refused(tmp_path, run_cli):
    r = run_cli("learn", "math=x.jsonl", "--out", str(tmp_path / "o"), "--stability-runs", "3",
                "--stability-vary", "lr=1e-5", "--stability-vary", "seed=4")
    assert r.returncode == 2 and "--stability-vary: given twice ('lr=1e-5' and 'seed=4')" in r.stderr, r.stderr
    r = run_cli("select", "run", "--method", "loss", "--budget", "5", "--budget", "10", "--out", "x")
    assert r.returncode == 2 and "--budget: given twice" in r.stderr


def test_counts_that_multiply_the_work_are_bounded():
    from curation.validation.mix import MixConfig
    from curation.validation.validate import ValidateConfig

    for make, msg in [(lambda: ValidateConfig(selections=["s"], out="o", eval={"m": "x"}, seeds=1_000_000_000),
                       "seeds 1000000000: at most 50"),
                      (lambda: MixConfig(run="r", out="o", eval={"m": "x"}, seeds=51), "at most 50"),
                      (lambda: LearnConfig(sources=["x.jsonl"], out="o", stability_runs=1000), "at most 20"),
                      (lambda: ValidateConfig(selections=["s"], out="o", eval={"m": "x"}, epochs=10**6), "at most 1,000")]:
        with pytest.raises(ValueError, match=msg):
            make()
