"""The pair score run: every preference pair's two responses under one model, the prompt once.

    load pairs + model -> claim (run.json "data": "pairs") -> tokenise each response as the SFT
        example prompt + response (examples.parquet) -> the pair pass -> tables (pair_tables)

``python -m curation score`` runs this on sources of preference pairs (:func:`curation.runs.score.run_score`
detects them).  Each response is scored exactly as that SFT example (same template, masking,
end-of-turn marker and max length) and committed into the score cache under its SFT id, so a
resumed or re-run pass, Ray scoring and an SFT run over the same conversations share rows; a
pair's two responses form one batch of the scorer, whose prompt runs once
(:func:`curation.scoring.losses.shared_prompt`).  The folder's layout is in
:mod:`curation.runs.pair_tables` and :mod:`curation.runs.folder`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from curation.data.pair_formats import SIDES
from curation.progress import Progress, Reporter
from curation.runs.folder import Run
from curation.runs.pair_tables import (pair_example_table, pair_score_table, pair_token_table, response_loss,
                                      response_tokens)
from curation.runs.steps import claim, load_inputs


def run_pair_score(cfg, progress: Progress | None = None) -> Path:
    """Run (or finish) a score run on preference pairs (``cfg``: a
    :class:`curation.runs.score.ScoreConfig`) and return its folder.  ``progress`` counts pairs."""
    from curation.scoring.engine import open_engine
    from curation.scoring.passes import PassSettings

    t0 = time.time()
    report = Reporter(progress)
    data, lm, template, max_length = load_inputs(cfg, report, "pairs")
    settings = PassSettings.of(cfg, lm, template, max_length, compile=cfg.compile)
    run, meta = claim("score", cfg, data, lm, template, settings, extra={"data": "pairs"})
    report(phase="tokenising", done=0, total=len(data.pairs))
    pairs, encoded, n_tokens, rejected = encode_pairs(data, lm.tokenizer, template, max_length)
    table = pair_example_table(pairs, encoded, n_tokens)
    run.write_examples(table)
    t_loaded = time.time()

    with open_engine(cfg) as settings.engine:
        rows = score_pairs_with(lm.source(), lm.fingerprint, pairs, encoded, settings, report, "scoring",
                                embed=("prompt_rds",))

    report(phase="writing tables", done=len(pairs), total=len(pairs))
    write_pair_tables(run, pairs, table, encoded, rows, rejected)
    meta["timings_s"] = {"load": round(t_loaded - t0, 2), "score": round(time.time() - t_loaded, 2),
                         "total": round(time.time() - t0, 2)}
    run.finish(meta)
    report(phase="done", done=len(pairs), total=len(pairs))
    return run.path


def write_pair_tables(run: Run, pairs, table, encoded: dict, rows: dict[str, dict], rejected: list[dict],
                      ref_rows: dict[str, dict] | None = None, extra_columns: dict | None = None):
    """A pair run's tables from its base pass ``rows``: scores.parquet (+ ``extra_columns``, Arrow
    arrays in pair order), token_losses.parquet (+ ``token_losses_ref`` from ``ref_rows``),
    rejected.jsonl and the prompts' embeddings.  Returns the scores table."""
    scores = pair_score_table(table, rows)
    for name, array in (extra_columns or {}).items():
        scores = scores.append_column(name, array)
    run.write_results(scores, pair_token_table(table, encoded, rows, ref_rows), rejected)
    run.write_embeddings([p.pair_id for p in pairs], {p.pair_id: rows[p.sft_id("chosen")] for p in pairs},
                         files={Run.EMBEDDINGS: "prompt_rds"})
    return scores


def encode_pairs(data, tokenizer, template, max_length: int):
    """Tokenise each pair's two responses as SFT examples (:meth:`Pair.sft_messages`) and mark
    their assistant tokens (no side effect).

    Returns ``(pairs kept, {response id: Encoded}, {response id: its response's token count},
    rejected rows)``: the loader's rejected records, then each pair that the template cannot render
    or of whose response no token is left within ``max_length``, with the side and the reason."""
    from curation.data.load import RecordError, Rejected
    from curation.data.templates import encode_many

    rejected = data.rejected_rows()
    encs = encode_many(tokenizer, template, [p.sft_messages(s) for p in data.pairs for s in SIDES], max_length)
    kept, encoded, n_tokens = [], {}, {}
    for k, pair in enumerate(data.pairs):
        turns = sum(m["role"] == "assistant" for m in pair.prompt)
        why = None
        for j, side in enumerate(SIDES):
            enc = encs[2 * k + j]
            n = 0 if isinstance(enc, RecordError) else response_tokens(enc, turns)
            if isinstance(enc, RecordError):
                why = f"{side}: {enc}"
            elif n == 0 and enc.truncated:
                why = (f"{side}: no token of the response within max length {max_length} (prompt + response take "
                       f"{enc.n_tokens_full} tokens); raise --max-length")
            elif n == 0:
                why = f"{side}: the chat template leaves no token of the response apart from the prompt; try --template"
            if why is not None:
                break
            encoded[pair.sft_id(side)], n_tokens[pair.sft_id(side)] = enc, n
        if why is None:
            kept.append(pair)
        else:
            rejected.append(asdict(Rejected(pair.source, pair.source_index, None, why, pair.pair_id)))
    return kept, encoded, n_tokens, rejected


def score_pairs_with(model, fingerprint: str, pairs, encoded: dict, settings, report, phase: str,
                     embed: tuple[str, ...] = ()) -> dict[str, dict]:
    """The pair pass of ``pairs`` under ``model`` (a :class:`curation.scoring.models.ModelSource`
    whose weights ``fingerprint`` names: the base model, a trained reference or proxy): each pair's
    two responses as one batch (the prompt once), through the score cache (``settings``, a
    :class:`curation.scoring.passes.PassSettings`), so a resumed pass scores only what is missing.
    ``encoded``: each response id's encoding (:func:`encode_pairs`).  Returns ``{response id: row}``."""
    from curation.scoring.passes import score_pass

    ids, groups = pass_rows(pairs)
    return score_pass(model, fingerprint, ids, [encoded[i] for i in ids], settings, report, phase, embed=embed,
                      groups=groups, unit="pairs")


def pass_rows(pairs) -> tuple[list[str], list[list[int]]]:
    """The pair pass's rows: each response id once (two pairs may share a response), and per pair
    the positions of its chosen and rejected rows."""
    ids: list[str] = []
    index: dict[str, int] = {}
    groups = []
    for pair in pairs:
        group = []
        for side in SIDES:
            rid = pair.sft_id(side)
            if rid not in index:
                index[rid] = len(ids)
                ids.append(rid)
            group.append(index[rid])
        groups.append(group)
    return ids, groups


def pair_logps_with(model, fingerprint: str, pairs, encoded: dict, n_tokens: dict, settings, report,
                    phase: str = "scoring pairs") -> dict[str, tuple[float, float]]:
    """``{pair_id: (log p(chosen), log p(rejected))}`` under one model (base or trained), each summed
    over the response's tokens: :func:`score_pairs_with`'s pair pass, then :func:`pair_logps`
    (``encoded``/``n_tokens`` from :func:`encode_pairs`)."""
    return pair_logps(pairs, n_tokens, score_pairs_with(model, fingerprint, pairs, encoded, settings, report, phase))


def pair_logps(pairs, n_tokens: dict, rows: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """Each pair's ``(log p(chosen), log p(rejected))`` from its responses' cache rows."""
    return {p.pair_id: tuple(-response_loss(rows[p.sft_id(s)], n_tokens[p.sft_id(s)]) for s in SIDES) for p in pairs}
