"""The pair score run (``score`` on preference pairs) end to end on a tiny model: the design's
layout, each response exact against HF alone, rejections with reasons, the score cache shared with
SFT runs, resume after a kill, a mix of pairs and SFT refused; on the real model (integration)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from curation.data.load import SourceSpec
from curation.data.pairs import load_pairs, trl_row
from curation.runs.folder import Run, read_pairs
from curation.runs.pair_tables import PAIR_EXAMPLE_COLUMNS, PAIR_SCORE_COLUMNS, PAIR_TOKEN_COLUMNS, RATING_COLUMNS
from curation.runs.score import ScoreConfig, run_score
from tests.conftest import ROOT, SHARED_DATA, write_jsonl

WORDS = "the fox jumps over lazy dog clips sold April May 48 72 1 + 2 = 3 eat sleep well".split()
MAX_LENGTH = 160


def user(text):
    return {"role": "user", "content": text}


def pair_rows(n=14, seed=0):
    """TRL conversational pairs: some multi-turn prompts, some with a system prompt, some rated,
    one truncated, one whose response falls beyond MAX_LENGTH, a duplicate, two sharing a chosen."""
    rng = np.random.default_rng(seed)

    def words(lo, hi):
        return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))))

    rows = []
    for k in range(n):
        prompt = [user(f"question {k}: " + words(2, 8))]
        if k % 3 == 0:
            prompt = [user(words(2, 6)), {"role": "assistant", "content": words(2, 6)}, *prompt]
        if k % 4 == 1:
            prompt = [{"role": "system", "content": "Be kind."}, *prompt]
        rating = (float(rng.integers(6, 10)), float(rng.integers(1, 6))) if k % 2 else (None, None)
        rows.append(trl_row(prompt, words(1, 16), words(1, 16), *rating))
    rows.append(trl_row([user("long answer")], " ".join(WORDS * 8), "short"))  # chosen truncated, kept
    rows.append(trl_row([user(" ".join(WORDS * 6))], "cut off", "also cut off"))  # no response token left
    rows.append(dict(rows[2]))  # an exact duplicate
    rows.append(trl_row(rows[4]["prompt"], rows[4]["chosen"][0]["content"], "another rejected"))  # shares a chosen
    return rows


@pytest.fixture
def pair_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", pair_rows())


def cfg(sources, out, model, **kw):
    return ScoreConfig(sources=sources, out=str(out), model=str(model), max_length=kw.pop("max_length", MAX_LENGTH),
                       chunk_examples=kw.pop("chunk_examples", 5), **kw)


def response_reference(lm, template, pair, side, max_length):
    """HF's loss of one response alone: ``model(input_ids, labels).loss`` on prompt + that
    response, labels on the response's tokens only (the final assistant turn)."""
    from curation.data.templates import Encoded, encode
    from curation.scoring.losses import reference_loss

    enc = encode(lm.tokenizer, template, pair.sft_messages(side), max_length)
    target = enc.target.copy()
    target[: enc.response_start] = False
    return reference_loss(lm.model, Encoded(enc.input_ids, target, enc.n_tokens_full, enc.truncated)), enc


def test_a_pair_run_writes_the_design_layout_and_each_response_equals_hf_alone(tmp_path, pair_file, tiny_model_dir,
                                                                               tiny_lm):
    """examples, scores, token_losses and embeddings as the design lists them; the run reads back
    (generic columns, prompt texts, a response's messages and tokens, search, methods)."""
    from curation.data.templates import resolve_template
    from curation.scores import available_methods

    seen = []
    out = run_score(cfg([f"chat={pair_file}"], tmp_path / "run", tiny_model_dir), progress=lambda **p: seen.append(p))
    run = Run(out)
    examples, scores = pd.read_parquet(out / "examples.parquet"), pd.read_parquet(out / "scores.parquet")
    assert list(examples.columns) == PAIR_EXAMPLE_COLUMNS + RATING_COLUMNS
    assert list(scores.columns) == PAIR_SCORE_COLUMNS + RATING_COLUMNS
    rejected = run.rejected()
    assert len(scores) + len(rejected) == len(pair_rows())  # rows in = pairs scored + rejected
    reasons = sorted(r["reason"].split(" (")[0] for r in rejected)
    assert reasons[0].startswith(f"chosen: no token of the response within max length {MAX_LENGTH}")
    assert reasons[1].startswith("exact duplicate of pair")
    assert scores["scored"].all() and scores["truncated"].sum() == 1 and examples["truncated_chosen"].sum() == 1
    meta = run.meta()
    assert meta["data"] == run.provenance()["data"] == "pairs" and meta["n_examples"] == len(pair_rows()) - 1
    # Each response's loss is HF's for prompt + that response alone; the margins follow from the sums.
    pairs = {p.pair_id: p for p in load_pairs([SourceSpec(str(pair_file), domain="chat")]).pairs}
    template = resolve_template(tiny_lm.tokenizer)
    for row in scores.itertuples():
        for side in ("chosen", "rejected"):
            ref, enc = response_reference(tiny_lm, template, pairs[row.pair_id], side, MAX_LENGTH)
            assert abs(getattr(row, f"loss_{side}") - ref) < 1e-4, (row.pair_id, side)
            assert getattr(row, f"n_{side}_tokens") == int(enc.target[enc.response_start:].sum())
            assert row.n_prompt_tokens == enc.response_start
        sums = row.loss_chosen * row.n_chosen_tokens, row.loss_rejected * row.n_rejected_tokens
        assert row.margin_sum == pytest.approx(sums[1] - sums[0], abs=1e-6)
        assert row.margin_mean == pytest.approx(row.loss_rejected - row.loss_chosen, abs=1e-12)
        assert row.len_diff == row.n_chosen_tokens - row.n_rejected_tokens
        pair = pairs[row.pair_id]
        if pair.rating_margin is None:
            assert np.isnan(row.rating_margin)
        else:
            assert row.rating_margin == pair.rating_margin
    # token_losses: one row per response, its own tokens.
    tokens = pd.read_parquet(out / "token_losses.parquet")
    assert list(tokens.columns) == PAIR_TOKEN_COLUMNS and len(tokens) == 2 * len(scores)
    assert tokens["side"].tolist() == ["chosen", "rejected"] * len(scores)
    assert tokens["example_id"].tolist() == [pairs[p].sft_id(s) for p in scores["pair_id"]
                                             for s in ("chosen", "rejected")]
    assert [len(t) for t in tokens["token_losses"]] == [n for r in scores.itertuples()
                                                         for n in (r.n_chosen_tokens, r.n_rejected_tokens)]
    # The prompt's embedding, one per pair, serves both kinds.
    ids, matrix = run.embeddings()
    assert ids == scores["pair_id"].tolist() and matrix.shape[0] == len(scores) and not np.isnan(matrix).any()
    assert run.embeddings("rds")[0] == ids and (run.embeddings("rds")[1] == matrix).all()
    np.testing.assert_allclose(np.linalg.norm(matrix.astype(np.float32), axis=1), 1, atol=2e-3)
    # The generic columns, prompt texts, a response's messages and tokens.
    df = run.scores()
    assert (df["example_id"] == df["pair_id"]).all()
    assert (df["n_response_tokens"] == df["n_chosen_tokens"] + df["n_rejected_tokens"]).all()
    assert run.columns() == list(df.columns)
    first = pairs[df["pair_id"][0]]
    assert run.texts()[first.pair_id] == "\n".join(m["content"] for m in first.prompt)
    rid = first.sft_id("rejected")
    assert run.example(first.source, first.source_index, rid) == first.sft_messages("rejected")
    assert run.example(first.source, first.source_index, first.pair_id) == first.prompt
    [(record, pair)] = read_pairs(run.provenance(), [{"source": first.source, "source_index": first.source_index,
                                                     "pair_id": first.pair_id}])
    assert pair == first and record == pair_rows()[first.source_index]
    assert run.token_losses(rid)["side"] == "rejected"
    assert run.search("QUESTION 1:") == {p for p, pair in pairs.items() if "question 1:" in pair.prompt[-1]["content"]}
    offered = [m for m, why in available_methods(run.columns()).items() if why is None]
    assert offered == ["longest", "random", "margin_sum", "margin_mean", "loss_chosen", "loss_rejected", "len_diff",
                       "rating_margin"]
    # Progress counts pairs; a chunk never splits a pair (the fifth pair shares its chosen with the last).
    scoring = [p for p in seen if p.get("phase") == "scoring"]
    assert {p["unit"] for p in scoring} == {"pairs"} and scoring[-1]["done"] == scoring[-1]["total"] == len(scores)
    part_of = {}
    for k, part in enumerate(run.committed_parts()):
        part_of.update(dict.fromkeys(pd.read_parquet(part, columns=["example_id"])["example_id"], k))
    assert len(part_of) == 2 * len(scores) - 1  # the shared chosen is scored once, with the fifth pair
    for p in scores["pair_id"][:-1]:
        assert part_of[pairs[p].sft_id("chosen")] == part_of[pairs[p].sft_id("rejected")]


def test_a_pair_the_template_cannot_render_is_rejected_with_its_reason(tmp_path, tiny_model_dir):
    # This template renders a conversation ending with an assistant turn that says BREAK with a
    # different start, so that turn is not a prefix of the whole: its tokens cannot be located.
    template = tmp_path / "odd.jinja"
    template.write_text("{% if messages[-1]['role'] == 'assistant' and 'BREAK' in messages[-1]['content'] %}!"
                        "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    rows = [trl_row([user("a")], "fox", "dog"), trl_row([user("b")], "fox", "BREAK dog")]
    out = run_score(cfg([str(write_jsonl(tmp_path / "p.jsonl", rows))], tmp_path / "run", tiny_model_dir,
                        template=str(template)))
    assert len(pd.read_parquet(out / "scores.parquet")) == 1
    [rej] = Run(out).rejected()
    assert rej["source_index"] == 1 and rej["reason"].startswith("rejected: the chat template does not render turn 1")


def sft_file_of(pairs_path, out):
    """An SFT file of every pair's two responses (``Pair.sft_messages``)."""
    pairs = load_pairs([SourceSpec(str(pairs_path))]).pairs
    return write_jsonl(out, [{"messages": p.sft_messages(s)} for p in pairs for s in ("chosen", "rejected")])


def test_an_sft_run_over_the_pairs_responses_shares_their_cache_rows(tmp_path, pair_file, tiny_model_dir):
    sft = sft_file_of(pair_file, tmp_path / "sft.jsonl")
    fresh = run_score(cfg([str(pair_file)], tmp_path / "fresh", tiny_model_dir, cache=str(tmp_path / "c0")))
    # SFT first: the pair run scores nothing.
    run_score(cfg([str(sft)], tmp_path / "sft-a", tiny_model_dir, cache=str(tmp_path / "c1")))
    seen = []
    out = run_score(cfg([str(pair_file)], tmp_path / "pairs-a", tiny_model_dir, cache=str(tmp_path / "c1")),
                    progress=lambda **p: seen.append(p))
    first = next(p for p in seen if p.get("phase") == "scoring")
    assert first["cached"] == first["total"] and not any(p.get("committed") for p in seen)
    a, b = pd.read_parquet(fresh / "scores.parquet"), pd.read_parquet(out / "scores.parquet")
    pd.testing.assert_frame_equal(a, b, atol=1e-5)
    # Pairs first: the SFT run over the same conversations scores nothing (the rows keep every embedding).
    run_score(cfg([str(pair_file)], tmp_path / "pairs-b", tiny_model_dir, cache=str(tmp_path / "c2")))
    seen = []
    run_score(cfg([str(sft)], tmp_path / "sft-b", tiny_model_dir, cache=str(tmp_path / "c2")),
              progress=lambda **p: seen.append(p))
    first = next(p for p in seen if p.get("phase") == "scoring")
    sft_rows = len(pd.read_parquet(tmp_path / "sft-b" / "scores.parquet"))
    assert first["cached"] == sft_rows - 2 and first["unit"] == "examples"  # all but the pair cut before its response


def test_a_cache_row_without_the_prompt_embedding_is_scored_again(tmp_path, pair_file, tiny_model_dir):
    """Rows written before prompt_rds was kept: the pair pass scores them again to get it."""
    import pyarrow.parquet as pq

    out = run_score(cfg([str(pair_file)], tmp_path / "run", tiny_model_dir, cache=str(tmp_path / "c")))
    for part in Run(out).committed_parts():
        pq.write_table(pq.read_table(part).drop_columns(["prompt_rds"]), part)
    (out / "scores.parquet").unlink()
    seen = []
    run_score(cfg([str(pair_file)], tmp_path / "run", tiny_model_dir, cache=str(tmp_path / "c")),
              progress=lambda **p: seen.append(p))
    assert next(p for p in seen if p.get("phase") == "scoring")["cached"] == 0
    assert not np.isnan(Run(out).embeddings()[1]).any()


KILL_AFTER_TWO_COMMITS = """import os, signal, sys
from curation.runs.score import ScoreConfig, run_score
def progress(**p):
    if p.get("committed") == 2:
        os.kill(os.getpid(), signal.SIGKILL)
run_score(ScoreConfig(sources=[sys.argv[1]], out=sys.argv[2], model=sys.argv[3], cache=sys.argv[4],
                      max_length=int(sys.argv[5]), chunk_examples=5), progress=progress)
"""


def test_a_pair_run_killed_after_a_commit_resumes_equal_to_an_uninterrupted_one(tmp_path, pair_file, tiny_model_dir):
    full = run_score(cfg([str(pair_file)], tmp_path / "full", tiny_model_dir, cache=str(tmp_path / "c1")))
    out, cache = tmp_path / "killed", tmp_path / "c2"
    r = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_COMMITS, str(pair_file), str(out), str(tiny_model_dir),
                        str(cache), str(MAX_LENGTH)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    parts = Run(out).committed_parts()
    assert len(parts) == 2 and not (out / "scores.parquet").exists()
    # While unfinished, the run shows the pairs whose two responses are committed, as they will be.
    partial, done = Run(out).scores(), pd.read_parquet(full / "scores.parquet")
    assert len(partial) == Run(out).n_rows() == 4 and (partial["example_id"] == partial["pair_id"]).all()
    pd.testing.assert_frame_equal(partial[done.columns], done.iloc[:4])
    mtimes = {p: p.stat().st_mtime_ns for p in parts}
    seen = []
    run_score(cfg([str(pair_file)], out, tiny_model_dir, cache=str(cache)), progress=lambda **p: seen.append(p))
    assert next(p for p in seen if p.get("phase") == "scoring")["cached"] >= 4  # two chunks of whole pairs kept
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())
    for name in ("scores.parquet", "examples.parquet", "token_losses.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(full / name), pd.read_parquet(out / name))
    assert (Run(full).embeddings()[1] == Run(out).embeddings()[1]).all()


def cli(*args):
    return subprocess.run([sys.executable, "-m", "curation", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_scores_pairs_with_a_forced_format_and_refuses_a_mix_in_one_line(tmp_path, pair_file, tiny_model_dir):
    r = cli("score", str(pair_file), "--format", "trl-conversational", "--model", str(tiny_model_dir), "--out",
            str(tmp_path / "o"), "--limit", "4", "--max-length", str(MAX_LENGTH))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "(4 pairs," in r.stdout and "pairs/s" in r.stderr
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [user("hi"), {"role": "assistant", "content": "hello"}]}])
    mixed = write_jsonl(tmp_path / "mixed.jsonl", pair_rows(3) + [{"question": "1+1?", "answer": "2"}])
    for args, says in (([str(pair_file), str(sft)], "holds preference pairs and"),
                       ([str(mixed)], "mixes preference pairs and SFT examples")):
        r = cli("score", *args, "--model", str(tiny_model_dir), "--out", str(tmp_path / "x"))
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.integration
@pytest.mark.parametrize("which", ["default pairs", "dpo_en_demo"])
def test_real_pairs_on_the_default_model_equal_hf_alone(tmp_path, which):
    """A few real pairs (the default CHAMP pairs; LLaMA-Factory's demo, multi-turn prompts among
    them) on the real default model: each response's loss is HF's for prompt + it alone, to 1e-4."""
    from curation.data.templates import resolve_template
    from curation.scoring.models import load_model

    if which == "dpo_en_demo":
        demo = SHARED_DATA / "dpo_en_demo" / "dpo_en_demo.json"
        if not demo.is_file():
            pytest.skip(f"{demo} (LLaMA-Factory's pair demo in ../shared/data) is not next to this clone")
        source = tmp_path / "demo.json"  # two one-turn prompts and a multi-turn one
        source.write_text(json.dumps([json.loads(demo.read_text())[i] for i in (0, 4, 5)]))
    else:
        pytest.importorskip("champ_dataset", reason="the default pairs need the champ-dataset wheel (make setup)")
        from curation.data.default_data import prepare_default_data

        prepare_default_data(tmp_path / "ws")
        source = tmp_path / "ws" / "pairs" / "math.jsonl"
    out = run_score(ScoreConfig(sources=[str(source)], out=str(tmp_path / "run"), limit=3, max_length=1024))
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 3 and not Run(out).rejected()
    lm = load_model("default", device="cpu", dtype="float32")
    template = resolve_template(lm.tokenizer)
    pairs = {p.pair_id: p for p in load_pairs([SourceSpec(str(source))], limit=3).pairs}
    multi_turn = 0
    for row in scores.itertuples():
        multi_turn += any(m["role"] == "assistant" for m in pairs[row.pair_id].prompt)
        for side in ("chosen", "rejected"):
            ref, _ = response_reference(lm, template, pairs[row.pair_id], side, 1024)
            got = getattr(row, f"loss_{side}")
            assert abs(got - ref) < 1e-4, (row.pair_id, side, got, ref)
    assert multi_turn if which == "dpo_en_demo" else not multi_turn
