"""The learn run on preference pairs (runs/pair_learn.py) end to end on the tiny model: the reward
and davir columns equal their formulas recomputed from HF on the base and the trained model, the
DPO curve, resume after a kill, the settings that do not apply refused, held-out folds; on Ray and
on the real default pairs (integration)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curation.data.pairs import trl_row
from curation.runs.folder import Run
from curation.runs.learn import LearnConfig, run_learn
from curation.runs.pair_learn import refuse_unused_settings
from curation.runs.pair_tables import read_train_curve
from curation.scores import PAIR_COLUMNS, PAIR_HELDOUT_COLUMNS, PAIR_LEARN_COLUMNS
from tests.conftest import write_jsonl

WORDS = "the fox jumps over lazy dog clips sold April May 48 72 1 + 2 = 3 eat sleep well".split()
SIDES = ("chosen", "rejected")


def user(text):
    return {"role": "user", "content": text}


def pair_rows(n=12, seed=0):
    """TRL conversational pairs; every third prompt multi-turn (an earlier assistant turn, which a
    response's log-prob must leave out)."""
    rng = np.random.default_rng(seed)

    def words(lo, hi):
        return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))))

    rows = []
    for k in range(n):
        prompt = [user(f"question {k}: " + words(2, 6))]
        if k % 3 == 0:
            prompt = [user(words(2, 5)), {"role": "assistant", "content": words(2, 5)}, *prompt]
        rows.append(trl_row(prompt, "yes " + words(1, 10), "no " + words(1, 10)))
    return rows


def learn_cfg(sources, out, model, cache, **kw):
    args = {"lr": 1e-3, "epochs": 2, "train_batch_tokens": 256, "grad_accum": 2, "max_length": 96,
            "batch_tokens": 512, "chunk_examples": 4, "cache": str(cache)}
    args.update(kw)
    return LearnConfig(sources=sources, out=str(out), model=str(model), **args)


@pytest.fixture(scope="module")
def pair_pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairpool")
    return d, [f"chat={write_jsonl(d / 'pairs.jsonl', pair_rows())}"]


@pytest.fixture(scope="module")
def pair_learned(pair_pool, tiny_model_dir):
    d, sources = pair_pool
    phases = []
    out = run_learn(learn_cfg(sources, d / "run", tiny_model_dir, d / "cache"), progress=lambda **p: phases.append(p))
    return {"dir": d, "sources": sources, "out": out, "phases": phases,
            "df": pd.read_parquet(out / "scores.parquet")}


def hf_response_nll(model, tokenizer, run_meta, pair, side):
    """A response's summed NLL under ``model`` from HF alone (prompt + response, labels on the
    response's tokens only): ``model(ids, labels).loss`` times the response's token count."""
    from curation.data.templates import Encoded, encode, resolve_template
    from curation.scoring.losses import reference_loss

    template = resolve_template(tokenizer, "auto")
    enc = encode(tokenizer, template, pair.sft_messages(side), run_meta["max_length"])
    target = enc.target.copy()
    target[: enc.response_start] = False
    return reference_loss(model, Encoded(enc.input_ids, target, enc.n_tokens_full, enc.truncated)) * int(target.sum())


def recomputed(out: Path, model_dirs: dict[str, str], tiny_lm) -> dict[str, dict]:
    """Each pair's responses' summed NLL, ``{model name: {side: (n_pairs,)}}``, from HF per model."""
    from transformers import AutoModelForCausalLM

    run = Run(out)
    meta, df = run.meta(), run.scores()
    pairs = {p.pair_id: p for p in run.load_pairs()}
    out_sums = {}
    for name, path in model_dirs.items():
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        out_sums[name] = {s: np.array([hf_response_nll(model, tiny_lm.tokenizer, meta, pairs[pid], s)
                                       for pid in df["pair_id"]]) for s in SIDES}
    return out_sums


def test_the_learn_columns_equal_their_formulas_from_the_base_and_the_trained_model(pair_learned, tiny_model_dir,
                                                                                      tiny_lm):
    """reward_x = beta (logp_trained - logp_base), davir_x = (L_base - L_trained) / L_base, their
    margins: recomputed from HF on the base model and on the trained checkpoint (multi-turn
    prompts' earlier assistant turns left out), to 1e-4."""
    out, df = pair_learned["out"], pair_learned["df"]
    assert list(df.columns[-len(PAIR_LEARN_COLUMNS):]) == list(PAIR_LEARN_COLUMNS)
    assert set(PAIR_COLUMNS) <= set(df.columns) and len(df) == 12 and df["scored"].all()
    L = recomputed(out, {"base": str(tiny_model_dir), "trained": str(out / "train" / "ckpt-1")}, tiny_lm)
    beta = 0.1
    for s in SIDES:
        np.testing.assert_allclose(df[f"loss_{s}"] * df[f"n_{s}_tokens"], L["base"][s], rtol=1e-4)
        np.testing.assert_allclose(df[f"reward_{s}"], beta * (L["base"][s] - L["trained"][s]), atol=1e-4)
        np.testing.assert_allclose(df[f"davir_{s}"], (L["base"][s] - L["trained"][s]) / L["base"][s], atol=1e-4)
    for k in ("reward", "davir"):
        np.testing.assert_allclose(df[f"{k}_margin"], df[f"{k}_chosen"] - df[f"{k}_rejected"], rtol=1e-12)
    assert (df["reward_chosen"] != 0).all()  # the reference moved
    # token_losses_ref: the trained model's losses of the response's own tokens.
    tokens = pd.read_parquet(out / "token_losses.parquet")
    assert len(tokens) == 24 and {"token_losses", "token_losses_ref"} <= set(tokens.columns)
    by_id = {(r.pair_id, r.side): float(np.sum(np.asarray(r.token_losses_ref, np.float64)))
             for r in tokens.itertuples()}
    for s in SIDES:
        np.testing.assert_allclose([by_id[(p, s)] for p in df["pair_id"]], L["trained"][s], rtol=1e-2)


def test_a_pair_learn_run_keeps_the_dpo_curve_and_says_what_it_did(pair_learned):
    out = pair_learned["out"]
    curve = read_train_curve(out)
    meta = Run(out).meta()
    train = json.loads((out / "train" / "train.json").read_text())
    assert len(curve) == train["total_steps"] == meta["train"]["total_steps"] > 1
    assert curve["step"].tolist() == list(range(1, len(curve) + 1))
    for col in ("loss", "reward_accuracy", "reward_chosen", "reward_rejected", "reward_margin", "davir_margin", "lr"):
        assert curve[col].notna().all(), col
    assert curve["reward_accuracy"].between(0, 1).all()
    assert meta["data"] == "pairs" and meta["kind"] == "learn" and Run(out).holds_pairs
    assert meta["dpo"] == {"loss": "davir", "beta": 0.1, "lr": 1e-3} and meta["not_trained"] == []
    assert set(meta["not_applied"]) == {"checkpoints", "n_clusters", "ifd"}
    assert meta["training"]["dpo_loss"] == "davir"
    phases = {p["phase"] for p in pair_learned["phases"]}
    assert {"scoring pairs (base model)", "training reference model (DPO)",
            "scoring pairs (trained reference)"} <= phases


class Stop(Exception):
    pass


def test_a_killed_pair_learn_run_resumes_to_the_same_tables(pair_learned, tiny_model_dir, tmp_path):
    """Killed once in training and once while scoring under the trained model; the finished tables
    equal the uninterrupted run's, and the committed chunk is not scored again."""
    cfg = learn_cfg(pair_learned["sources"], tmp_path / "run", tiny_model_dir, tmp_path / "cache", save_every_s=0.0)

    seen = {}
    for phase, when in (("training reference model (DPO)", "done"), ("scoring pairs (trained reference)", "committed")):
        seen[phase] = []

        def stop(**p):
            seen[phase].append(p)
            if p["phase"] == phase and p.get(when) == (2 if when == "done" else 1):
                raise Stop

        with pytest.raises(Stop):
            run_learn(cfg, progress=stop)
    # The second session's training went on from the state saved at step 1 (step 2 was killed before its save).
    trained = [p["done"] for p in seen["scoring pairs (trained reference)"] if p["phase"].startswith("training")]
    assert trained[0] == 2 and trained[-1] > 2
    phases = []
    out = run_learn(cfg, progress=lambda **p: phases.append(p))
    resumed = [p for p in phases if p["phase"] == "scoring pairs (trained reference)" and "cached" in p]
    assert resumed[0]["cached"] >= 2  # the committed chunk (2 pairs of 4 responses) was kept
    assert not any(p["phase"].startswith("training") for p in phases)  # finished: not trained again
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), pair_learned["df"])
    pd.testing.assert_frame_equal(read_train_curve(out), read_train_curve(pair_learned["out"]))


def test_settings_that_do_not_apply_to_pairs_are_refused_in_one_line(pair_learned, tiny_model_dir, tmp_path):
    sources = pair_learned["sources"]
    for kw, flag in (({"checkpoints": 6}, "--checkpoints"), ({"n_clusters": 5}, "--clusters"),
                     ({"reference": str(tiny_model_dir)}, "--reference"), ({"stability_runs": 2}, "--stability-runs")):
        with pytest.raises(ValueError, match=f"not for preference pairs: {flag} ") as e:
            run_learn(learn_cfg(sources, tmp_path / "r", tiny_model_dir, tmp_path / "c", **kw))
        assert "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()  # refused before anything was written
    refuse_unused_settings(learn_cfg(sources, tmp_path / "r", tiny_model_dir, tmp_path / "c", ifd=False), "pairs")


def test_dpo_settings_on_sft_examples_are_refused_in_one_line(tiny_model_dir, tmp_path):
    from tests.conftest import math_rows

    sft = [f"math={write_jsonl(tmp_path / 'gsm.jsonl', math_rows(4))}"]
    with pytest.raises(ValueError, match="--dpo-loss, --beta: DPO settings, for preference pairs"):
        run_learn(learn_cfg(sft, tmp_path / "r", tiny_model_dir, tmp_path / "c", dpo_loss="sigmoid", beta=0.5))
    with pytest.raises(ValueError, match="beta must be a number"):
        learn_cfg(sft, tmp_path / "r", tiny_model_dir, tmp_path / "c", beta=0)


def test_the_sft_learn_run_key_ignores_the_dpo_settings(tmp_path):
    a = learn_cfg(["x.jsonl"], tmp_path / "r", "m", tmp_path / "c")
    assert "dpo_loss" not in a.result_key() and "beta" not in a.result_key()


def test_sigmoid_and_beta_train_another_reference_in_another_run(pair_learned, tiny_model_dir, tmp_path):
    """--dpo-loss sigmoid --beta 0.5: another run key (the folder of the default run is refused),
    rewards scaled by its beta."""
    from curation.runs.folder import RunMismatch

    cfg = learn_cfg(pair_learned["sources"], pair_learned["out"], tiny_model_dir, pair_learned["dir"] / "cache",
                    dpo_loss="sigmoid", beta=0.5, epochs=1)
    with pytest.raises(RunMismatch):
        run_learn(cfg)
    out = run_learn(learn_cfg(pair_learned["sources"], tmp_path / "run", tiny_model_dir, pair_learned["dir"] / "cache",
                              dpo_loss="sigmoid", beta=0.5, epochs=1))
    df = pd.read_parquet(out / "scores.parquet")
    meta = Run(out).meta()
    assert meta["dpo"]["loss"] == "sigmoid" and "davir_margin" not in read_train_curve(out).columns
    drop = {s: df[f"davir_{s}"] * df[f"loss_{s}"] * df[f"n_{s}_tokens"] for s in SIDES}  # L_base - L_trained
    for s in SIDES:
        np.testing.assert_allclose(df[f"reward_{s}"], 0.5 * drop[s], rtol=1e-9, atol=1e-12)
    pd.testing.assert_frame_equal(df[list(PAIR_COLUMNS)], pair_learned["df"][list(PAIR_COLUMNS)])  # one base pass


def test_heldout_folds_score_each_pair_under_a_model_trained_without_it(pair_learned, tiny_model_dir, tiny_lm,
                                                                        tmp_path):
    out = run_learn(learn_cfg(pair_learned["sources"], tmp_path / "run", tiny_model_dir, pair_learned["dir"] / "cache",
                              heldout_folds=3, epochs=1))
    df = pd.read_parquet(out / "scores.parquet")
    assert list(df.columns[-3:]) == ["fold", *PAIR_HELDOUT_COLUMNS]
    assert sorted(np.bincount(df["fold"]).tolist()) == [4, 4, 4]
    for f in range(3):
        rows = df[df["fold"] == f]
        L = recomputed(out, {"base": str(tiny_model_dir), "held": str(out / "folds" / f"fold-{f}" / "ckpt-1")},
                       tiny_lm)
        sel = (df["fold"] == f).to_numpy()
        lr = {s: L["base"][s][sel] - L["held"][s][sel] for s in SIDES}
        np.testing.assert_allclose(rows["reward_margin_heldout"], 0.1 * (lr["chosen"] - lr["rejected"]), atol=1e-4)
        np.testing.assert_allclose(rows["davir_margin_heldout"], lr["chosen"] / L["base"]["chosen"][sel]
                                   - lr["rejected"] / L["base"]["rejected"][sel], atol=1e-4)
    assert (df["reward_margin"] != df["reward_margin_heldout"]).any()  # the reference saw every pair, they did not
    agreement = Run(out).meta()["heldout_agreement"]["chat"]  # how the in-sample margins rank like the held-out
    for m in ("reward_margin", "davir_margin"):
        want = df[m].corr(df[f"{m}_heldout"], method="spearman")
        assert agreement[m]["n"] == 12 and agreement[m]["spearman"] == pytest.approx(want, abs=1e-12)


def test_cli_learn_on_pairs_prints_the_learn_columns_and_refuses_sft_settings_in_one_line(pair_learned,
                                                                                         tiny_model_dir, run_cli):
    """`learn PAIRS` re-run on the finished run folder: its summary; an SFT-only setting: one line, exit 2."""
    common = [*pair_learned["sources"], "--model", tiny_model_dir, "--cache", pair_learned["dir"] / "cache",
              "--max-length", "96", "--lr", "1e-3", "--epochs", "2", "--train-batch-tokens", "256", "--grad-accum", "2",
              "--batch-tokens", "512", "--chunk-examples", "4"]
    r = run_cli("learn", *common, "--out", pair_learned["out"])
    assert r.returncode == 0, r.stderr
    assert "(12 pairs, 12 scored)" in r.stdout and "reward_margin" in r.stdout and "DPO (davir, beta 0.1" in r.stdout
    r = run_cli("learn", *common, "--out", pair_learned["dir"] / "other", "--checkpoints", "7")
    assert r.returncode == 2 and "not for preference pairs: --checkpoints" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.integration  # a real Ray instance
def test_a_pair_learn_run_on_two_ray_workers_equals_the_local_run(pair_learned, tiny_model_dir, tmp_path):
    """--engine ray: the pair passes on Ray workers, the DPO training on two Ray Train workers (DDP):
    the same tables and curve as the local run, up to the order of float sums."""
    pytest.importorskip("ray", reason="--engine ray needs the ray package (requirements.txt)")
    out = run_learn(learn_cfg(pair_learned["sources"], tmp_path / "ray", tiny_model_dir, tmp_path / "cache",
                              engine="ray", workers=2))
    A, B = pair_learned["df"], pd.read_parquet(out / "scores.parquet")
    assert list(A.columns) == list(B.columns) and A["pair_id"].tolist() == B["pair_id"].tolist()
    cols = [*PAIR_COLUMNS, *PAIR_LEARN_COLUMNS]
    np.testing.assert_allclose(A[cols].to_numpy(float), B[cols].to_numpy(float), atol=1e-5, rtol=0)
    ca, cb = read_train_curve(pair_learned["out"]), read_train_curve(out)
    assert ca["step"].tolist() == cb["step"].tolist() and ca["tokens"].tolist() == cb["tokens"].tolist()
    np.testing.assert_allclose(ca[["loss", "reward_margin"]].to_numpy(), cb[["loss", "reward_margin"]].to_numpy(),
                               atol=1e-5, rtol=0)


@pytest.mark.integration  # the real default model
def test_learn_on_20_default_pairs_writes_the_reward_and_davir_columns_and_the_curve(tmp_path):
    """The default CHAMP pairs (make setup writes them) on the default model, 1 epoch: every learn
    column finite and consistent with its formula, the DPO curve in the run folder."""
    pytest.importorskip("champ_dataset", reason="the default pairs need the champ-dataset wheel (make setup)")
    from curation.data.default_data import prepare_default_data

    prepare_default_data(tmp_path / "ws")
    out = run_learn(LearnConfig(sources=[str(tmp_path / "ws" / "pairs" / "math.jsonl")], out=str(tmp_path / "run"),
                                limit=20, epochs=1, cache=str(tmp_path / "cache")))
    df = pd.read_parquet(out / "scores.parquet")
    meta = Run(out).meta()
    assert len(df) == 20 and df["scored"].all() and meta["dpo"] == {"loss": "davir", "beta": 0.1, "lr": 5e-6}
    assert np.isfinite(df[list(PAIR_LEARN_COLUMNS)].to_numpy()).all() and (df["reward_chosen"] != 0).all()
    for s in SIDES:  # davir_x = (L_base - L_trained) / L_base = reward_x / beta / L_base (summed NLL)
        np.testing.assert_allclose(df[f"davir_{s}"], df[f"reward_{s}"] / 0.1 / (df[f"loss_{s}"] * df[f"n_{s}_tokens"]),
                                   rtol=1e-9)
    assert len(read_train_curve(out)) == meta["train"]["total_steps"] > 0
