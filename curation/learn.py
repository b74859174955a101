"""The ``learn`` run: one reference training run gives every learnability score.

Fine-tune the base model on the pool (LoBaSS/DavIR's reference model = S2L's proxy) and score
every example at K+1 evenly spaced points (step 0 = base, ..., K = final).  Each example gets a
trajectory ``L_0..L_K``; :mod:`curation.trajectories` turns it into ``loss_base, loss_ref, davir,
rho, ppl_base`` and S2L clusters.  One extra pass under the base model gives IFD.

Output folder::

    scores.parquet        SCORE_COLUMNS (the scoring core's, under the base model) plus
                          loss_ckpt_0..loss_ckpt_K, loss_base, loss_ref, davir, rho, ifd,
                          ppl_base, s2l_cluster (+ fold, loss_ref_heldout, davir_heldout,
                          rho_heldout with --heldout-folds)
    token_losses.parquet  per assistant token: positions, token ids, base losses (token_losses)
                          and reference losses (token_losses_ref), float16
    rejected.jsonl        every record not scored, with source, place and reason
    run.json              provenance: base model fingerprint, reference model or training config,
                          template, max length, K, seed, data fingerprints, timings, loss curve
    train/                trajectory checkpoints + resume state of the reference training
    folds/fold-F/         the held-out reference trainings

Re-running the same command resumes: training continues from its last saved state, finished
checkpoints are not retrained, and scoring passes read the score cache (keyed by example id,
weights fingerprint, template, max length, dtype and device), which also means a pool that grew by
a few rows only scores the new rows under the base model and any attached reference.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from curation import __version__
from curation.atomic import atomic_path, write_json, write_parquet
from curation.load import RecordError, Rejected, SourceSpec, load_sources, parse_source_arg
from curation.scores import SCORE_COLUMNS, _claim_folder, _reporter
from curation.training import TrainConfig

Progress = Callable[[dict], None]


@dataclass
class LearnConfig:
    """Settings of a learnability run (the CLI, the jobs and the dashboard all build this)."""

    sources: list[str]  # "[DOMAIN=]PATH" entries
    out: str  # output folder
    model: str = "default"  # base model: "default", a model folder, a .gguf file or a hub id
    max_length: int = 2048  # tokens; longer examples are cut at the end and flagged
    batch_tokens: int = 1024  # padded tokens per scoring forward pass
    limit: int | None = None  # first N records of each source
    template: str = "auto"  # auto | chat | alpaca | path to a Jinja file
    device: str | None = None  # auto: cuda if available, else cpu
    dtype: str | None = None  # scoring dtype; auto: bfloat16 on cuda, float32 on cpu
    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> column name
    format: str | None = None  # force a record shape (see curation.load.FORMATS)
    checkpoints: int = 4  # K: the trajectory has K+1 points (step 0 = base)
    reference: str | None = None  # attach this fine-tuned model instead of training (K = 1)
    heldout_folds: int = 0  # N >= 2: also train N models, each without one fold (held-out L_ref)
    epochs: int = 1  # reference training: passes over the pool
    lr: float | None = None  # peak learning rate; None: 5e-5 (full) or 3e-4 (LoRA)
    warmup_ratio: float = 0.1  # fraction of steps with linear warmup, then cosine decay
    weight_decay: float = 0.0  # AdamW weight decay
    train_batch_tokens: int = 1024  # padded tokens per training micro-batch
    grad_accum: int = 4  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    lora: bool = False  # LoRA (peft) instead of full fine-tuning
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA alpha
    lora_dropout: float = 0.0  # LoRA dropout (see TrainConfig)
    seed: int = 0  # training order, LoRA init, dropout, folds, K-means
    n_clusters: int = 100  # S2L clusters (capped so clusters average >= 10 examples)
    ifd: bool = True  # the extra response-only pass for IFD
    cache: str | None = None  # score cache folder; None: <model cache>/score-cache
    save_every_s: float = 300.0  # save the training resume state at least this often
    chunk_examples: int = 256  # examples per committed scoring chunk (the most a kill loses)

    def __post_init__(self):
        if not self.sources:
            raise ValueError("give at least one source: [DOMAIN=]PATH")
        for name in ("max_length", "batch_tokens", "checkpoints", "n_clusters", "chunk_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be positive, got {self.limit}")
        if self.heldout_folds == 1 or self.heldout_folds < 0:
            raise ValueError(f"heldout_folds must be 0 (off) or at least 2, got {self.heldout_folds}")
        self.train_config()  # validates the training fields

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, lr=self.lr, warmup_ratio=self.warmup_ratio,
            weight_decay=self.weight_decay, batch_tokens=self.train_batch_tokens,
            grad_accum=self.grad_accum, max_grad_norm=self.max_grad_norm, lora=self.lora,
            lora_r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            seed=self.seed, save_every_s=self.save_every_s,
        )

    @property
    def n_points(self) -> int:
        """K: the index of the last trajectory point."""
        return 1 if self.reference is not None else self.checkpoints

    def source_specs(self) -> list[SourceSpec]:
        return [parse_source_arg(s, columns=self.columns, format=self.format) for s in self.sources]

    def result_key(self) -> dict:
        """Settings that change results (not batch sizes for scoring, caching or places)."""
        d = asdict(self)
        for k in ("out", "batch_tokens", "cache", "save_every_s", "chunk_examples"):
            d.pop(k)
        if self.reference is not None and not self.heldout_folds:
            for k in list(asdict(self.train_config())):
                d.pop("train_batch_tokens" if k == "batch_tokens" else k, None)
            d["seed"] = self.seed  # still seeds K-means
        return d


def run_learn(cfg: LearnConfig, progress: Progress | None = None) -> Path:
    """Run (or finish) a learnability run and return its output folder.

    ``progress`` receives dicts with ``phase, done, total`` and, where known, ``tokens,
    tokens_per_s, eta_s`` (and ``train_loss, lr`` while training).
    """
    from curation.models import load_model, load_reference, weights_fingerprint
    from curation.scorer import check_head_path
    from curation.templates import encode_many, resolve_template

    out = Path(cfg.out)
    t0 = time.time()
    timings: dict[str, float] = {}
    report = _reporter(progress)
    report(phase="loading data", done=0, total=None)
    data = load_sources(cfg.source_specs(), limit=cfg.limit)
    report(phase="loading model")
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    check_head_path(lm.model)
    template = resolve_template(lm.tokenizer, cfg.template)
    ref = None
    if cfg.reference is not None:
        ref = load_reference(cfg.reference, lm)
        if ref.tokenizer.get_vocab() != lm.tokenizer.get_vocab():
            raise ValueError(f"--reference {cfg.reference}: its tokenizer differs from the base model's, "
                             "so its losses are not comparable")
        check_head_path(ref.model)
    timings["load"] = time.time() - t0

    run = {
        "kind": "learn",
        "code_version": __version__,
        "config": asdict(cfg),
        "model": lm.describe(),
        "reference": ref.describe() if ref is not None else None,
        "training": None if ref is not None else cfg.train_config().result_key(),
        "template": {"name": template.name, "fingerprint": template.fingerprint},
        "max_length": cfg.max_length,
        "checkpoints": cfg.n_points,
        "seed": cfg.seed,
        "sources": [asdict(s) for s in data.sources],
        "n_examples": len(data.examples),
        "n_rejected_on_load": len(data.rejected),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
    }
    run["run_key"] = _run_key(run)
    _claim_folder(out, run["run_key"])

    # -- tokenise once: the full conversations and their response-only versions (IFD) ----------
    t = time.time()
    report(phase="tokenising", done=0, total=len(data.examples))
    encoded_all = encode_many(lm.tokenizer, template, [e.messages for e in data.examples], cfg.max_length)
    rejected = [asdict(r) for r in data.rejected]
    examples, encoded = [], []
    for ex, enc in zip(data.examples, encoded_all):
        if isinstance(enc, RecordError):
            rejected.append(asdict(Rejected(ex.source, ex.source_index, None, str(enc), ex.example_id)))
        else:
            examples.append(ex)
            encoded.append(enc)
    alone = encode_response_only(lm.tokenizer, template, [e.messages for e in examples], cfg.max_length) \
        if cfg.ifd else []
    timings["tokenise"] = time.time() - t
    ids = [e.example_id for e in examples]
    cache = ScoreCache(Path(cfg.cache) if cfg.cache else _default_cache())
    common = {"template": template.fingerprint, "max_length": cfg.max_length, "dtype": lm.dtype,
              "device": lm.device.split(":")[0]}
    K = cfg.n_points

    def score(model, fingerprint, variant, which, phase):
        """Cached scoring pass over the examples ``which`` (indices) -> {example_id: row}."""
        key = cache.key(model=fingerprint, variant=variant, **common)
        encs = alone if variant == "response_only" else encoded
        return _score_pass(model, key, cache, [ids[i] for i in which], [encs[i] for i in which],
                           cfg, report, phase)

    everyone = list(range(len(examples)))
    # -- step 0: the base model, and the response-only pass for IFD ---------------------------
    t = time.time()
    passes = [score(lm.model, lm.fingerprint, "full", everyone, f"scoring checkpoint 0/{K} (base model)")]
    timings["score_base"] = time.time() - t
    alone_pass = None
    if cfg.ifd:
        t = time.time()
        alone_pass = score(lm.model, lm.fingerprint, "response_only", everyone,
                           "scoring responses alone (IFD)")
        timings["score_ifd"] = time.time() - t

    # -- the reference: attached, or trained with K checkpoints --------------------------------
    train_info = None
    ckpt_fps: list[str] = []
    if ref is not None:
        t = time.time()
        passes.append(score(ref.model, ref.fingerprint, "full", everyone, "scoring checkpoint 1/1 (reference)"))
        ckpt_fps.append(ref.fingerprint)
        timings["score_checkpoints"] = time.time() - t
        del ref
    else:
        from curation.training import train

        t = time.time()
        res = train(lm.path, lm.tokenizer, encoded, cfg.train_config(), out / "train", K,
                    device=lm.device, progress=lambda p: report(**p), phase="training reference model")
        timings["train_session"] = time.time() - t
        train_info = {"total_steps": res.total_steps, "checkpoint_steps": res.checkpoint_steps,
                      "tokens_trained": res.tokens_trained, "seconds": res.seconds,
                      "loss_curve": res.loss_curve}
        t = time.time()
        for k, ckpt in enumerate(res.checkpoints, start=1):
            passes.append(_score_checkpoint(
                lm, ckpt, score, everyone, f"scoring checkpoint {k}/{K}", ckpt_fps, report))
        timings["score_checkpoints"] = time.time() - t

    # -- held-out reference losses (k-fold) -------------------------------------------------------
    folds = None
    heldout: dict[str, dict] = {}
    if cfg.heldout_folds:
        from curation.training import train

        t = time.time()
        folds = assign_folds(len(examples), cfg.heldout_folds, cfg.seed)
        for f in range(cfg.heldout_folds):
            keep = [i for i in everyone if folds[i] != f]
            held = [i for i in everyone if folds[i] == f]
            fres = train(lm.path, lm.tokenizer, [encoded[i] for i in keep], cfg.train_config(),
                         out / "folds" / f"fold-{f}", 1, device=lm.device, progress=lambda p: report(**p),
                         phase=f"training held-out model {f + 1}/{cfg.heldout_folds}")
            heldout.update(_score_checkpoint(lm, fres.checkpoints[-1], score, held,
                                             f"scoring held-out fold {f + 1}/{cfg.heldout_folds}", [], report))
        timings["heldout"] = time.time() - t

    # -- the tables ---------------------------------------------------------------------------
    t = time.time()
    report(phase="clustering trajectories (S2L)", done=0, total=None)
    table, tokens, stats = _assemble(cfg, examples, encoded, alone, passes, alone_pass, folds, heldout)
    timings["cluster_and_assemble"] = time.time() - t
    report(phase="writing tables")
    write_parquet(out / "scores.parquet", table)
    write_parquet(out / "token_losses.parquet", tokens)
    with atomic_path(out / "rejected.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected))
    timings["total_session"] = time.time() - t0
    run.update({
        "checkpoint_fingerprints": [lm.fingerprint] + ckpt_fps,
        "train": train_info,
        "heldout_folds": cfg.heldout_folds,
        "n_scored": int(sum(table.column("scored").to_pylist())),
        "n_rejected": len(rejected),
        "n_clusters": stats["n_clusters"],
        "ifd_token_mismatches": stats["ifd_mismatches"],
        "score_cache": str(cache.root),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "finished": True,
    })
    write_json(out / "run.json", run)
    report(phase="done", done=len(examples), total=len(examples))
    return out


def encode_response_only(tokenizer, template, conversations, max_length: int):
    """Tokenise each conversation *without its user turns* and mark its assistant tokens.

    This is IFD's "response alone": the template applied to what is left (for single-turn data,
    the assistant message only; a system message is kept).  The assistant characters are those of
    the full rendering's assistant spans (see :func:`curation.templates.assistant_spans`), found
    in the shortened rendering from the end backwards (templates add text at the start, e.g. a
    default system prompt); then tokens are marked exactly as :func:`~curation.templates.encode_many`
    does.  Failures come back in place as :class:`RecordError`.
    """
    from curation.templates import Encoded, assistant_spans, render

    texts, spans_all, out = [], [], []
    for messages in conversations:
        try:
            full, spans = assistant_spans(tokenizer, template, messages)
            kept = [m for m in messages if m["role"] != "user"]
            text = render(tokenizer, template, kept)
            found, end = [], len(text)
            for s, e in reversed(spans):
                pos = text.rfind(full[s:e], 0, end)
                if pos < 0:
                    raise RecordError("the response-only rendering does not contain the assistant turn")
                found.append((pos, pos + (e - s)))
                end = pos
            texts.append(text)
            spans_all.append(found[::-1])
            out.append(None)
        except (RecordError, ValueError) as e:
            out.append(e if isinstance(e, RecordError) else RecordError(str(e)))
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else None
    k = 0
    for j in range(len(out)):
        if out[j] is not None:
            continue
        ids = np.asarray(enc["input_ids"][k], dtype=np.int32)
        starts = np.asarray([o[0] for o in enc["offset_mapping"][k]], dtype=np.int64)
        target = np.zeros(len(ids), dtype=bool)
        for s, e in spans_all[k]:
            target |= (starts >= s) & (starts < e)
        target[:1] = False
        k += 1
        out[j] = Encoded(ids[:max_length], target[:max_length], len(ids), len(ids) > max_length)
    return out


def ifd_score(full_ids: np.ndarray, full_losses: np.ndarray, alone_ids: np.ndarray,
              alone_losses: np.ndarray) -> tuple[float, bool]:
    """IFD = mean loss of the response given the prompt / mean loss of the response alone.

    Both means run over the same assistant tokens: the alone side is cut to the tokens the full
    side scored (truncation can keep more of them when the prompt is gone).  Returns ``(ifd,
    matched)``; when the token ids differ (a template that tokenises the turn differently), all
    alone tokens are used and ``matched`` is False.  NaN when either side has no token.
    """
    n = len(full_ids)
    if n == 0 or len(alone_ids) == 0:
        return float("nan"), True
    matched = len(alone_ids) >= n and np.array_equal(alone_ids[:n], full_ids)
    denom = alone_losses[:n] if matched else alone_losses
    d = float(np.asarray(denom, dtype=np.float64).mean())
    num = float(np.asarray(full_losses, dtype=np.float64).mean())
    return (num / d if d > 0 else float("nan")), matched


def assign_folds(n: int, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each example: a seeded permutation dealt round-robin (sizes differ by at most 1)."""
    perm = np.random.default_rng([seed, 1009]).permutation(n)
    folds = np.empty(n, dtype=np.int64)
    folds[perm] = np.arange(n) % n_folds
    return folds


class ScoreCache:
    """Per-example scoring results keyed by (example id, weights fingerprint, template, max length,
    dtype, device, variant).

    One folder per key (everything but the example id) holding Parquet parts that are written
    atomically and never modified, so concurrent or interrupted runs cannot corrupt it.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def key(self, **parts) -> str:
        blob = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def load(self, key: str, wanted: set[str] | None = None) -> dict[str, dict]:
        import pyarrow.parquet as pq

        folder = self.root / key
        out: dict[str, dict] = {}
        if not folder.is_dir():
            return out
        for part in sorted(folder.glob("part-*.parquet")):
            for row in pq.read_table(part).to_pylist():
                if wanted is None or row["example_id"] in wanted:
                    out[row["example_id"]] = row
        return out

    def put(self, key: str, rows: list[dict], meta: dict | None = None) -> None:
        import pyarrow as pa

        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        if meta is not None and not (folder / "key.json").is_file():
            write_json(folder / "key.json", meta)
        schema = pa.schema([("example_id", pa.string()), ("loss_sum", pa.float64()),
                            ("n_tokens", pa.int32()), ("positions", pa.list_(pa.int32())),
                            ("token_losses", pa.list_(pa.float32()))])
        write_parquet(folder / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet",
                      pa.Table.from_pylist(rows, schema=schema))


# ----------------------------------------------------------------------------------------------


def _default_cache() -> Path:
    from curation.models import cache_dir

    return cache_dir() / "score-cache"


def _run_key(run: dict) -> str:
    ident = {
        "kind": "learn",
        "config": LearnConfig(**run["config"]).result_key(),
        "model": run["model"]["fingerprint"], "dtype": run["model"]["dtype"],
        "reference": run["reference"]["fingerprint"] if run["reference"] else None,
        "template": run["template"]["fingerprint"],
        "data": [(s["source"], s["fingerprint"], s["n_records"]) for s in run["sources"]],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _score_pass(model, key, cache: ScoreCache, ids: list[str], encs, cfg: LearnConfig, report, phase):
    """Score the examples not yet in the cache, committing every ``chunk_examples``."""
    from curation.scorer import score_examples

    have = cache.load(key, set(ids))
    todo = [j for j, i in enumerate(ids) if i not in have]
    total = len(ids)
    done = total - len(todo)
    report(phase=phase, done=done, total=total, tokens=0, tokens_per_s=None, eta_s=None, cached=done)
    if todo and callable(model) and not hasattr(model, "parameters"):
        model = model()  # loaded lazily: a finished pass needs no model at all
    stats = {"tokens": 0, "t": time.time(), "done": done}
    n_todo_tokens = sum(len(encs[j].input_ids) for j in todo)

    def on_batch(n_ex, n_tok):
        stats["done"] += n_ex
        stats["tokens"] += n_tok
        tps = stats["tokens"] / max(time.time() - stats["t"], 1e-9)
        report(done=stats["done"], tokens=stats["tokens"], tokens_per_s=tps,
               eta_s=(n_todo_tokens - stats["tokens"]) / max(tps, 1e-9))

    for c in range(0, len(todo), cfg.chunk_examples):
        chunk = todo[c : c + cfg.chunk_examples]
        res = score_examples(model, [encs[j] for j in chunk], cfg.batch_tokens, on_batch=on_batch)
        rows = [{"example_id": ids[j], "loss_sum": r.loss_sum, "n_tokens": r.n_tokens,
                 "positions": r.positions.tolist(), "token_losses": r.token_losses.tolist()}
                for j, r in zip(chunk, res)]
        cache.put(key, rows)
        have.update({r["example_id"]: r for r in rows})
    return have


def _score_checkpoint(lm, ckpt: Path, score, which, phase, fps: list, report):
    """Score a trajectory checkpoint, loading it only when the cache lacks some examples."""
    from curation.models import weights_fingerprint
    from curation.training import load_checkpoint

    def load():
        report(phase=f"loading {ckpt.name}", done=0, total=None)
        return load_checkpoint(lm.path, ckpt, lm.device, lm.dtype)

    # The fingerprint is stored next to the checkpoint so that a resumed run knows the cache key
    # without loading (and hashing) the weights again.
    fp_file = ckpt / f"FINGERPRINT-{lm.dtype}"
    model = load
    if fp_file.is_file():
        fp = fp_file.read_text().strip()
    else:
        model = load()
        fp = weights_fingerprint(model)
        with atomic_path(fp_file) as tmp:
            tmp.write_text(fp)
    fps.append(fp)
    return score(model, fp, "full", which, phase)


def _assemble(cfg: LearnConfig, examples, encoded, alone, passes, alone_pass, folds, heldout):
    import pyarrow as pa

    from curation.scores import _score_schema, _token_table
    from curation.trajectories import derived_columns, s2l_clusters

    n, K = len(examples), len(passes) - 1
    L = np.full((n, K + 1), np.nan)
    for i, ex in enumerate(examples):
        for k, p in enumerate(passes):
            r = p[ex.example_id]
            if r["n_tokens"]:
                L[i, k] = r["loss_sum"] / r["n_tokens"]
    d = derived_columns(L)
    clusters = s2l_clusters(L, cfg.n_clusters, cfg.seed)
    ifd = np.full(n, np.nan)
    mismatches = 0
    if alone_pass is not None:
        for i, ex in enumerate(examples):
            a, f = alone[i], passes[0][ex.example_id]
            if isinstance(a, RecordError):
                continue
            ar = alone_pass[ex.example_id]
            fpos = np.asarray(f["positions"], dtype=np.int64)
            apos = np.asarray(ar["positions"], dtype=np.int64)
            val, matched = ifd_score(encoded[i].input_ids[fpos], np.asarray(f["token_losses"]),
                                     a.input_ids[apos], np.asarray(ar["token_losses"]))
            ifd[i] = val
            mismatches += (not matched)
    cols: dict[str, list] = {c: [] for c in SCORE_COLUMNS}
    for i, ex in enumerate(examples):
        enc, r = encoded[i], passes[0][ex.example_id]
        scored = r["n_tokens"] > 0
        for c, v in (("example_id", ex.example_id), ("source", ex.source), ("source_index", ex.source_index),
                     ("domain", ex.domain), ("n_prompt_tokens", enc.n_prompt_tokens),
                     ("n_response_tokens", enc.n_response_tokens), ("n_tokens_full", enc.n_tokens_full),
                     ("truncated", enc.truncated), ("scored", scored),
                     ("loss", r["loss_sum"] / r["n_tokens"] if scored else None),
                     ("loss_sum", r["loss_sum"] if scored else None)):
            cols[c].append(v)
    table = pa.Table.from_pydict(cols, schema=_score_schema())

    def f64(x):
        return pa.array(np.asarray(x, dtype=np.float64), pa.float64(), from_pandas=True)

    for k in range(K + 1):
        table = table.append_column(f"loss_ckpt_{k}", f64(L[:, k]))
    for c in ("loss_base", "loss_ref", "davir", "rho"):
        table = table.append_column(c, f64(d[c]))
    table = table.append_column("ifd", f64(ifd))
    table = table.append_column("ppl_base", f64(d["ppl_base"]))
    table = table.append_column("s2l_cluster", pa.array(clusters, pa.int32()))
    if folds is not None:
        lh = np.array([heldout[e.example_id]["loss_sum"] / heldout[e.example_id]["n_tokens"]
                       if heldout[e.example_id]["n_tokens"] else np.nan for e in examples])
        with np.errstate(divide="ignore", invalid="ignore"):
            table = table.append_column("fold", pa.array(folds, pa.int32()))
            table = table.append_column("loss_ref_heldout", f64(lh))
            table = table.append_column("davir_heldout", f64((L[:, 0] - lh) / L[:, 0]))
            table = table.append_column("rho_heldout", f64(L[:, 0] - lh))
    tok = {"example_id": [], "positions": [], "token_ids": [], "token_losses": []}
    ref_losses = []
    for i, ex in enumerate(examples):
        r = passes[0][ex.example_id]
        pos = np.asarray(r["positions"], dtype=np.int32)
        tok["example_id"].append(ex.example_id)
        tok["positions"].append(pos)
        tok["token_ids"].append(encoded[i].input_ids[pos])
        tok["token_losses"].append(np.asarray(r["token_losses"], dtype=np.float16))
        ref_losses.append(np.asarray(passes[-1][ex.example_id]["token_losses"], dtype=np.float16).tolist())
    tokens = _token_table(tok).append_column("token_losses_ref", pa.array(ref_losses, pa.list_(pa.float16())))
    n_clusters = int(clusters.max()) + 1 if (clusters >= 0).any() else 0
    return table, tokens, {"n_clusters": n_clusters, "ifd_mismatches": mismatches}
