"""Stage 4, selection: a run's score table and a recipe in, a selection folder out.

``recipe`` (what to select: method, budget, mix, thresholds, filters), ``allocation`` (exact budget
splits), ``pickers`` (one signature: rows, k, rng -> positions), ``diversity`` (embedding pickers),
``neardup`` and ``contamination`` (filters), ``target`` (RDS+ similarity to target examples),
``decisions`` (the curator's exclude / keep / tags, in the workspace's SQLite), ``annotate`` (what
the filters need from the run),
``apply`` (the pure, seeded recipe application), ``baselines`` (the random baseline and the others),
``summary`` (the numbers of a selection), ``folder`` (the selection folder and ``select_run``).
"""
