"""Stage 6, export: a selection written as a training file with a manifest (``writer``)."""
