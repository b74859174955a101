"""Stage 1, data: records in, normalised conversations out.

``load`` (files and datasets -> examples, with a reason for every rejected row), ``pairs`` and
``pair_formats`` (preference pairs: shapes, ids, loading), ``templates``
(conversations -> tokens and the assistant-token mask), ``textnorm`` (words and hashes for
near-duplicates and decontamination), ``overlap`` (n-gram overlap with eval sets), ``default_data``
(the embedded default pool, eval and dev sets), ``canary`` (known-bad examples planted in a copy of
a pool, and how well a score finds them).
"""
