"""What a recipe needs beside the scores, read from the run folder, and the filters that use it.

:func:`annotate` adds to a run's score table the columns the recipe's options need:
``embedding`` (``--diversity``; the run's ``embeddings.npy``), ``near_dup_group`` (``--dedup near``;
:func:`curation.selection.neardup.near_dup_groups`, cached in the run folder) and
``contaminated``/``contaminated_by`` (``--decontaminate``;
:func:`curation.selection.contamination.flag_run`) and ``target_sim``/``target_sims``
(``--target``; :mod:`curation.selection.target`) and ``decision`` (the curator's ``exclude``/``keep``,
from the snapshot the recipe's ``decisions`` names; :mod:`curation.selection.decisions`) and
``canary_kind`` (a run over a canary pool: ``clean`` or the planted defect; :mod:`curation.data.canary`).
:func:`drop_contaminated` and
:func:`drop_near_duplicates` then take rows out of the eligible set, each returning its report for
the summary (how many, which, why).
"""

from __future__ import annotations

import numpy as np

from curation.progress import Progress
from curation.selection.recipe import Recipe, SelectionError

ANNOTATIONS = {"near_dup_group": "--dedup near", "contaminated": "--decontaminate", "embedding": "--diversity",
               "target_sims": "--method target (with --target DOMAIN=PATH)"}


def annotation_key(recipe: Recipe) -> tuple:
    """The recipe's settings that decide what :func:`annotate` adds, and the state of the decisions
    it names (a cache key for callers that apply many recipes to one run)."""
    from curation.selection.decisions import state_key

    return (recipe.diversity is not None, recipe.near_dup_threshold if recipe.dedup else None,
            tuple(recipe.decontaminate), recipe.ngram if recipe.decontaminate else None,
            tuple((d, tuple(p)) for d, p in recipe.target.items()), state_key(recipe.decisions))


def annotate(run, table, recipe: Recipe, progress: Progress | None = None, decisions=None):
    """``table`` (the run's scores) with the columns the recipe's ``diversity``, ``dedup``,
    ``decontaminate``, ``target`` and ``decisions`` need (see the module docstring); ``run`` is a
    :class:`curation.runs.folder.Run`.  ``decisions`` (a :class:`curation.selection.decisions.Decisions`)
    is the snapshot to apply; by default the one ``recipe.decisions`` names is read."""
    from curation.selection.decisions import load_decisions

    df = table.drop(columns=[c for c in ("near_dup_group", "group_size", "contaminated", "contaminated_by",
                                         "embedding", "target_sims", "target_sim", "decision", "canary_kind")
                            if c in table.columns])
    snap = decisions if decisions is not None else load_decisions(recipe.decisions)
    if snap.source != "none":
        df["decision"] = df["example_id"].astype(str).map(lambda i: snap.rows.get(i, {}).get("decision"))
    df = with_canaries(run, df)
    if recipe.target:
        from curation.selection.target import embed_targets, target_columns

        check_target_domains(recipe, df["domain"].astype(str).unique())  # before any embedding
        targets = embed_targets(run, recipe.target, set(df["example_id"].astype(str)), progress)
        df = target_columns(run, df, targets)
    if recipe.diversity:
        got = run.embeddings()
        if got is None:
            raise SelectionError(f"--diversity needs the run's embeddings, and {run.path} has no embeddings.npy; "
                                 "score the data again into a new folder")
        row_of = {i: j for j, i in enumerate(got[0])}
        df["embedding"] = [got[1][row_of[i]] if i in row_of else None for i in df["example_id"].astype(str)]
    if not recipe.dedup and not recipe.decontaminate:
        return df
    texts = run.texts() if recipe.decontaminate else None  # read once for both
    if recipe.dedup:
        from curation.selection.neardup import near_dup_groups

        df = df.merge(near_dup_groups(run, recipe.near_dup_threshold, texts=texts, progress=progress)[
            ["example_id", "near_dup_group"]], on="example_id", how="left")
    if recipe.decontaminate:
        from curation.selection.contamination import flag_run

        ids = df["example_id"].astype(str).tolist()
        missing = [i for i in ids if i not in texts]
        if missing:
            raise SelectionError(f"{len(missing)} example(s) of the run (e.g. {missing[0]}) are no longer in its "
                                 "sources; re-run the scoring on the current files")
        df = df.merge(flag_run(ids, [texts[i] for i in ids], recipe.decontaminate, recipe.ngram),
                      on="example_id", how="left")
    return df


def with_canaries(run, df):
    """``df`` with ``canary_kind`` when the run was scored over a canary pool (the truth beside its
    sources), so summaries can count the planted defects a selection holds."""
    from curation.data.canary import truth_for

    df = df.drop(columns=["canary_kind"], errors="ignore")
    truth = truth_for(run.provenance()) if run is not None else None
    if truth is not None:
        df["canary_kind"] = df["example_id"].astype(str).map(truth)
    return df


def check_target_domains(recipe: Recipe, domains) -> None:
    """Refuse a ``--target`` domain the run does not have (its targets would be ignored, yet the
    recipe would say they were used)."""
    have = sorted({str(d) for d in domains})
    unknown = [d for d in recipe.target if d not in have]
    if unknown:
        raise SelectionError(f"--target {unknown[0]}: the run has no domain {unknown[0]!r} (its domains: "
                             f"{', '.join(have)}); give --target DOMAIN=PATH with one of them (a dev file is named "
                             "after its domain)")


def annotation(df, column: str) -> np.ndarray:
    """An annotation column of ``df``, or a message naming the option that needs it."""
    if column not in df.columns:
        raise SelectionError(f"{ANNOTATIONS[column]} needs the column {column!r} beside the scores; "
                             "curation.selection.annotate.annotate(run, table, recipe) adds it "
                             "(select and the Select page do)")
    return df[column].to_numpy()


def drop_contaminated(df, recipe: Recipe, eligible: np.ndarray) -> dict:
    """Take the rows the eval sets flag out of ``eligible`` (unless ``keep_contaminated``); the report."""
    flagged = annotation(df, "contaminated").astype(bool)
    by = df["contaminated_by"].to_numpy() if "contaminated_by" in df.columns else np.full(len(df), None)
    rows = np.flatnonzero(flagged)
    rows = rows[np.argsort(df["example_id"].astype(str).to_numpy()[rows], kind="stable")]
    domains = df.loc[flagged, "domain"].astype(str).value_counts().sort_index()
    report = {"eval_sets": list(recipe.decontaminate), "ngram": recipe.ngram, "flagged": int(len(rows)),
              "flagged_by_domain": {str(d): int(c) for d, c in domains.items()},
              "flagged_eligible": int((flagged & eligible).sum()), "excluded": not recipe.keep_contaminated,
              "first": [{"example_id": str(df["example_id"].iat[i]), "domain": str(df["domain"].iat[i]),
                         "eval_example": by[i]} for i in rows[:5]]}
    if not recipe.keep_contaminated:
        eligible &= ~flagged
    return report


def drop_near_duplicates(df, recipe: Recipe, eligible: np.ndarray, score, ids: np.ndarray) -> dict:
    """Keep the best-ranked eligible member of each near-duplicate group (for samplers: the
    smallest example id) in ``eligible``; the report."""
    from curation.selection.neardup import dedup_keep_best

    groups = annotation(df, "near_dup_group").astype(np.int64)
    rows = np.flatnonzero(eligible)
    ranking = score[rows] if score is not None and recipe.order else np.zeros(len(rows))
    keep = dedup_keep_best(groups[rows], ranking, ids[rows], recipe.order or "high")
    dropped = rows[~keep]
    eligible[dropped] = False
    sizes = np.bincount(groups)
    dropped = dropped[np.argsort(ids[dropped], kind="stable")]
    return {"threshold": recipe.near_dup_threshold, "groups_with_duplicates": int((sizes > 1).sum()),
            "rows_in_such_groups": int(sizes[sizes > 1].sum()), "dropped": int(len(dropped)),
            "first_dropped": [str(ids[i]) for i in dropped[:5]]}
