"""Proxy trainings: fine-tune the proxy model on a training set and score it on held-out eval sets.

One home for what ``validate`` and ``mix`` share, so a mix study and a validation train and
evaluate exactly alike and share their trainings:

* :class:`Training`: a name (a candidate, a mix point), a seed and the training example ids;
* :func:`open_proxy`: the proxy model, the run's template (checked), the score-cache settings,
  the eval sets (refused when an example is also in the pool) and the training examples' encodings;
* :func:`run_trainings`: every training not committed yet, then its eval pass; locally one after
  another, with ``--engine ray`` each training is its own Ray task holding one worker's resources
  (one GPU, or its share of the CPUs), several side by side;
* the training cache: a training of exactly this set, seed, model and settings, by any study, is
  not done again (``SCORE_CACHE/trainings/KEY.json`` holds its weights fingerprint and loss curve;
  its eval rows are in the score cache under that fingerprint);
* the study folder (:func:`claim_study`): ``study.json`` holds the key of every setting that decides
  the results; a folder holding another study, or anything else, is refused, never mixed.

Study folder::

    study.json                  kind, key and settings of the study that owns the folder
    parts/NAME-seedS.parquet    one committed part per finished training (+ .curve.json, .time.json): resume skips them
    train/                      trainings in progress (removed once evaluated, unless --keep-models)
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from curation.config import project
from curation.runs.training import TrainConfig

STUDY = "study.json"
MAX_SEEDS = 50  # trainings per candidate or mix: every seed is a whole fine-tuning


class ValidationError(ValueError):
    """A validation or mix study that cannot run as asked (the message says what to change)."""


@dataclass
class Training:
    """One training of a study: fine-tune the proxy on ``ids`` with ``seed``."""

    name: str  # the candidate or mix point it belongs to
    seed: int
    ids: list[str]

    @property
    def part(self) -> str:
        return f"{slug(self.name)}-seed{self.seed}"


@dataclass
class EvalSets:
    examples: list  # curation.data.load.Example, in order
    encoded: list  # curation.data.templates.Encoded, same order
    provenance: list[dict]

    @property
    def ids(self) -> list[str]:
        return [e.example_id for e in self.examples]


@dataclass
class Proxy:
    """What every training of a study needs: the model, template, pass settings, evals, examples."""

    lm: object  # curation.scoring.models.LoadedModel
    template: object
    settings: object  # curation.scoring.passes.PassSettings
    evals: EvalSets
    pool: dict  # {example_id: Encoded} of every example some training uses


def slug(name: str) -> str:
    """A file-name-safe form of a candidate or mix point name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


# ----------------------------------------------------------------------------------------------
# The study folder


def claim_study(out: Path, kind: str, key: str, settings: dict) -> None:
    """Make ``out`` this study's folder, or refuse: a folder holding another study (other settings),
    or anything that is not a study, is never written into."""
    from curation.atomic import write_json

    what = {"validate": "validation", "mix": "mix study"}.get(kind, kind)
    if out.exists() and not out.is_dir():
        raise ValidationError(f"--out {out} is a file; give a folder (new, or holding this {what})")
    marker = out / STUDY
    if marker.is_file():
        try:
            have = json.loads(marker.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValidationError(f"{marker} is unreadable ({e}); use a new --out folder") from None
        if have.get("kind") == kind and have.get("key") == key:
            return
        changed = sorted(k for k in set(settings) | set(have.get("settings", {}))
                         if settings.get(k) != have.get("settings", {}).get(k))
        detail = "; ".join(f"{k}: {have.get('settings', {}).get(k)!r} there, {settings.get(k)!r} now"
                           for k in changed[:6]) or "its data or model changed"
        other = {"validate": "validation", "mix": "mix study"}.get(have.get("kind"), "study")
        raise ValidationError(f"{out} holds a {other} with other settings ({detail}); its results "
                              f"would be mixed with these. Use a new --out folder (or delete that one)")
    if out.is_dir() and any(out.iterdir()):
        raise ValidationError(f"{out} is not empty and holds no {what} ({STUDY} is missing); use a new --out "
                              "folder or empty that one")
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"kind": kind, "key": key, "settings": settings})


def check_eval_files(evals: dict[str, str]) -> None:
    """Each eval set its own file: one file under two names would give the second no example (the
    loader keeps one copy of each example), and its verdicts would silently be missing."""
    seen: dict[str, str] = {}
    for name, path in evals.items():
        key = str(Path(path).resolve()) if Path(path).exists() else str(path)
        if key in seen:
            raise ValueError(f"--eval {seen[key]}={path} and --eval {name}={path} name the same file; give each eval "
                             "set its own file")
        seen[key] = name


def study_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprints(paths: dict[str, str]) -> dict[str, str]:
    """Each eval file's content fingerprint (a study's results depend on what the files hold)."""
    from curation.data.load import file_fingerprint

    return {d: file_fingerprint(p) if Path(p).is_file() else str(p) for d, p in sorted(paths.items())}


# ----------------------------------------------------------------------------------------------
# The proxy: model, template, eval sets, training examples


def open_proxy(cfg, run, meta: dict, table, needed: set[str], report) -> Proxy:
    """Load the proxy model (``cfg.model`` or the run's), the run's template, the eval sets
    (``cfg.eval``) and the encodings of the ``needed`` pool examples."""
    from curation.scoring.models import load_model
    from curation.scoring.passes import PassSettings

    report(phase="loading model", done=0, total=None)
    model = cfg.model or (meta["model"]["path"] if Path(meta["model"]["path"]).exists() else meta["model"]["spec"])
    lm = load_model(model, device=cfg.device, dtype=cfg.dtype)
    template = run_template(lm, meta)
    settings = PassSettings.of(cfg, lm, template, meta["max_length"])
    report(phase="loading eval sets")
    evals = load_evals(cfg.eval, set(table["example_id"]), lm.tokenizer, template, meta["max_length"])
    pool = pool_encodings(run, meta, table, needed, lm.tokenizer, template, report)
    return Proxy(lm, template, settings, evals, pool)


def run_template(lm, meta: dict):
    """The run's template, checked against its recorded fingerprint (the eval and the training must
    mask tokens exactly as the run did)."""
    from curation.data.templates import resolve_template

    template = resolve_template(lm.tokenizer, meta.get("config", {}).get("template", "auto"))
    want = meta.get("template", {}).get("fingerprint")
    if want and template.fingerprint != want:
        raise ValidationError(f"the model's chat template ({template.fingerprint}) differs from the run's ({want}); "
                              "use the run's model or give --model a model with the same template")
    return template


def load_evals(specs: dict[str, str], pool_ids: set[str], tokenizer, template, max_length: int) -> EvalSets:
    """The eval sets, normalised like any source; refused if an example is also in the pool."""
    from curation.data.load import RecordError, SourceSpec, load_sources
    from curation.data.templates import encode_many
    from curation.runs.folder import source_entries

    data = load_sources([SourceSpec(path=p, domain=d) for d, p in specs.items()])
    for e in data.examples:
        if e.example_id in pool_ids:
            raise ValidationError(f"eval example {e.source} #{e.source_index} (id {e.example_id}) is also in the pool "
                                  "the training sets come from; it would measure memorisation, not learning. Remove "
                                  "it from the eval file.")
    examples, encoded = [], []
    left_out = [{"source": r.source, "source_index": r.source_index, "reason": r.reason} for r in data.rejected]
    for e, x in zip(data.examples, encode_many(tokenizer, template, [e.messages for e in data.examples], max_length)):
        if isinstance(x, RecordError) or x.n_response_tokens == 0:
            left_out.append({"source": e.source, "source_index": e.source_index,
                             "reason": str(x) if isinstance(x, RecordError) else "no assistant token within max length"})
        else:
            examples.append(e)
            encoded.append(x)
    prov = source_entries(data.sources)
    for p in prov:
        p["left_out"] = [r for r in left_out if r["source"] == p["source"]]
        p["n_evaluated"] = sum(e.source == p["source"] for e in examples)
    return EvalSets(examples, encoded, prov)


def pool_encodings(run, meta: dict, table, needed: set[str], tokenizer, template, report) -> dict:
    """``{example_id: Encoded}`` of the ``needed`` pool examples, re-read from the run's sources
    (refused if a source changed since the run)."""
    from curation.data.templates import encode_many
    from curation.runs.folder import read_examples

    rows = table[table["example_id"].isin(needed)][["source", "source_index", "example_id"]]
    report(phase="reading training examples", done=0, total=len(rows))
    records = read_examples(meta, rows.itertuples(index=False), check_fingerprints=True)
    enc = encode_many(tokenizer, template, [m for _, m in records], meta["max_length"])
    return dict(zip(rows["example_id"], enc))


# ----------------------------------------------------------------------------------------------
# Running the trainings


def evaluate_base(proxy: Proxy, report):
    """The base model's eval rows (``candidate`` = ``base``, seed -1)."""
    from curation.scoring.passes import score_pass

    lm, ev = proxy.lm, proxy.evals
    rows = score_pass(lm.source(), lm.fingerprint, ev.ids, ev.encoded, proxy.settings, report, "evaluating base model")
    return eval_rows("base", -1, ev, rows)


def run_trainings(cfg, proxy: Proxy, trainings: list[Training], out: Path, report) -> list[Path]:
    """Train and evaluate every training whose part is not committed yet; return every part's path.

    Locally they run one after another; on a Ray engine (``proxy.settings.engine``) each is a Ray
    task (its own worker's CPUs or GPU), as many at once as there are workers.  A training asked
    twice in one study (two selections of one run share their ``random`` baseline: the same
    examples, seed and settings) is trained once; its twin is committed from the training cache."""
    parts = {t.part: out / "parts" / f"{t.part}.parquet" for t in trainings}
    todo = [t for t in trainings if not parts[t.part].is_file()]
    todo = [t for t in todo if not reuse_training(cfg, proxy, t, parts[t.part], report)]
    first: dict[str, Training] = {}
    for t in todo:
        first.setdefault(training_key(cfg, proxy, t), t)
    twins = [t for t in todo if first[training_key(cfg, proxy, t)] is not t]
    train_each(cfg, proxy, list(first.values()), out, report, done=len(trainings) - len(first), total=len(trainings))
    left = [t for t in twins if not reuse_training(cfg, proxy, t, parts[t.part], report)]
    train_each(cfg, proxy, left, out, report, done=len(trainings) - len(left), total=len(trainings))  # cache cleared meanwhile
    return list(parts.values())


def train_each(cfg, proxy: Proxy, todo: list[Training], out: Path, report, done: int, total: int) -> None:
    """Train, evaluate and commit each of ``todo`` into the study folder ``out`` (progress counts
    from ``done`` of ``total``)."""
    if not todo:
        return
    parts = {t.part: out / "parts" / f"{t.part}.parquet" for t in todo}
    engine = proxy.settings.engine
    if engine is not None:
        by_part = {t.part: t for t in todo}

        def finished(spec, result):  # in the engine's work thread: commits only, no progress calls
            t = by_part[spec["part"]]
            commit_training(cfg, proxy, t, parts[t.part], result["fingerprint"], result["loss_curve"],
                            result["tokens_trained"], rows=unpack_rows(proxy.evals.ids, result["rows"]),
                            seconds=result.get("seconds"))

        engine.run_tasks(train_task, [task_spec(cfg, proxy, t, out / "train" / t.part) for t in todo], finished,
                         report, done=done, total=total)
        return
    for n, t in enumerate(todo, start=done + 1):
        label = f"{t.name} seed {t.seed} ({n}/{total})"
        t0 = time.time()
        fp, curve, tokens = train_locally(cfg, proxy, t, out / "train" / t.part, report, label)
        commit_training(cfg, proxy, t, parts[t.part], fp, curve, tokens, seconds=time.time() - t0)


def train_config(cfg, seed: int) -> TrainConfig:
    tcfg = project(cfg, TrainConfig)
    tcfg.seed = seed
    return tcfg


def training_key(cfg, proxy: Proxy, t: Training) -> str:
    """What decides a training's weights: the model, the training settings with the seed, the
    examples, the template, the max length and the device kind."""
    s = proxy.settings
    return hashlib.sha256(json.dumps({"model": proxy.lm.fingerprint, "train": train_config(cfg, t.seed).result_key(),
                                      "ids": sorted(t.ids), "template": s.template, "max_length": s.max_length,
                                      "device": s.device.split(":")[0]}, sort_keys=True).encode()).hexdigest()[:24]


def reuse_training(cfg, proxy: Proxy, t: Training, part: Path, report) -> bool:
    """Commit ``t`` from the training cache when this exact training was evaluated before."""
    s = proxy.settings
    known = s.cache.root / "trainings" / f"{training_key(cfg, proxy, t)}.json"
    if not known.is_file():
        return False
    info = json.loads(known.read_text())
    rows = s.cache.load(s.key(info["fingerprint"]), set(proxy.evals.ids))
    if len(rows) != len(proxy.evals.ids):
        return False
    report(phase=f"reusing the training of {t.name} seed {t.seed}", done=0, total=None)
    write_part(proxy, t, part, rows, info["loss_curve"], {"seconds": info.get("seconds"), "reused": True})
    return True


def train_locally(cfg, proxy: Proxy, t: Training, folder: Path, report, label: str):
    """Fine-tune the proxy on ``t`` in this process and score it on the eval sets (through the
    score cache): ``(weights fingerprint, loss curve, tokens trained)``."""
    from curation.runs.training import checkpoint_model, train
    from curation.scoring.passes import score_pass

    lm = proxy.lm
    res = train(lm.path, lm.tokenizer, [proxy.pool[i] for i in t.ids], train_config(cfg, t.seed), folder, 1,
                device=lm.device, progress=report, phase=f"training {label}")
    fp, model = checkpoint_model(lm, res.checkpoints[-1], report)
    score_pass(model, fp, proxy.evals.ids, proxy.evals.encoded, proxy.settings, report, f"evaluating {label}")
    return fp, res.loss_curve, res.tokens_trained


def commit_training(cfg, proxy: Proxy, t: Training, part: Path, fp: str, curve: list, tokens: int,
                    rows: dict | None = None, seconds: float | None = None) -> None:
    """Record a finished training: its eval rows in the score cache (when they come from elsewhere),
    the training cache entry, then the study's part (the commit a resume skips)."""
    from curation.atomic import write_json

    s = proxy.settings
    if rows is not None:
        s.cache.put(s.key(fp), list(rows.values()), {"model": fp, "variant": "full", "template": s.template,
                                                     "max_length": s.max_length, "dtype": s.dtype, "device": s.device})
    rows = s.cache.load(s.key(fp), set(proxy.evals.ids))
    secs = None if seconds is None else round(float(seconds), 1)
    write_json(s.cache.root / "trainings" / f"{training_key(cfg, proxy, t)}.json",
               {"fingerprint": fp, "loss_curve": curve, "tokens_trained": tokens, "n_examples": len(t.ids),
                "seconds": secs})
    write_part(proxy, t, part, rows, curve, {"seconds": secs, "reused": False})
    if not cfg.keep_models:
        shutil.rmtree(part.parent.parent / "train" / t.part, ignore_errors=True)


def write_part(proxy: Proxy, t: Training, part: Path, rows: dict, curve: list, timing: dict | None = None) -> None:
    """One finished training's part: its loss curve, its timing (the wall seconds of its training and
    eval; whether it came from the training cache) and its eval rows, the last being the commit."""
    from curation.atomic import write_json, write_parquet

    write_json(part.with_suffix(".curve.json"), curve)
    write_json(part.with_suffix(".time.json"), timing or {})
    write_parquet(part, eval_rows(t.name, t.seed, proxy.evals, rows))  # the commit


def training_seconds(parts: list[Path]) -> dict:
    """What the committed trainings of a study cost: the sum of their own wall seconds (however many
    runs, resumes or Ray workers made them), how many were timed, and how many came from the cache."""
    total, timed, reused = 0.0, 0, 0
    for p in parts:
        f = p.with_suffix(".time.json")
        info = json.loads(f.read_text()) if f.is_file() else {}
        if info.get("reused"):
            reused += 1
        elif info.get("seconds") is not None:
            total, timed = total + float(info["seconds"]), timed + 1
    return {"seconds": round(total, 1), "timed": timed, "reused": reused, "trainings": len(parts)}


def eval_rows(candidate: str, seed: int, evals: EvalSets, rows: dict[str, dict]):
    """The results rows of one model: ``candidate, seed, domain, example_id, nll, n_tokens``."""
    import pandas as pd

    out = []
    for e in evals.examples:
        r = rows[e.example_id]
        out.append({"candidate": candidate, "seed": seed, "domain": e.domain, "example_id": e.example_id,
                    "nll": r["loss_sum"] / r["n_tokens"], "n_tokens": int(r["n_tokens"])})
    return pd.DataFrame(out)


def assemble(base_rows, parts: list[Path]):
    """``(results, curves)`` from the base rows and the committed parts (with their loss curves)."""
    import pandas as pd

    frames, curves = [base_rows], []
    for p in parts:
        df = pd.read_parquet(p)
        cand, seed = df["candidate"].iloc[0], int(df["seed"].iloc[0])
        curves += [{"candidate": cand, "seed": seed, **pt} for pt in json.loads(p.with_suffix(".curve.json").read_text())]
        frames.append(df)
    cols = ["candidate", "seed", "step", "loss", "lr", "tokens"]
    return pd.concat(frames, ignore_index=True), pd.DataFrame(curves, columns=cols)


# ----------------------------------------------------------------------------------------------
# A training as a Ray task


def task_spec(cfg, proxy: Proxy, t: Training, folder: Path) -> dict:
    """Everything a Ray task needs to train and evaluate ``t`` by itself (plain data, packed arrays)."""
    from curation.data.templates import pack_encoded

    lm, s = proxy.lm, proxy.settings
    return {"part": t.part, "label": f"{t.name} seed {t.seed}", "model_path": lm.path, "device": lm.device,
            "dtype": lm.dtype, "train": train_config(cfg, t.seed), "folder": str(folder),
            "examples": pack_encoded([proxy.pool[i] for i in t.ids]), "evals": pack_encoded(proxy.evals.encoded),
            "batch_tokens": s.batch_tokens}


def train_task(spec: dict, threads: int, progress) -> dict:
    """One training in a Ray worker: fine-tune, then score the eval sets; returns the weights
    fingerprint, the loss curve and the packed eval results (the driver commits them)."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from curation.data.templates import unpack_encoded
    from curation.runs.training import train
    from curation.scoring.losses import score_examples
    from curation.scoring.models import load_checkpoint, weights_fingerprint

    t0 = time.time()
    torch.set_num_threads(threads)
    device = spec["device"] if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    res = train(spec["model_path"], tokenizer, unpack_encoded(spec["examples"]), spec["train"], spec["folder"], 1,
                device=device, progress=progress, phase=f"training {spec['label']}")
    model = load_checkpoint(spec["model_path"], res.checkpoints[-1], device, spec["dtype"])
    fp = weights_fingerprint(model)
    losses = score_examples(model, unpack_encoded(spec["evals"]), spec["batch_tokens"])
    n = np.array([r.n_tokens for r in losses], dtype=np.int64)
    offsets = np.zeros(len(losses) + 1, dtype=np.int64)
    np.cumsum(n, out=offsets[1:])
    rows = {"loss_sum": np.array([r.loss_sum for r in losses]), "n_tokens": n, "offsets": offsets,
            "token_losses": np.concatenate([r.token_losses for r in losses]),
            "positions": np.concatenate([r.positions for r in losses])}
    return {"fingerprint": fp, "loss_curve": res.loss_curve, "tokens_trained": res.tokens_trained, "rows": rows,
            "seconds": time.time() - t0}


def unpack_rows(ids: list[str], packed: dict) -> dict[str, dict]:
    """Score-cache rows of a task's packed eval results (no embeddings: an eval needs none)."""
    from curation.scoring.losses import ExampleLoss
    from curation.scoring.passes import cache_rows

    o = packed["offsets"]
    results = [ExampleLoss(float(packed["loss_sum"][j]), int(packed["n_tokens"][j]),
                           packed["token_losses"][o[j]:o[j + 1]], packed["positions"][o[j]:o[j + 1]])
               for j in range(len(ids))]
    return {r["example_id"]: r for r in cache_rows(ids, results)}
