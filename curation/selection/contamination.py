"""Decontamination: flag a run's examples that share an n-gram with eval files.

:func:`flag_run` flags a run's examples against eval files (any format :mod:`curation.data.load` reads),
what ``select --decontaminate PATH ...`` excludes; the n-gram rule and its work on texts are
:mod:`curation.data.overlap`'s.
"""

from __future__ import annotations

import numpy as np

from curation.data.overlap import ContaminationError, contaminated
from curation.selection.recipe import Recipe


def eval_texts(paths) -> tuple[list[str], list[str]]:
    """``(labels, texts)`` of every example of the eval files ``paths`` (any format
    :func:`curation.data.load.load_sources` reads): label ``FILE#INDEX``, text the whole conversation."""
    from pathlib import Path

    from curation.data.load import SourceSpec, load_sources
    from curation.data.textnorm import conversation_text

    labels, texts = [], []
    for p in paths:
        if not Path(p).exists():
            raise ContaminationError(f"eval set {p}: no such file or folder; give the eval files to decontaminate against")
        data = load_sources([SourceSpec(path=str(p))])
        for e in data.examples:
            labels.append(f"{Path(p).name}#{e.source_index}")
            texts.append(conversation_text(e.messages))
    return labels, texts


def flag_run(ids, texts, eval_paths, n: int = Recipe.ngram):
    """Flag the pool examples ``ids`` (with their whole-conversation ``texts``) that share an
    ``n``-word n-gram with an example of ``eval_paths``: a DataFrame ``example_id, contaminated,
    contaminated_by`` (``FILE#INDEX`` of the eval example, None when clean)."""
    import pandas as pd

    labels, etexts = eval_texts(eval_paths)
    res = contaminated(list(texts), etexts, n)
    by = np.asarray(labels + [None], dtype=object)[np.where(res.flags, res.eval_index, len(labels))]
    return pd.DataFrame({"example_id": np.asarray(ids, dtype=str), "contaminated": res.flags,
                         "contaminated_by": by})
