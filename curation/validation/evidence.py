"""What the workspace already measured about a run: the evidence a curator sees where the choice is made.

For a run (and the pool it scored), every validation, mix study and canary measurement that
concerns it, read through the studies' own readers (:class:`~curation.validation.validate.Validation`,
:class:`~curation.validation.mix.MixStudy`): which method, budget and mix each validated, its
verdicts (the verdict words, per eval set and the objective, with the interval and the seeds), when,
and whether the run's pool or model changed since:

==============  ===============================================================================
``this run``    the study used this very run (same run key)
``same pool``   another run over the same data files (same fingerprints) and the same model
``earlier pool`` the study's run read the same files (same paths) when they held other data, or
                the same folder held another run: its verdicts are about another pool
==============  ===============================================================================

:class:`EvidenceIndex` keeps one compact summary per study folder in ``WORKSPACE/.evidence.json``
(refreshed when a report's size or time changes), so a page with hundreds of studies reads one
small file instead of every report.  :func:`choice_lines` turns the evidence into the lines the
Select page and ``select`` print for a choice of method, budget and mix ("not validated on this
pool" when there is none: nothing is invented); :func:`best_validated` names the validated choice
that did best on the objective.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from curation.validation.verdicts import verdict

INDEX = ".evidence.json"
INDEX_VERSION = 1
STATUS = ("this run", "same pool", "earlier pool")
AGAINST = {"random": "random at equal examples", "random-tokens": "random at equal tokens",
           "natural": "the natural mix", "longest": "the longest responses", "full": "the full pool"}


# ----------------------------------------------------------------------------------------------
# What a study says, in a few fields


def pool_identity(provenance: dict) -> str:
    """The data and the model a run scored: its sources' names and content fingerprints and the
    model's weights fingerprint (two runs of one pool and model share it)."""
    sources = sorted((str(s.get("source")), str(s.get("fingerprint"))) for s in provenance.get("sources", []))
    model = (provenance.get("model") or {}).get("fingerprint")
    return hashlib.sha256(json.dumps([sources, model]).encode()).hexdigest()[:16]


def source_paths(provenance: dict) -> list[str]:
    return sorted(str(s.get("abs_path") or s.get("path")) for s in provenance.get("sources", []))


def recipe_choice(recipe: dict) -> dict:
    """The part of a recipe a curator chooses on the Select page: method, order, budget, mix."""
    return {"method": recipe.get("method"), "order": recipe.get("order"), "budget": str(recipe.get("budget")),
            "mix": recipe.get("mix", "natural")}


def summarize_validation(folder: Path, rep: dict) -> dict:
    """A validation report's evidence: its selections' choices and the token-weighted verdicts."""
    stats = rep["statistics"]["token"]  # a pair validation: its primary measure, reward accuracy (higher is better)
    findings = [{"candidate": c["candidate"], "baseline": c["baseline"], "domain": c["domain"],
                 "verdict": c["verdict"], "text": c["verdict_text"], "diff": c["diff"], "lo": c["lo"], "hi": c["hi"],
                 "seeds": min(c.get("n_seeds_candidate") or 0, c.get("n_seeds_baseline") or 0),
                 "lower_is_better": stats.get("lower_is_better", True)}
                for c in stats["comparisons"]]
    return {"kind": "validate", "folder": str(folder), "name": folder.name, "created": rep.get("created"),
            "run": run_fields(rep.get("run") or {}),
            "selections": [{"name": s["name"], "dir": s.get("dir"), **recipe_choice(s.get("recipe") or {})}
                           for s in rep["selections"]],
            "seeds": (rep.get("config") or {}).get("seeds"), "trainings": rep.get("trainings"),
            "findings": findings}


def summarize_mix(folder: Path, rep: dict) -> dict:
    """A mix study's evidence: the recommended mix and its predicted difference from the natural mix."""
    vs = rep.get("vs_natural") or {}
    findings = [{"candidate": "recommended mix", "baseline": "natural", "domain": d, "diff": v["value"],
                 "lo": v["lo"], "hi": v["hi"], "predicted": True,
                 **dict(zip(("verdict", "text"), verdict(v["value"], v["lo"], v["hi"], "the natural mix")))}
                for d, v in vs.items()]
    cfg = rep.get("config") or {}
    return {"kind": "mix", "folder": str(folder), "name": folder.name, "created": rep.get("created"),
            "run": run_fields(rep.get("run") or {}), "budget": str(cfg.get("budget")), "method": cfg.get("method"),
            "recommended": rep["recommended"]["mix"], "natural": rep.get("natural"), "seeds": cfg.get("seeds"),
            "trainings": rep.get("trainings"), "findings": findings}


def run_fields(provenance: dict) -> dict:
    return {"dir": provenance.get("dir"), "run_key": provenance.get("run_key"), "pool": pool_identity(provenance),
            "paths": source_paths(provenance)}


# ----------------------------------------------------------------------------------------------
# The index of a workspace's studies


class EvidenceIndex:
    """Every study of a workspace, summarised once (see the module docstring)."""

    def __init__(self, workspace=None):
        from curation.system import mixes_dir, validations_dir, workspace_root

        self.root = workspace_root(workspace)
        self.folders = {"validate": validations_dir(self.root), "mix": mixes_dir(self.root)}

    def entries(self) -> list[dict]:
        """One summary per study folder that holds a report (an unreadable report: its ``error``)."""
        from curation.atomic import write_json

        path = self.root / INDEX
        try:
            cached = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            cached = {}
        if not isinstance(cached, dict) or cached.get("version") != INDEX_VERSION:
            cached = {}
        old, new, changed = cached.get("studies") or {}, {}, False
        for kind, parent in self.folders.items():
            if not parent.is_dir():
                continue
            for folder in parent.iterdir():
                report = folder / "report.json"
                try:
                    st = report.stat()
                except OSError:
                    continue
                stamp = [st.st_mtime_ns, st.st_size]
                key = str(folder)
                if key in old and old[key].get("stamp") == stamp:
                    new[key] = old[key]
                    continue
                new[key] = {"stamp": stamp, "summary": read_study(kind, folder)}
                changed = True
        if changed or set(new) != set(old):
            try:
                write_json(path, {"version": INDEX_VERSION, "studies": new})
            except OSError:  # a read-only workspace still shows its evidence
                pass
        return [v["summary"] for v in new.values()]

    def for_run(self, run) -> "RunEvidence":
        """The evidence that concerns ``run`` (a :class:`curation.runs.folder.Run`)."""
        prov = run.provenance()
        me = run_fields(prov)
        studies = []
        for s in self.entries():
            if s.get("error"):
                continue
            status = relation(s["run"], me)
            if status is not None:
                studies.append({**s, "status": status})
        studies.sort(key=lambda s: (STATUS.index(s["status"]), str(s.get("created") or "")), reverse=False)
        return RunEvidence(me, studies, canary_evidence(run))


def read_study(kind: str, folder: Path) -> dict:
    """A study's summary, or ``{"error": ...}`` when its report cannot be read."""
    from curation.validation.mix import MixStudy
    from curation.validation.validate import Validation

    reader = {"validate": Validation, "mix": MixStudy}[kind](folder)
    try:
        rep = reader.report()
        return summarize_validation(folder, rep) if kind == "validate" else summarize_mix(folder, rep)
    except (ValueError, KeyError, TypeError) as e:
        return {"kind": kind, "folder": str(folder), "name": folder.name, "error": str(e)[:300]}


def relation(theirs: dict, mine: dict) -> str | None:
    """How a study's run relates to this run (:data:`STATUS`), or None when it concerns another pool."""
    if theirs.get("run_key") and theirs.get("run_key") == mine.get("run_key"):
        return "this run"
    if theirs.get("pool") == mine.get("pool"):
        return "same pool"
    if theirs.get("dir") == mine.get("dir") or (theirs.get("paths") and theirs.get("paths") == mine.get("paths")):
        return "earlier pool"
    return None


def canary_evidence(run) -> dict | None:
    """Each score's AUROC at keeping clean examples before planted defects, when the run was scored
    over a canary pool (None otherwise)."""
    from curation.data.canary import truth_for
    from curation.selection.canaries import canary_report

    truth = truth_for(run.provenance())
    if truth is None:
        return None
    rep = canary_report(run.scores(), truth)
    if rep.get("covered", 0) == 0:
        return None
    return {"corrupted": rep["corrupted"], "examples": rep["examples"],
            "auroc": {name: e["all"] for name, e in rep["auroc"].items() if e["all"] is not None}}


# ----------------------------------------------------------------------------------------------
# Evidence for a choice


@dataclass
class RunEvidence:
    """The studies that concern one run, nearest first (this run, then the same pool, then earlier pools)."""

    run: dict
    studies: list[dict] = field(default_factory=list)
    canary: dict | None = None

    def validations(self) -> list[dict]:
        return [s for s in self.studies if s["kind"] == "validate"]

    def mixes(self) -> list[dict]:
        return [s for s in self.studies if s["kind"] == "mix"]


def same_mix(a, b, tol: float = 0.005) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return set(a) == set(b) and all(abs(float(a[d]) - float(b[d])) <= tol for d in a)


def matches(sel: dict, method: str, budget: str, mix, order: str | None) -> bool:
    return (sel["method"] == method and (order is None or sel.get("order") in (None, order))
            and sel["budget"] == str(budget) and same_mix(sel.get("mix", "natural"), mix))


def finding_text(f: dict) -> str:
    return (f"{f['domain']} {f['verdict']} against {AGAINST.get(f['baseline'].split('@')[0], f['baseline'])} "
            f"({f['diff']:+.4f} [{f['lo']:+.4f}, {f['hi']:+.4f}])")


def study_line(study: dict, sel: dict) -> str:
    """One validation of one selection, in words: where, seeds, its verdicts against each baseline."""
    mine = [f for f in study["findings"] if f["candidate"] == sel["name"]]
    where = {"this run": "on this run", "same pool": "on another run of this pool",
             "earlier pool": "on an earlier pool"}[study["status"]]
    seeds = max((f["seeds"] for f in mine), default=study.get("seeds"))
    verdicts = "; ".join(finding_text(f) for f in mine) or "no comparison"
    return f"validated {where} ({study['name']}, {seeds} seeds, {str(study.get('created') or '')[:10]}): {verdicts}"


def choice_lines(ev: RunEvidence, method: str, budget: str, mix="natural", order: str | None = None,
                 n_baselines: int = 2, seeds: int = 3) -> dict:
    """What the workspace knows about choosing ``method`` at ``budget`` and ``mix``:
    ``{"lines": [...], "exact": [...], "neighbours": [...]}``.  The exact choice's validations
    first; else the nearest validated neighbours (the same method at another budget or mix); else
    one line saying it was not validated and what validating it costs."""
    label = f"{method}{'' if order is None else f' ({order}est)'}, {budget}" + (
        "" if mix == "natural" else ", mix " + ",".join(f"{d}={v:g}" for d, v in dict(mix).items()))
    exact, near = [], []
    for s in ev.validations():
        for sel in s["selections"]:
            if matches(sel, method, budget, mix, order):
                exact.append((s, sel))
            elif sel["method"] == method:
                near.append((s, sel))
    lines = [f"{label}: {study_line(s, sel)}" for s, sel in exact]
    if not exact:
        trainings = (1 + n_baselines) * seeds
        lines.append(f"{label}: not validated on this pool: `validate` it (about {trainings} trainings: the selection "
                     f"and {n_baselines} baselines x {seeds} seeds)")
        lines += [f"  nearest: {sel['method']}, {sel['budget']}" + ("" if sel.get("mix") == "natural" else
                  ", mix " + ",".join(f"{d}={v:g}" for d, v in sel["mix"].items())) + f": {study_line(s, sel)}"
                  for s, sel in near[:2]]
    if ev.canary and method in ev.canary["auroc"]:
        a = ev.canary["auroc"][method]
        lines.append(f"{method} on planted defects of this canary pool: AUROC {a:.3f} at keeping clean examples before "
                     f"the {ev.canary['corrupted']} planted ones (0.5: no better than chance)")
    return {"lines": lines, "exact": [s["folder"] for s, _ in exact], "neighbours": [s["folder"] for s, _ in near]}


def best_validated(ev: RunEvidence, domain: str = "objective", baseline: str = "random") -> dict | None:
    """The validated selection of this pool that did best against ``baseline`` on ``domain`` (the
    objective by default): ``{"line", "folder", "selection", "finding"}``, or None without one."""
    best = None
    gain = lambda f: -f["diff"] if f.get("lower_is_better", True) else f["diff"]  # noqa: E731 - in its direction
    for s in ev.validations():
        if s["status"] == "earlier pool":
            continue
        for f in s["findings"]:
            if f["domain"] == domain and f["baseline"].split("@")[0] == baseline and (
                    best is None or gain(f) > gain(best[1])):
                best = (s, f)
    if best is None:
        return None
    s, f = best
    sel = next((x for x in s["selections"] if x["name"] == f["candidate"].split("@")[0]), None)
    choice = "" if sel is None else f" ({sel['method']}, {sel['budget']}" + (
        "" if sel["mix"] == "natural" else ", mix " + ",".join(f"{d}={v:g}" for d, v in sel["mix"].items())) + ")"
    line = (f"best validated on this pool: {f['candidate']}{choice}, {finding_text(f)} in {s['name']} "
            f"({f['seeds']} seeds)")
    return {"line": line, "folder": s["folder"], "selection": sel, "finding": f}


def selection_lines(index: EvidenceIndex, selection_dir) -> list[str]:
    """What the validations of the workspace say about one selection folder (the dataset card's
    "validated as"), newest first; empty when it was never validated."""
    target = str(Path(selection_dir).resolve())
    found = []
    for s in index.entries():
        if s.get("kind") != "validate" or s.get("error"):
            continue
        for sel in s["selections"]:
            if sel.get("dir") == target:
                mine = [f for f in s["findings"] if f["candidate"] == sel["name"]]
                seeds = max((f["seeds"] for f in mine), default=s.get("seeds"))
                found.append((str(s.get("created") or ""), f"validated in {s['name']} ({seeds} seeds, "
                              f"{str(s.get('created') or '')[:10]}): " + ("; ".join(finding_text(f) for f in mine)
                                                                          or "no comparison")))
    return [line for _, line in sorted(found, reverse=True)]


def selection_evidence(run, recipe, workspace=None) -> dict:
    """The evidence a selection keeps (``summary.json``, the export's manifest and card): the lines
    for its choice of method, budget and mix, the best validated choice of its pool, and what the
    mix's validations say."""
    ev = EvidenceIndex(workspace).for_run(run)
    got = choice_lines(ev, recipe.method, recipe.budget, recipe.mix, recipe.order)
    best = best_validated(ev)
    return {"lines": got["lines"], "studies": got["exact"], "best": best["line"] if best else None,
            "mix": mix_lines(ev, recipe.mix) if recipe.mix != "natural" else []}


def mix_lines(ev: RunEvidence, mix) -> list[str]:
    """Validations of a selection at ``mix`` against the natural mix, and the latest mix study's
    predicted verdict at its recommendation (when ``mix`` is it)."""
    out = []
    for s in ev.validations():
        for sel in s["selections"]:
            if sel.get("mix") != "natural" and same_mix(sel["mix"], mix, tol=0.01):
                for f in s["findings"]:
                    if f["candidate"].split("@")[0] == sel["name"] and f["baseline"].split("@")[0] == "natural":
                        out.append(f"{s['name']}: {finding_text(f)}, {f['seeds']} seeds")
    mixes = [m for m in ev.mixes() if m["status"] != "earlier pool"]
    if mixes:
        m = max(mixes, key=lambda x: str(x.get("created") or ""))
        if same_mix(m["recommended"], mix, tol=0.01):
            out += [f"{m['name']} predicts: {finding_text(f)} (a prediction, not a measurement)"
                    for f in m["findings"]]
    return out


def evidence_lines(evidence: dict | None) -> list[str]:
    """A selection's kept evidence as the lines ``select`` prints (and the pages show)."""
    if not evidence:
        return []
    out = [f"evidence: {line}" for line in evidence.get("lines", [])]
    if evidence.get("best"):
        out.append(f"evidence: {evidence['best']}")
    out += [f"evidence (mix): {line}" for line in evidence.get("mix", [])]
    return out
