"""Stage 5, validation: does a curated set train a better model, measured, with intervals.

``validate`` (fine-tune a proxy on each selection and its baselines, score held-out sets),
``verdicts`` (paired differences, intervals and verdicts in words), ``answers`` (final answers of
math generations).
"""
