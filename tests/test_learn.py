"""The learn run end to end on the tiny model: table, formulas, IFD, resume, cache, reference,
held-out folds, provenance and the CLI."""

import json

import numpy as np
import pandas as pd
import pytest

from curation.runs.learn import LearnConfig, assign_folds, run_learn
from curation.scoring.models import ModelError
from curation.runs.folder import SCORE_COLUMNS, RunMismatch
from curation.runs.score import ScoreConfig, run_score
from tests.conftest import Planted, math_rows, write_jsonl

TRAJ = ["loss_ckpt_0", "loss_ckpt_1", "loss_ckpt_2", "loss_ckpt_3"]
LEARN_COLUMNS = SCORE_COLUMNS + TRAJ + ["loss_base", "loss_ref", "davir", "rho", "ifd", "ppl_base", "s2l_cluster"]


def make_pool(tmp_path, n_math=12, n_chat=9):
    math = write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"} for k in range(n_math)
    ] + [{"question": "broken"}])
    chat = tmp_path / "alpaca.json"
    chat.write_text(json.dumps([
        {"instruction": f"Say something about the fox number {k}.", "input": "", "output": "The quick brown fox " * (k + 1)}
        for k in range(n_chat)
    ]))
    return [f"math={math}", f"chat={chat}"]


def learn_cfg(pool, out, model, cache, **kw):
    args = {"checkpoints": 3, "lr": 1e-2, "epochs": 2, "train_batch_tokens": 256, "max_length": 64,
            "batch_tokens": 512, "chunk_examples": 8, "cache": str(cache)}
    args.update(kw)
    return LearnConfig(sources=pool, out=str(out), model=str(model), **args)


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("learn")
    pool = make_pool(d)
    phases = []
    out = run_learn(learn_cfg(pool, d / "run", tiny_model_dir, d / "cache"), progress=lambda **p: phases.append(p))
    return {"dir": d, "pool": pool, "out": out, "phases": phases, "df": pd.read_parquet(out / "scores.parquet")}


def test_table_columns_and_formulas(learned):
    df = learned["df"]
    assert list(df.columns) == LEARN_COLUMNS
    assert len(df) == 21 and df["example_id"].is_unique
    assert df["scored"].all()
    assert (df["loss_ckpt_0"] == df["loss"]).all()
    np.testing.assert_array_equal(df["loss_base"], df["loss_ckpt_0"])
    np.testing.assert_array_equal(df["loss_ref"], df["loss_ckpt_3"])
    np.testing.assert_allclose(df["davir"], (df["loss_ckpt_0"] - df["loss_ckpt_3"]) / df["loss_ckpt_0"], rtol=1e-12)
    np.testing.assert_allclose(df["rho"], df["loss_ckpt_0"] - df["loss_ckpt_3"], rtol=1e-12)
    np.testing.assert_allclose(df["ppl_base"], np.exp(df["loss_ckpt_0"]), rtol=1e-12)
    assert (df["loss_ref"] < df["loss_base"]).mean() > 0.9  # the reference learned the pool
    assert df["s2l_cluster"].between(0, 1).all()  # 21 rows -> at most 2 clusters
    assert df["ifd"].notna().all()


def test_loss_ckpt_0_equals_the_score_run(learned, tiny_model_dir, tmp_path):
    out = run_score(ScoreConfig(sources=learned["pool"], out=str(tmp_path / "s"), model=str(tiny_model_dir),
                                max_length=64, batch_tokens=512))
    s = pd.read_parquet(out / "scores.parquet")
    df = learned["df"]
    pd.testing.assert_frame_equal(df[SCORE_COLUMNS], s[SCORE_COLUMNS])
    assert (out / "rejected.jsonl").read_text() == (learned["out"] / "rejected.jsonl").read_text()
    tok = pd.read_parquet(learned["out"] / "token_losses.parquet")
    ref_tok = pd.read_parquet(out / "token_losses.parquet")
    pd.testing.assert_frame_equal(tok[list(ref_tok.columns)], ref_tok)
    assert [len(x) for x in tok["token_losses_ref"]] == df["n_response_tokens"].tolist()


def test_ifd_matches_an_unbatched_computation(learned, tiny_lm):
    """IFD = HF loss on the full example / HF loss on the response alone (the conversation
    rendered without its user turn), over the same assistant tokens, one example at a time."""
    import torch

    from curation.data.load import load_sources
    from curation.scoring.losses import reference_loss
    from curation.data.templates import encode, render, resolve_template

    df = learned["df"]
    t = resolve_template(tiny_lm.tokenizer)
    data = load_sources(LearnConfig(sources=learned["pool"], out="x").source_specs())
    for ex, row in zip(data.examples, df.itertuples()):
        full = encode(tiny_lm.tokenizer, t, ex.messages, 64)
        alone_text = render(tiny_lm.tokenizer, t, [m for m in ex.messages if m["role"] != "user"])
        ids = torch.tensor([tiny_lm.tokenizer(alone_text, add_special_tokens=False)["input_ids"]])
        n = full.n_response_tokens
        labels = torch.full_like(ids, -100)
        # Single turn: the whole response is the last tokens of the alone text; a truncated full
        # example scored only the first n of them.
        n_all = encode(tiny_lm.tokenizer, t, ex.messages, 10**6).n_response_tokens
        start = ids.shape[1] - n_all
        labels[0, start : start + n] = ids[0, start : start + n]
        with torch.inference_mode():
            alone_loss = float(tiny_lm.model(input_ids=ids, labels=labels).loss)
        expected = reference_loss(tiny_lm.model, full) / alone_loss
        assert row.ifd == pytest.approx(expected, rel=1e-4), ex.example_id
    run = json.loads((learned["out"] / "run.json").read_text())
    assert run["ifd_token_mismatches"] == 0


def test_provenance_and_refusal(learned, tiny_model_dir, tiny_lm):
    run = json.loads((learned["out"] / "run.json").read_text())
    assert run["kind"] == "learn" and run["finished"]
    assert run["model"]["fingerprint"] == tiny_lm.fingerprint
    assert run["checkpoints"] == 3 and run["seed"] == 0 and run["max_length"] == 64
    assert run["training"]["lr"] == 1e-2 and run["training"]["lora"] is False
    assert len(run["checkpoint_fingerprints"]) == 4 and len(set(run["checkpoint_fingerprints"])) == 4
    assert run["train"]["checkpoint_steps"][-1] == run["train"]["total_steps"] == len(run["train"]["loss_curve"])
    assert {"load", "score_base", "score_ifd", "train_session", "score_checkpoints"} <= set(run["timings_s"])
    phases = {p["phase"] for p in learned["phases"]}
    assert {"training reference model", "scoring checkpoint 2/3", "scoring responses alone (IFD)"} <= phases
    train_p = [p for p in learned["phases"] if p["phase"] == "training reference model"]
    assert all(k in train_p[-1] for k in ("done", "total", "tokens_per_s", "eta_s", "train_loss"))
    with pytest.raises(RunMismatch):
        run_learn(learn_cfg(learned["pool"], learned["out"], tiny_model_dir, learned["dir"] / "cache", seed=1))


def test_rerun_skips_everything_done(learned, tiny_model_dir):
    phases = []
    run_learn(learn_cfg(learned["pool"], learned["out"], tiny_model_dir, learned["dir"] / "cache"),
              progress=lambda **p: phases.append(p))
    assert not any(p["phase"] == "training reference model" for p in phases)
    scoring = [p for p in phases if p["phase"].startswith("scoring") and "cached" in p]
    assert scoring and all(p["cached"] == p["total"] == 21 for p in scoring)
    assert not any(p["phase"].startswith("loading ckpt") for p in phases)
    pd.testing.assert_frame_equal(pd.read_parquet(learned["out"] / "scores.parquet"), learned["df"])


class Stop(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_table(learned, tiny_model_dir, tmp_path):
    """Killed once in training and once in scoring; the finished table equals the uninterrupted one."""
    cfg = learn_cfg(learned["pool"], tmp_path / "run", tiny_model_dir, tmp_path / "cache", save_every_s=0.0)

    def stop_training(**p):
        if p["phase"].startswith("training") and p.get("done") == 3:
            raise Stop

    def stop_scoring(**p):
        if p["phase"] == "scoring checkpoint 2/3" and p.get("done", 0) > 8:  # after one commit
            raise Stop

    with pytest.raises(Stop):
        run_learn(cfg, progress=stop_training)
    with pytest.raises(Stop):
        run_learn(cfg, progress=stop_scoring)
    phases = []
    out = run_learn(cfg, progress=lambda **p: phases.append(p))
    ck2 = [p for p in phases if p["phase"] == "scoring checkpoint 2/3" and "cached" in p]
    assert ck2[0]["cached"] == 8  # the committed chunk was kept
    df = pd.read_parquet(out / "scores.parquet")
    cols = TRAJ + ["davir", "rho", "ifd"]
    np.testing.assert_allclose(df[cols].to_numpy(), learned["df"][cols].to_numpy(), atol=1e-6)


def test_cache_scores_only_new_rows_of_a_grown_pool(learned, tiny_model_dir, tmp_path):
    grown = make_pool(tmp_path, n_math=14, n_chat=9)  # two more math rows
    phases = []
    out = run_learn(learn_cfg(grown, tmp_path / "grown", tiny_model_dir, learned["dir"] / "cache"),
                    progress=lambda **p: phases.append(p))
    base = [p for p in phases if p["phase"].startswith("scoring checkpoint 0") and "cached" in p][0]
    ifd = [p for p in phases if p["phase"].startswith("scoring responses alone") and "cached" in p][0]
    assert base["total"] == 23 and base["cached"] == 21 and ifd["cached"] == 21
    df = pd.read_parquet(out / "scores.parquet").set_index("example_id")
    old = learned["df"].set_index("example_id")
    np.testing.assert_array_equal(df.loc[old.index, "loss_base"], old["loss_base"])
    np.testing.assert_array_equal(df.loc[old.index, "ifd"], old["ifd"])


def test_attached_reference_gives_a_two_point_trajectory(learned, tiny_model_dir, tmp_path):
    final = learned["out"] / "train" / "ckpt-3"
    out = run_learn(learn_cfg(learned["pool"], tmp_path / "ref", tiny_model_dir, learned["dir"] / "cache",
                              reference=str(final)))
    df = pd.read_parquet(out / "scores.parquet")
    assert "loss_ckpt_1" in df.columns and "loss_ckpt_2" not in df.columns
    np.testing.assert_array_equal(df["loss_ref"], learned["df"]["loss_ckpt_3"])  # same weights, cached
    np.testing.assert_array_equal(df["davir"], learned["df"]["davir"])
    run = json.loads((out / "run.json").read_text())
    assert run["reference"]["path"] == str(final) and run["train"] is None and run["checkpoints"] == 1


def test_lora_adapter_attaches_as_reference(learned, tiny_model_dir, tmp_path):
    """A LoRA learn run's last checkpoint is an adapter folder; attached, it is merged into the base."""
    lora = run_learn(learn_cfg(learned["pool"], tmp_path / "lora", tiny_model_dir, tmp_path / "cache",
                               lora=True, lr=3e-2, checkpoints=1, epochs=1))
    adapter = lora / "train" / "ckpt-1"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    out = run_learn(learn_cfg(learned["pool"], tmp_path / "ref", tiny_model_dir, tmp_path / "cache",
                              reference=str(adapter)))
    df, trained = pd.read_parquet(out / "scores.parquet"), pd.read_parquet(lora / "scores.parquet")
    np.testing.assert_array_equal(df["loss_ref"], trained["loss_ref"])  # same merged weights
    assert (df["loss_ref"] != df["loss_base"]).all()
    assert json.loads((out / "run.json").read_text())["reference"]["path"] == str(adapter)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(ModelError, match="adapter_model.safetensors"):
        run_learn(learn_cfg(learned["pool"], tmp_path / "ref2", tiny_model_dir, tmp_path / "cache2",
                            reference=str(adapter)))


def test_heldout_folds(learned, tiny_model_dir, tmp_path):
    out = run_learn(learn_cfg(learned["pool"], tmp_path / "ho", tiny_model_dir, learned["dir"] / "cache",
                              heldout_folds=2, checkpoints=1))
    df = pd.read_parquet(out / "scores.parquet")
    assert sorted(df["fold"].value_counts().tolist()) == [10, 11]
    assert df["loss_ref_heldout"].notna().all()
    np.testing.assert_allclose(df["davir_heldout"], (df["loss_base"] - df["loss_ref_heldout"]) / df["loss_base"])
    # A model that never saw an example fits it worse than the one trained on it.
    assert df["loss_ref_heldout"].median() > df["loss_ref"].median()
    assert (out / "folds" / "fold-1" / "ckpt-1" / "DONE").is_file()


def test_folds_are_balanced_and_seeded():
    f = assign_folds(10, 3, 0)
    assert sorted(np.bincount(f).tolist()) == [3, 3, 4]
    assert f.tolist() == assign_folds(10, 3, 0).tolist() != assign_folds(10, 3, 1).tolist()


def test_config_validation():
    with pytest.raises(ValueError, match="heldout.folds"):
        LearnConfig(sources=["x"], out="o", heldout_folds=1)
    with pytest.raises(ValueError, match="checkpoints"):
        LearnConfig(sources=["x"], out="o", checkpoints=0)
    with pytest.raises(ValueError, match="grad.accum"):
        LearnConfig(sources=["x"], out="o", grad_accum=0)


def test_cli_learn(learned, tiny_model_dir, capsys):
    from curation.cli import main

    args = ["learn", *learned["pool"], "--model", str(tiny_model_dir), "--out", str(learned["out"]),
            "--checkpoints", "3", "--lr", "1e-2", "--epochs", "2", "--train-batch-tokens", "256",
            "--max-length", "64", "--batch-tokens", "512", "--chunk-examples", "8",
            "--cache", str(learned["dir"] / "cache")]
    assert main(args) == 0  # same settings: finds everything done
    assert "loss_ref < loss_base on" in capsys.readouterr().out
    assert main(args[:-2] + ["--seed", "5"]) == 2  # another run in the same folder
    assert "holds another run" in capsys.readouterr().err
    assert main(["learn", *learned["pool"], "--out", "x", "--heldout-folds", "1"]) == 2


def test_a_planted_pickle_in_a_run_folder_is_never_read(tmp_path, tiny_model_dir, run_cli):
    """A pickled resume state (an earlier version's ``state.pt``, or one planted) is never
    unpickled: the run resumes from its own safetensors state and finishes; no code runs."""
    import pickle

    data = write_jsonl(tmp_path / "qa.jsonl", math_rows(6))
    out, marker = tmp_path / "run", tmp_path / "PWNED"

    def stop(**p):  # stopped when its training starts: a run folder whose training a re-run resumes
        if str(p.get("phase", "")).startswith("training"):
            raise Stop

    with pytest.raises(Stop):
        run_learn(LearnConfig(sources=[f"math={data}"], out=str(out), model=str(tiny_model_dir), checkpoints=1,
                              ifd=False, cache=str(tmp_path / "cache")), progress=stop)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "train" / "state.pt").write_bytes(pickle.dumps({"model": Planted(marker), "total_steps": 1}))
    r = run_cli("learn", f"math={data}", "--model", tiny_model_dir, "--out", out, "--checkpoints", "1", "--no-ifd",
                "--cache", tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert (out / "scores.parquet").is_file() and not marker.exists()
