"""Stage 3, runs: a scoring or learning run over a pool, written as one resumable run folder.

``steps`` (the settings every run shares and the steps it starts and ends with), ``score`` (the
base model's losses and embeddings), ``pair_score`` and ``pair_tables`` (the same for preference
pairs: each response given its prompt, the prompt once per pair), ``learn`` (reference
fine-tunes, held-out folds, proxy checkpoints: the learnability scores), ``training`` (the
fine-tuning loop those runs and validation use), ``dpo`` (its DPO objective on preference pairs),
``formulas`` (each score from the losses), ``folder`` (the run folder: layout, the one reader, the
run key).
"""
