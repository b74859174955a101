"""The study runner: what ``validate`` and ``mix`` (and any study that trains a proxy many times)
run the same way, with their own design and analysis.

    check the folder -> open the proxy (curation.validation.proxy) -> claim the folder -> evaluate
    the base model -> trainings, round by round (locally one after another, or one Ray task per
    training) -> assemble the results -> (the study's analysis and report) -> write

:func:`run_study` takes the study's trainings as *rounds*: ``rounds(study)`` yields one list of
:class:`~curation.validation.proxy.Training` after another, and may look at what the rounds so far
gave (:meth:`Study.assemble`) before it yields the next one or stops (so a study can add seeds
until its comparisons are decided).  The committed parts are the state: a resumed study replays
its rounds, and every committed training is skipped, so it ends where an unbroken one would.

What every study gets from it:

* the study folder (:func:`claim_study`): ``study.json`` holds the study's kind, key and settings;
  a folder holding another study, or anything else, is refused, never mixed.  It is checked
  first and claimed only once the study's inputs were accepted (a refused study claims nothing,
  so the corrected command can use the same folder);
* the training cache: a training of exactly this set, seed, model and settings, by any study, is
  not done again (``SCORE_CACHE/trainings/KEY.json`` holds its weights fingerprint and loss curve;
  its eval rows are in the score cache under that fingerprint);
* twins: a training asked twice in one study (the same examples, seed and settings under two
  names) is trained once, the other committed from the training cache;
* ``--engine ray``: each training is its own Ray task holding one worker's resources (one GPU, or
  its share of the CPUs), at most one per worker at a time; the task runs the same
  :func:`~curation.validation.proxy.train_and_evaluate` as the local path;
* progress reports, each part's ``.time.json`` (the wall seconds of its training and eval, or that
  it came from the cache) and ``--keep-models``.

Study folder::

    study.json                  kind, key, settings and identity (run, decisions, training sets) of its study
    parts/NAME-seedS.parquet    one committed part per finished training (+ .curve.json, .time.json): resume skips them
    train/NAME-seedS/           trainings in progress (removed once evaluated, unless --keep-models)
    results.parquet, curves.parquet   every model's eval rows and loss curves, assembled from the parts
    report.json, report.md      the study's own analysis
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from curation.config import result_key
from curation.validation.proxy import (Proxy, ProxyConfig, Training, ValidationError, eval_rows, evaluate_base,
                                       open_proxy, train_and_evaluate, train_config, training_spec)

STUDY = "study.json"
KIND_NAMES = {"validate": "validation", "mix": "mix study"}


# ----------------------------------------------------------------------------------------------
# The study folder


def claim_study(out: Path, kind: str, key: str, settings: dict, identity: dict | None = None,
                check_only: bool = False) -> None:
    """Make ``out`` this study's folder, or refuse: a folder holding another study, or anything that
    is not a study, is never written into (``check_only``: refuse, or write nothing).  ``key``
    decides; ``settings`` and ``identity`` (:func:`study_identity`) are kept beside it so that a
    refusal names what differs: the kind of study, the settings, the run, the curator's decisions
    or the training sets."""
    from curation.runs.folder import claim_folder

    what = KIND_NAMES.get(kind, kind)
    record = {"kind": kind, "key": key, "settings": settings, "identity": identity or {}}
    claim_folder(out, STUDY, what, lambda have: have.get("kind") == kind and have.get("key") == key,
                 lambda have: study_mismatch(out, have, record), {**record}, ValidationError, check_only)


def study_identity(run_key: str | None, trainings: list[Training], decisions=None) -> dict:
    """What a study was made of besides its settings, kept in ``study.json`` to explain a refusal:
    the run's key, the curator's decisions (a snapshot's description) and each training's examples."""
    return {"run": run_key, "decisions": None if decisions is None else decisions.describe(),
            "trainings": {f"{t.name} seed {t.seed}": study_key(sorted(t.ids)) for t in trainings}}


def study_mismatch(out: Path, have: dict, now: dict) -> str:
    """Why the study in ``out`` (its ``study.json``: ``have``) is not the one asked (``now``), in one line."""
    what, theirs = KIND_NAMES.get(now["kind"], now["kind"]), KIND_NAMES.get(have.get("kind"), "study")
    if have.get("kind") != now["kind"]:
        return f"{out} holds a {theirs}, not a {what}; use a new --out folder for this {what} (or delete that one)"
    old, new = mapping(have.get("settings")), now["settings"]
    changed = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
    detail = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in changed[:6])
    if not detail:
        a, b = mapping(have.get("identity")), now["identity"]
        ta, tb = mapping(a.get("trainings")), mapping(b.get("trainings"))
        diff = sorted(t for t in set(ta) | set(tb) if ta.get(t) != tb.get(t))
        da, db = mapping(a.get("decisions")), mapping(b.get("decisions"))
        if not a:
            detail = "its data, model or training sets changed"
        elif a.get("run") != b.get("run"):
            detail = "the run was scored again since: its data or model changed"
        elif da.get("fingerprint") != db.get("fingerprint"):
            detail = (f"the curator's decisions changed since: {decided(da)} there, {decided(db)} now, which changes "
                      f"{len(diff)} training set(s)")
        else:
            detail = (f"{len(diff)} training set(s) differ (e.g. {diff[0] if diff else '?'}): the selections or the "
                      "curator's decisions changed since")
    return (f"{out} holds a {theirs} with other settings ({detail}); its results would be mixed with these. Use a "
            "new --out folder (or delete that one)")


def mapping(value) -> dict:
    """``value`` when it is a dict, else {} (a hand-edited study.json must not raise)."""
    return value if isinstance(value, dict) else {}


def decided(decisions: dict) -> str:
    """A decisions snapshot's description in words (``12 (3 excluded, 9 kept)``)."""
    snap = mapping(decisions.get("snapshot"))
    if not snap:
        return "none"
    return f"{snap.get('decisions')} ({snap.get('exclude')} excluded, {snap.get('keep')} kept)"


def study_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_settings(cfg: ProxyConfig, skip: tuple[str, ...] = ()) -> dict:
    """The settings a study's key holds: ``cfg``'s result settings but ``skip``, each eval set named by
    its absolute path and fingerprinted by its content (``--eval math=eval/math.jsonl`` and the same
    file named absolutely are one study; the same path holding other rows is another)."""
    settings = {k: v for k, v in result_key(cfg).items() if k not in skip}
    settings["eval"] = {d: str(Path(p).resolve()) for d, p in sorted(cfg.eval.items())}
    return {**settings, "eval_files": file_fingerprints(cfg.eval)}


def file_fingerprints(paths: dict[str, str]) -> dict[str, str]:
    """Each eval file's content fingerprint (a study's results depend on what the files hold)."""
    from curation.data.load import file_fingerprint

    return {d: file_fingerprint(p) if Path(p).is_file() else str(p) for d, p in sorted(paths.items())}


# ----------------------------------------------------------------------------------------------
# Running a study


@dataclass
class Study:
    """A study while it runs (and once it ran): its folder, the proxy, the base model's eval rows
    and every part committed so far."""

    cfg: ProxyConfig
    out: Path
    proxy: Proxy
    report: object  # curation.progress.Reporter
    base: object = None  # the base model's eval rows (a DataFrame)
    parts: dict = field(default_factory=dict)  # {part name: parquet path}, in the order asked
    results: object = None  # after run_study: every model's eval rows
    curves: object = None  # after run_study: every training's loss curve

    def part_path(self, t: Training) -> Path:
        return self.out / "parts" / f"{t.part}.parquet"

    def train_folder(self, t: Training) -> Path:
        """Where ``t`` trains (and its model stays with ``--keep-models``)."""
        return self.out / "train" / t.part

    def run(self, trainings: list[Training]) -> None:
        """Train and evaluate every training whose part is not committed yet (one round).

        Locally they run one after another; on a Ray engine each is a Ray task, as many at once as
        there are workers.  A training asked twice (the same examples, seed and settings under two
        names) is trained once; its twin is committed from the training cache."""
        for t in trainings:
            self.parts[t.part] = self.part_path(t)
            if self.parts[t.part].is_file():
                self.read_part(self.parts[t.part])  # a damaged part is named now, not after the other trainings
        self.proxy.encode(set().union(*(t.ids for t in trainings)) if trainings else set(), self.report)
        todo = [t for t in trainings if not self.part_path(t).is_file()]
        todo = [t for t in todo if not self.reuse(t)]
        first: dict[str, Training] = {}
        for t in todo:
            first.setdefault(self.training_key(t), t)
        twins = [t for t in todo if first[self.training_key(t)] is not t]
        n = len(trainings)
        self.train_each(list(first.values()), done=n - len(first), total=n)
        left = [t for t in twins if not self.reuse(t)]
        self.train_each(left, done=n - len(left), total=n)  # the cache was cleared meanwhile

    def train_each(self, todo: list[Training], done: int, total: int) -> None:
        """Train, evaluate and commit each of ``todo`` (progress counts from ``done`` of ``total``)."""
        if not todo:
            return
        engine = self.proxy.settings.engine
        if engine is not None:
            by_part = {t.part: t for t in todo}

            def finished(spec, result):  # in the engine's work thread: commits only, no progress calls
                self.commit(by_part[spec["part"]], result)

            specs = [training_spec(self.cfg, self.proxy, t, self.train_folder(t), f"{t.name} seed {t.seed}")
                     for t in todo]
            engine.run_tasks(train_and_evaluate, specs, finished, self.report, done=done, total=total)
            return
        for n, t in enumerate(todo, start=done + 1):
            spec = training_spec(self.cfg, self.proxy, t, self.train_folder(t), f"{t.name} seed {t.seed} ({n}/{total})")
            self.commit(t, train_and_evaluate(spec, None, self.report))

    def training_key(self, t: Training) -> str:
        """What decides a training's weights: the model, the training settings with the seed, the
        examples, the template, the max length and the device kind."""
        s = self.proxy.settings
        return hashlib.sha256(json.dumps({"model": self.proxy.lm.fingerprint,
                                          "train": train_config(self.cfg, t.seed, t.dpo_loss).result_key(),
                                          "ids": sorted(t.ids),
                                          "template": s.template, "max_length": s.max_length,
                                          "device": s.device.split(":")[0]}, sort_keys=True).encode()).hexdigest()[:24]

    def cache_entry(self, t: Training) -> Path:
        return self.proxy.settings.cache.root / "trainings" / f"{self.training_key(t)}.json"

    def reuse(self, t: Training) -> bool:
        """Commit ``t`` from the training cache when this exact training was evaluated before."""
        s, known = self.proxy.settings, self.cache_entry(t)
        if not known.is_file():
            return False
        info = json.loads(known.read_text())
        rows = s.cache.load(s.key(info["fingerprint"]), set(self.proxy.evals.ids))
        if len(rows) != len(self.proxy.evals.ids):
            return False
        self.report(phase=f"reusing the training of {t.name} seed {t.seed}", done=0, total=None)
        self.write_part(t, rows, info["loss_curve"], {"seconds": info.get("seconds"), "reused": True})
        return True

    def commit(self, t: Training, result: dict) -> None:
        """Record a finished training (:func:`train_and_evaluate`'s result): its eval rows in the
        score cache, the training cache entry, then the study's part (the commit a resume skips)."""
        from curation.atomic import write_json
        from curation.scoring.engine import unpack_losses
        from curation.scoring.passes import cache_rows

        s, ids = self.proxy.settings, self.proxy.evals.ids
        fp = result["fingerprint"]
        s.cache.put(s.key(fp), cache_rows(ids, unpack_losses(result["eval"])),
                    {"model": fp, "variant": "full", "template": s.template, "max_length": s.max_length,
                     "dtype": s.dtype, "device": s.device})
        rows = s.cache.load(s.key(fp), set(ids))
        secs = None if result.get("seconds") is None else round(float(result["seconds"]), 1)
        write_json(self.cache_entry(t), {"fingerprint": fp, "loss_curve": result["loss_curve"],
                                         "tokens_trained": result["tokens_trained"], "n_examples": len(t.ids),
                                         "seconds": secs})
        self.write_part(t, rows, result["loss_curve"], {"seconds": secs, "reused": False})
        if not self.cfg.keep_models:
            shutil.rmtree(self.train_folder(t), ignore_errors=True)

    def write_part(self, t: Training, rows: dict, curve: list, timing: dict) -> None:
        """One finished training's part: its loss curve, its timing (the wall seconds of its training
        and eval; whether it came from the training cache) and its eval rows, the last being the commit."""
        from curation.atomic import write_json, write_parquet

        part = self.part_path(t)
        write_json(part.with_suffix(".curve.json"), curve)
        write_json(part.with_suffix(".time.json"), timing)
        write_parquet(part, eval_rows(t.name, t.seed, self.proxy.evals, rows))  # the commit

    def assemble(self):
        """``(results, curves)``: the base rows and every committed part so far, with the loss curves."""
        import pandas as pd

        frames, curves = [self.base], []
        for p in self.parts.values():
            if p.is_file():
                df, curve = self.read_part(p)
                cand, seed = df["candidate"].iloc[0], int(df["seed"].iloc[0])
                curves += [{"candidate": cand, "seed": seed, **pt} for pt in curve]
                frames.append(df)
        cols = ["candidate", "seed", "step", "loss", "lr", "tokens"]
        return pd.concat(frames, ignore_index=True), pd.DataFrame(curves, columns=cols)

    def read_part(self, p: Path):
        """``(eval rows, loss curve)`` of a committed part; one line when it cannot be used (a kill
        cannot damage one, a disk or a hand can), saying that deleting it trains it again."""
        import pandas as pd

        try:
            df = pd.read_parquet(p)
            curve = json.loads(p.with_suffix(".curve.json").read_text())
            missing = sorted(set(self.base.columns) - set(df.columns))
            if missing or len(df) != len(self.base) or df["candidate"].nunique() != 1 or not isinstance(curve, list):
                raise ValueError(f"not one model's {len(self.base)} eval rows and loss curve"
                                 + (f" (no column {', '.join(missing)})" if missing else ""))
        except (OSError, ValueError, UnicodeDecodeError) as e:  # pyarrow's errors are ValueErrors or OSErrors
            raise ValidationError(f"{p} cannot be read ({type(e).__name__}: {str(e)[:200]}); delete it (and its "
                                  ".curve.json and .time.json) and run the same command again: that training is "
                                  "trained again, the others are kept") from None
        return df, curve

    def seconds(self) -> dict:
        """What the committed trainings cost: the sum of their own wall seconds (however many runs,
        resumes or Ray workers made them), how many were timed, and how many came from the cache."""
        total, timed, reused = 0.0, 0, 0
        for p in self.parts.values():
            f = p.with_suffix(".time.json")
            info = json.loads(f.read_text()) if f.is_file() else {}
            if info.get("reused"):
                reused += 1
            elif info.get("seconds") is not None:
                total, timed = total + float(info["seconds"]), timed + 1
        return {"seconds": round(total, 1), "timed": timed, "reused": reused, "trainings": len(self.parts)}

    def write(self, rep: dict, markdown: str) -> None:
        """The study's report (``report.json``, ``report.md``): written last, the study is finished."""
        from curation.atomic import write_json, write_text

        write_json(self.out / "report.json", rep)
        write_text(self.out / "report.md", markdown)


def run_study(cfg: ProxyConfig, kind: str, key: str, settings: dict, identity: dict, run, meta: dict, table, rounds,
              report) -> Study:
    """Run (or resume) a study into ``cfg.out`` (see the module docstring): ``key`` is everything
    that decides its results, ``settings`` and ``identity`` what a refusal names (:func:`claim_study`);
    ``rounds(study)`` yields each
    round's trainings.  Returns the study with its assembled ``results`` and ``curves`` (written
    to ``results.parquet`` and ``curves.parquet``); the caller analyses them and :meth:`Study.write`\\ s
    its report."""
    from curation.atomic import write_parquet
    from curation.scoring.engine import open_engine

    out = Path(cfg.out)
    claim_study(out, kind, key, settings, identity, check_only=True)  # another study's folder: refused before any work
    study = Study(cfg, out, open_proxy(cfg, run, meta, table, report), report)
    claim_study(out, kind, key, settings, identity)  # claimed once the eval sets were accepted
    with open_engine(cfg) as study.proxy.settings.engine:  # this process, or Ray workers (--engine ray)
        study.base = evaluate_base(study.proxy, report)
        for trainings in rounds(study):
            study.run(trainings)
    n = len(study.parts)
    report(phase="assembling the results", done=n, total=n)
    study.results, study.curves = study.assemble()
    write_parquet(out / "results.parquet", study.results)
    write_parquet(out / "curves.parquet", study.curves)
    return study


# ----------------------------------------------------------------------------------------------
# Reading a finished study (the pages, the CLI)


def obj(optional: dict | None = None, **props) -> dict:
    """A JSON Schema: an object that has (at least) these properties, and may have the ``optional`` ones."""
    return {"type": "object", "required": list(props), "properties": {**props, **(optional or {})}}


def each(schema: dict) -> dict:
    """A JSON Schema: an object whose every value is ``schema`` (a mapping such as domain -> share)."""
    return {"type": "object", "additionalProperties": schema}


def items(schema: dict, **extra) -> dict:
    """A JSON Schema: a list of ``schema``."""
    return {"type": "array", "items": schema, **extra}


NUMBER, NUMBER_OR_NULL = {"type": "number"}, {"type": ["number", "null"]}
TEXT, WHOLE = {"type": "string"}, {"type": "integer"}
TEXT_OR_NULL = {"type": ["string", "null"]}


class StudyReader:
    """A finished study's folder, read: its report (refused, with one line, unless it is a report of
    this kind and of the shape its readers use: :attr:`SCHEMA`, a JSON Schema, and
    :meth:`inconsistency`), its loss curves and its summary in words.  ``Validation`` and
    ``MixStudy`` extend it."""

    KIND = ""
    REPORT = "report.json"
    SCHEMA: dict = {"type": "object"}
    error = ValidationError  # what a report that cannot be read raises

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def report(self) -> dict:
        import jsonschema

        from curation.runs.folder import read_json_object

        p, what = self.path / self.REPORT, KIND_NAMES.get(self.KIND, self.KIND)
        rep = read_json_object(p, f"{what} report", self.error)
        if rep.get("kind") != self.KIND:
            raise self.error(f"{p}: not a {what}'s report")
        wrong = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(self.SCHEMA).iter_errors(rep))
        where = ".".join(map(str, wrong.absolute_path)) if wrong is not None else None
        problem = (f"{where or 'the report'}: {wrong.message[:200]}" if wrong is not None
                   else self.inconsistency(rep))
        if problem:
            raise self.error(f"{p}: not a readable {what} report ({problem}); run the {what} again into a new folder")
        return rep

    def inconsistency(self, rep: dict) -> str | None:
        """What in a report of the right shape does not fit together (its parts name other eval sets,
        lists of other lengths), or None."""
        return None

    def markdown(self) -> str:
        """``report.md`` ('' when it is missing)."""
        p = self.path / "report.md"
        return p.read_text() if p.is_file() else ""

    def curves(self):
        """Every training's loss curve (``candidate, seed, step, loss, lr, tokens``), or None."""
        import pandas as pd

        p = self.path / "curves.parquet"
        return pd.read_parquet(p) if p.is_file() else None
