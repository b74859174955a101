"""The selection folder: what ``select`` writes, and the one place that reads it.

Layout::

    recipe.yaml        the normalised recipe (re-applied to the same run it gives the same ids: its
                       ``decisions`` names decisions.jsonl, the curator's decisions as they were)
    selected.parquet   example_id, source, source_index, domain, rank, n_tokens, kept (+ the score)
    summary.json       counts, allocations, statistics, the random baseline, the decisions applied,
                       and the run's provenance (so an export needs only this folder and the sources)
    decisions.jsonl    the snapshot of the curator's decisions the selection honoured (absent with
                       ``decisions: none``), in the ``decisions export`` format

``export``, ``validate``, ``mix``, the CLI and the dashboard read a selection through
:class:`Selection`; :func:`select_run` applies a recipe to a run folder and writes one.
"""

from __future__ import annotations

import json
from pathlib import Path

from curation.progress import Progress, Reporter
from curation.selection.annotate import annotate
from curation.selection.apply import ID_COLUMNS, SelectionResult, apply_recipe
from curation.selection.baselines import random_baseline
from curation.selection.recipe import Recipe, SelectionError
from curation.selection.summary import summarize


class Selection:
    """A selection folder (see the module docstring)."""

    RECIPE, ROWS, SUMMARY, DECISIONS = "recipe.yaml", "selected.parquet", "summary.json", "decisions.jsonl"
    FILES = (ROWS, SUMMARY, RECIPE)  # what every selection has
    KNOWN = (*FILES, DECISIONS)  # what a selection folder may hold: all of it is replaced

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Selection({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def require(self) -> "Selection":
        """This selection, or :class:`SelectionError` naming what makes the folder not one."""
        for name in self.FILES:
            if not (self.path / name).is_file():
                raise SelectionError(f"{self.path} is not a selection folder: {name} is missing "
                                     "(python -m curation select RUN_DIR ... --out SEL_DIR writes it)")
        return self

    def recipe(self) -> Recipe:
        return Recipe.read(self.require().path / self.RECIPE)

    def summary(self) -> dict:
        p = self.require().path / self.SUMMARY
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SelectionError(f"{p}: not a readable summary ({e}); select again into a new folder") from None
        if not isinstance(data, dict):
            raise SelectionError(f"{p}: expected a JSON object")
        return data

    def rows(self):
        """``selected.parquet`` as a DataFrame, checked: the id columns present, no example twice."""
        import pandas as pd

        p = self.require().path / self.ROWS
        try:
            df = pd.read_parquet(p)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one line
            raise SelectionError(f"{p}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        missing = [c for c in ID_COLUMNS if c not in df.columns]
        if missing:
            raise SelectionError(f"{p}: missing column(s) {missing}; a selection has {ID_COLUMNS}")
        dup = df["example_id"].duplicated()
        if dup.any():
            first = df.loc[dup, "example_id"].iloc[0]
            raise SelectionError(f"{p}: example {first} is listed {int((df['example_id'] == first).sum())} times "
                                 f"({int(dup.sum())} duplicate row(s)); each example is selected once")
        return df

    def rows_in(self, table):
        """:meth:`rows`, checked against the run's score ``table``: every example must be one of its
        rows (a hand-edited file may name others), and the selection must not be empty."""
        df = self.rows()
        p = self.path / self.ROWS
        if len(df) == 0:
            raise SelectionError(f"{p}: the selection is empty; select again")
        unknown = sorted(set(df["example_id"].astype(str)) - set(table["example_id"].astype(str)))
        if unknown:
            raise SelectionError(f"{p}: {len(unknown)} example(s) (e.g. {unknown[0]}) are not in the run's score table "
                                 f"({self.provenance().get('dir')}); the file was edited or comes from another run: "
                                 "select again")
        return df

    def provenance(self) -> dict:
        """The run's provenance the selection keeps (its folder, sources, models, template)."""
        return self.summary().get("run", {})

    def run_dir(self) -> Path:
        d = self.provenance().get("dir")
        if not d:
            raise SelectionError(f"{self.path / self.SUMMARY} does not name the run it was selected from")
        return Path(d)

    def decisions(self):
        """The decisions the selection honoured (:class:`curation.selection.decisions.Decisions`;
        empty when it used none)."""
        from curation.selection.decisions import Decisions, read_jsonl

        p = self.require().path / self.DECISIONS
        return read_jsonl(p) if p.is_file() else Decisions({}, "none")

    @classmethod
    def write(cls, out: str | Path, table, result: SelectionResult, baseline: SelectionResult | None,
              provenance: dict, decisions=None, evidence: dict | None = None) -> "Selection":
        """Write ``result`` (a recipe applied to ``table``, as applied: nothing is recomputed) to
        ``out/``, atomically, with the run's ``provenance``, the ``decisions`` snapshot it
        honoured (kept as decisions.jsonl, which the written recipe names) and the ``evidence``
        the workspace held about its choice (curation.validation.evidence.selection_evidence)."""
        from dataclasses import replace

        import pyarrow as pa
        import pyarrow.parquet as pq

        from curation import __version__
        from curation.atomic import atomic_dir

        summary = summarize(table, result, baseline)
        summary["run"] = provenance
        summary["code_version"] = __version__
        if evidence is not None:
            summary["evidence"] = evidence
        recipe = result.recipe
        used = decisions is not None and decisions.source != "none"
        if used:
            recipe = replace(recipe, decisions=cls.DECISIONS)
            summary["recipe"]["decisions"] = cls.DECISIONS
            summary["decisions"] = {**summary.get("decisions", {}), **decisions.describe(), "file": cls.DECISIONS}
        # The folder is renamed into place as a whole, so plain writes inside it are atomic enough.
        with atomic_dir(out, marker=cls.RECIPE, what="selection", known=cls.KNOWN) as tmp:
            (tmp / cls.RECIPE).write_text(recipe.to_yaml())
            pq.write_table(pa.Table.from_pandas(result.rows, preserve_index=False), tmp / cls.ROWS)
            (tmp / cls.SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
            if used:
                (tmp / cls.DECISIONS).write_text(decisions.to_jsonl(), encoding="utf-8")
        return cls(out)


def prepare_table(run, table, recipe: Recipe):
    """``(table, decisions)``: ``table`` (a run's scores) with what ``recipe`` needs beside the
    scores (:func:`curation.selection.annotate.annotate`), and the snapshot of the decisions it
    names (one snapshot: what is applied is what a saved selection keeps)."""
    from curation.selection.decisions import load_decisions

    decisions = load_decisions(recipe.decisions)
    return annotate(run, table, recipe, decisions=decisions), decisions


def apply_with_baseline(table, recipe: Recipe, run_kind: str | None):
    """``(selection, random baseline)`` of ``recipe`` over a prepared ``table`` (the random
    baseline at the same budget and mix; a random recipe is its own)."""
    result = apply_recipe(table, recipe, run_kind)
    return result, (result if recipe.method == "random" else random_baseline(table, recipe, run_kind))


def select_run(run_dir: str | Path, recipe: Recipe, out: str | Path, progress: Progress | None = None,
               evidence: dict | None = None) -> Path:
    """Apply ``recipe`` to a finished run folder and write the selection folder ``out`` (returned),
    keeping the ``evidence`` the caller gathered about the choice in its summary."""
    from curation.runs.folder import Run

    report = Reporter(progress)
    report(phase="reading run", done=0, total=3)
    run = Run(run_dir)
    meta = run.require_finished()
    table, decisions = prepare_table(run, run.scores(), recipe)
    report(phase="selecting", done=1, total=3)
    result, base = apply_with_baseline(table, recipe, meta.get("kind"))
    report(phase="writing", done=2, total=3)
    Selection.write(out, table, result, base, run.provenance(), decisions, evidence)
    report(phase="done", done=3, total=3)
    return Path(out)
