"""Stage 1, data: records in, normalised conversations out.

``load`` (files and datasets -> examples, with a reason for every rejected row), ``templates``
(conversations -> tokens and the assistant-token mask), ``textnorm`` (words and hashes for
near-duplicates and decontamination), ``default_data`` (the embedded default pool and eval sets).
"""
