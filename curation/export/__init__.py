"""Stage 6, export: a selection written as a training file with a manifest (``writer``), and the
DavIR-DPO objective for a curator's own TRL trainer (``trl_dpo``)."""
