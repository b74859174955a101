"""The score command end to end on a tiny model: tables, provenance, rejections, resume, errors."""

import json

import pandas as pd
import pytest

from curation.runs.folder import SCORE_COLUMNS, Run, RunMismatch
from curation.runs.score import ScoreConfig, run_score
from tests.conftest import write_jsonl


@pytest.fixture
def pool(tmp_path):
    math = write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": f"What is {k} + {k}?", "answer": f"{k} + {k} = {2 * k}\n#### {2 * k}"} for k in range(12)
    ] + [{"question": "broken"}])
    chat = tmp_path / "alpaca.json"
    chat.write_text(json.dumps([
        {"instruction": f"Say something about the fox number {k}.", "input": "", "output": "The quick brown fox " * (k + 1)}
        for k in range(9)
    ] + [{"instruction": "Say something about the fox number 0.", "input": "", "output": "The quick brown fox "}]))
    return [f"math={math}", f"chat={chat}"]


def cfg(pool, out, model, **kw):
    return ScoreConfig(sources=pool, out=str(out), model=str(model), chunk_examples=5, **kw)


def test_score_run_writes_tables(tmp_path, pool, tiny_model_dir, tiny_lm):
    from curation.scoring.losses import reference_loss
    from curation.data.templates import encode, resolve_template

    out = run_score(cfg(pool, tmp_path / "run", tiny_model_dir, max_length=60))
    df = pd.read_parquet(out / "scores.parquet")
    assert list(df.columns) == SCORE_COLUMNS
    assert len(df) == 21 and df["example_id"].is_unique
    assert df["domain"].value_counts().to_dict() == {"math": 12, "chat": 9}
    assert (df["source_index"].tolist()[:12] == list(range(12)))
    assert df["truncated"].sum() > 0
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert {(r["source"], r["source_index"]) for r in rejected} == {("gsm.jsonl", 12), ("alpaca.json", 9)}
    # loss equals HF's loss for the example alone
    from curation.data.load import load_sources
    data = load_sources(ScoreConfig(sources=pool, out="x").source_specs())
    t = resolve_template(tiny_lm.tokenizer)
    for ex, row in zip(data.examples, df.itertuples()):
        enc = encode(tiny_lm.tokenizer, t, ex.messages, 60)
        assert row.example_id == ex.example_id
        assert abs(row.loss - reference_loss(tiny_lm.model, enc)) < 1e-4
        assert row.loss_sum == pytest.approx(row.loss * row.n_response_tokens)
    tok = pd.read_parquet(out / "token_losses.parquet")
    assert tok["example_id"].tolist() == df["example_id"].tolist()
    assert [len(x) for x in tok["token_losses"]] == df["n_response_tokens"].tolist()
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["fingerprint"] == tiny_lm.fingerprint
    assert run["template"]["name"] == "chat" and run["max_length"] == 60
    assert [s["fingerprint"][:7] for s in run["sources"]] == ["sha256:", "sha256:"]


def test_examples_without_assistant_tokens_have_null_loss(tmp_path, pool, tiny_model_dir):
    out = run_score(cfg(pool, tmp_path / "run", tiny_model_dir, max_length=12))
    df = pd.read_parquet(out / "scores.parquet")
    assert (~df["scored"]).all() and df["loss"].isna().all() and df["truncated"].all()


def test_resume_skips_committed_chunks_and_gives_the_same_tables(tmp_path, pool, tiny_model_dir):
    full = run_score(cfg(pool, tmp_path / "a", tiny_model_dir, cache=str(tmp_path / "cache-a")))
    out = tmp_path / "b"
    run_score(cfg(pool, out, tiny_model_dir, cache=str(tmp_path / "cache-b")))
    # Simulate a kill after two chunks: drop the later committed chunks and the final tables.
    parts = Run(out).committed_parts()
    assert len(parts) == 5  # 21 examples in chunks of 5
    for p in parts[2:]:
        p.unlink()
    (out / "scores.parquet").unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in parts[:2]}
    phases = []
    run_score(cfg(pool, out, tiny_model_dir, cache=str(tmp_path / "cache-b")), progress=lambda **p: phases.append(p))
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())  # committed chunks not redone
    assert [p["cached"] for p in phases if p.get("phase") == "scoring"][0] == 10
    assert len(Run(out).committed_parts()) == 5
    a, b = pd.read_parquet(full / "scores.parquet"), pd.read_parquet(out / "scores.parquet")
    pd.testing.assert_frame_equal(a, b, atol=1e-6)


def test_runs_never_mix(tmp_path, pool, tiny_model_dir):
    run_score(cfg(pool, tmp_path / "run", tiny_model_dir))
    with pytest.raises(RunMismatch, match="holds another run"):
        run_score(cfg(pool, tmp_path / "run", tiny_model_dir, max_length=33))


def test_cli_score_and_clear_errors(tmp_path, pool, tiny_model_dir, run_cli):
    r = run_cli("score", *pool, "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--limit", "4")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "8 examples" in r.stdout
    assert "scoring" in r.stderr and "tok/s" in r.stderr  # progress bar
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"nothing": 1}])
    r = run_cli("score", str(bad), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2
    assert "\nerror: " in r.stderr and "bad.jsonl: no usable row" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("score", *pool, "--model", str(tmp_path), "--out", str(tmp_path / "o3"))
    assert r.returncode == 2 and "no config.json" in r.stderr


def test_a_pass_is_cut_so_that_every_ray_worker_gets_a_chunk():
    from curation.scoring.passes import chunk_groups, chunk_size

    assert chunk_size(150, 256) == 150  # one process: chunks of chunk_examples
    assert chunk_size(150, 256, workers=2) == 75  # an eval pass on 2 Ray workers: one chunk each
    assert chunk_size(1000, 256, workers=2) == 256  # a large pass: chunk_examples still bounds a kill's loss
    assert chunk_size(1, 256, workers=8) == 1 and chunk_size(0, 256, workers=2) == 1
    rows = [[j] for j in range(150)]
    assert [sum(map(len, c)) for c in chunk_groups(rows, chunk_size(150, 256, workers=2))] == [75, 75]
    pairs = [[2 * j, 2 * j + 1] for j in range(5)]  # a pair is never split: 5 pairs on 2 workers are 3 + 2 pairs
    assert [sum(map(len, c)) for c in chunk_groups(pairs, chunk_size(10, 256, workers=2, group=2))] == [6, 4]
