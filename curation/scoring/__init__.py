"""Stage 2, scoring: a model over many examples, exactly and fast.

``models`` (find, prepare, load and fingerprint models), ``losses`` (the batched exact loss and the
embeddings of one forward pass), ``passes`` (one scoring pass committed chunk by chunk into the score
cache), ``engine`` (where the work runs: this process, or Ray actors and Ray Train) and its
``watchdog``.
"""
