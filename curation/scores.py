"""The score registry: every score a run writes, declared once.

Each :class:`Score` says what a score is (its formula in one line), where it lives in a run's
``scores.parquet`` (its column, or the column of a plain score run it is derived from), which run
writes it, which way is better when a selection ranks by it, and what a curator should know
about it.  Everything else derives from this table: the columns a ``learn`` run writes and their
order, the methods ``select`` offers (and which runs can serve them), the statistics a selection's
summary reports, the columns the dashboard plots and the direction it sorts them.

A score belongs to one kind of data (``data``): SFT examples or preference pairs (a run holds one
kind; :func:`available_methods` offers a run only its own kind's scores, and random for both).

The formulas themselves are computed in :mod:`curation.runs.formulas` (a pair score run's in
:mod:`curation.runs.pair_tables`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Which run writes a column (the run kind a method needs).
SCORE_RUN, LEARN_RUN, HELDOUT_RUN, TARGETS = "score", "learn", "learn --heldout-folds", "targets"
PAIR_SCORE_RUN, PAIR_LEARN_RUN, PAIR_RATINGS = "pair score", "pair learn", "pair ratings"
PAIR_HELDOUT_RUN = "pair learn --heldout-folds"
RUN_HELP = {
    SCORE_RUN: "any score run (`python -m curation score ...` or `learn`)",
    LEARN_RUN: "a learnability run (`python -m curation learn ...`)",
    HELDOUT_RUN: "a learnability run with --heldout-folds N",
    TARGETS: "select --target DOMAIN=PATH (from the run's RDS+ embeddings, at selection time)",
    PAIR_SCORE_RUN: "a score run on preference pairs (`python -m curation score PAIRS ...` or `learn`)",
    PAIR_LEARN_RUN: "a learnability run on preference pairs (`python -m curation learn PAIRS ...`)",
    PAIR_RATINGS: "a score run on preference pairs whose source rates them (score_chosen / score_rejected)",
    PAIR_HELDOUT_RUN: "a learnability run on preference pairs with --heldout-folds N",
}
# The kind of data a score applies to.
SFT, PAIRS, BOTH = "sft", "pairs", "both"
DATA_HELP = {SFT: "SFT examples", PAIRS: "preference pairs"}


@dataclass(frozen=True)
class Score:
    """One score: its column, formula, producer, direction and caveats."""

    name: str  # the method name (select --method NAME)
    column: str | None  # the column of a learn run's scores.parquet (None: a sampler)
    formula: str  # one line
    written_by: str  # SCORE_RUN | LEARN_RUN | HELDOUT_RUN | TARGETS
    order: str | None  # "high" | "low": which end a selection keeps by default; None: it samples
    explanation: str  # for the dashboard and --help: what it means, known biases
    fallback: str | None = None  # a score run's column it is derived from when ``column`` is absent
    ranks: bool = True  # False for samplers (random, s2l)
    derive: str | None = None  # how the fallback column becomes this score: "exp" (ppl = exp(loss)); None: as is
    data: str = SFT  # SFT | PAIRS | BOTH: the data it applies to

    def source_column(self, columns) -> str | None:
        """The column of a table with ``columns`` that this score is read from: its own column, else
        its fallback (a plain score run), else None (the table cannot give it)."""
        cols = set(columns)
        if self.column is not None and self.column in cols:
            return self.column
        return self.fallback if self.fallback is not None and self.fallback in cols else None

    def value_column(self, columns) -> str | None:
        """The name the score's values go by in a table with ``columns``: the column read, or the
        score's own name when they are derived (``ppl`` from a score run's ``loss``)."""
        col = self.source_column(columns)
        return self.name if col is not None and col != self.column and self.derive else col

    def values(self, df):
        """The value of this score for every row of ``df`` (float64), from its column or derived
        from its fallback (ppl = exp(loss)); None when ``df`` has neither."""
        import numpy as np

        col = self.source_column(df.columns)
        if col is None:
            return None
        v = df[col].astype("float64").to_numpy()
        if col != self.column and self.derive == "exp":
            with np.errstate(over="ignore"):
                return np.exp(v)
        return v


def pair_score(name: str, formula: str, written_by: str, order: str, explanation: str) -> Score:
    """A score of preference pairs, in the column of its name."""
    return Score(name, name, formula, written_by, order, explanation, data=PAIRS)


SCORES: dict[str, Score] = {s.name: s for s in (
    Score("davir", "davir", "(L_base - L_ref) / L_base", LEARN_RUN, "high",
          "the share of the base model's loss that training on the pool removes (LoBaSS/DavIR); higher = more "
          "learnable. Relative, so less tied to answer length than rho, but noisy when L_base is near 0."),
    Score("rho", "rho", "L_base - L_ref", LEARN_RUN, "high",
          "the absolute loss drop (RHO-LOSS-like baseline); higher = more learnable. Known bias: tracks answer "
          "length and high base loss; check it against length."),
    Score("ifd", "ifd", "L(response | prompt) / L(response alone), base model", LEARN_RUN, "high",
          "Cherry LLM's Instruction-Following Difficulty; higher = the prompt helps less (Cherry keeps the "
          "highest). ifd > 1 means the prompt does not help at all, often a mismatched pair: filter with "
          "--max ifd=1. Known bias: rises with answer length, strongly on chat data."),
    Score("ppl", "ppl_base", "exp(L_base)", SCORE_RUN, "low",
          "perplexity of the answers under the base model; low = what the model already predicts well "
          "(perplexity filtering). Known bias: mean per-token loss usually falls as answers get longer and more "
          "formulaic, so low ppl leans to long, templated answers.", fallback="loss", derive="exp"),
    Score("loss", "loss_base", "L_base: mean NLL per assistant token, base model", SCORE_RUN, "high",
          "high = hardest for the model (the 'high loss' baseline: the same ranking as ppl, reversed). Known "
          "biases: mean per-token loss falls as answers get longer, so high loss leans to short answers; it also "
          "picks noisy or unlearnable examples.", fallback="loss"),
    Score("longest", "n_response_tokens", "assistant tokens of the example (of a pair: chosen + rejected)", SCORE_RUN, "high",
          "the longest answers first (a strong, cheap baseline for chat SFT that needs no model score); low = "
          "the shortest. Every loss-based score should be checked against it.", data=BOTH),
    Score("target", "target_sim", "max cosine of the RDS+ embedding to the domain's target examples", TARGETS, "high",
          "how close an example is to the examples you want more of (RDS+: the position-weighted mean of the model's "
          "final hidden states over the whole example); --method target takes them round-robin, each target its "
          "most similar examples. Targets must never be the eval sets."),
    Score("s2l", "s2l_cluster", "K-means cluster of the loss trajectory L_0..L_K", LEARN_RUN, None,
          "SmallToLarge: balanced sampling across clusters of loss trajectories, smallest first, so rare "
          "learning patterns are kept.", ranks=False),
    Score("davir_heldout", "davir_heldout", "(L_base - L_ref_heldout) / L_base", HELDOUT_RUN, "high",
          "davir with L_ref from a model that never trained on the example (k-fold): memorisation cannot "
          "inflate it; higher = more learnable (generalisable)."),
    Score("rho_heldout", "rho_heldout", "L_base - L_ref_heldout", HELDOUT_RUN, "high",
          "rho with a held-out L_ref (k-fold). Known bias: like rho, favours long answers."),
    Score("random", None, "a seeded uniform sample", SCORE_RUN, None,
          "a seeded uniform sample at the same budget and mix: the baseline every method must beat.", ranks=False,
          data=BOTH),
    # Preference pairs (a pair score run: the base model's log-probs of each response given the prompt,
    # summed over the response's tokens; a pair learn run: the same under the reference trained on the pool).
    pair_score("margin_sum", "log p(chosen) - log p(rejected), summed over each response's tokens, base model",
               PAIR_SCORE_RUN, "low",
               "the base model's own preference (DPO's margin before any training); low = it prefers the rejected "
               "response: the pairs it gets most wrong (the most to teach, or a wrong label), high = it already agrees. Known bias: a sum over "
               "tokens, so it tracks the length difference (a longer response has a lower log-prob): strongly "
               "anti-correlated with len_diff; check it against len_diff."),
    pair_score("margin_mean", "loss_rejected - loss_chosen (mean NLL per token), base model", PAIR_SCORE_RUN, "low",
               "the base model's preference per token; low = it prefers the rejected response. Less tied to length "
               "than margin_sum, but per-token means still fall as responses get longer."),
    pair_score("loss_chosen", "L(chosen | prompt): mean NLL per token of the chosen response, base model",
               PAIR_SCORE_RUN, "high",
               "how hard the preferred response is for the base model; high = the most left to learn from it. Known "
               "bias: mean per-token loss falls as responses get longer, so high loss_chosen leans to short chosen "
               "responses."),
    pair_score("loss_rejected", "L(rejected | prompt): mean NLL per token of the rejected response, base model",
               PAIR_SCORE_RUN, "low",
               "how unlikely the dispreferred response is for the base model; low = the base model would itself "
               "write something like it (the mistakes a pair teaches it to avoid). Known bias: mean per-token loss "
               "falls as responses get longer, so low loss_rejected leans to long rejected responses."),
    pair_score("len_diff", "n_chosen_tokens - n_rejected_tokens", PAIR_SCORE_RUN, "low",
               "how much longer the chosen response is. DPO learns 'longer is better' from pairs whose chosen is the "
               "longer (the length bias DavIR-DPO targets); low = chosen no longer than rejected. A length control, "
               "not a quality score: compare every margin against it."),
    pair_score("rating_margin", "rating_chosen - rating_rejected (the source's score_chosen - score_rejected)",
               PAIR_RATINGS, "high",
               "the raters' (or judge's) margin; high = a clear preference (argilla's dpo-mix-7k keeps pairs whose "
               "chosen is rated 4 or more). Known bias: judges rate longer responses higher, so it leans to long "
               "chosen responses."),
    pair_score("reward_chosen", "beta * (log p_ref(chosen) - log p_base(chosen)), summed over the response's tokens",
               PAIR_LEARN_RUN, "high",
               "DPO's implicit reward of the chosen response, with the reference trained on the pool as the policy; "
               "high = training raised its likelihood most. Known bias: a sum over tokens, so it grows with the "
               "response's length (leans to long chosen responses)."),
    pair_score("reward_rejected", "beta * (log p_ref(rejected) - log p_base(rejected)), summed over the "
               "response's tokens", PAIR_LEARN_RUN, "low",
               "DPO's implicit reward of the rejected response; low = training lowered its likelihood (or raised it "
               "least). Known bias: a sum over tokens, so it grows with the response's length (long rejected "
               "responses move most)."),
    pair_score("reward_margin", "reward_chosen - reward_rejected", PAIR_LEARN_RUN, "high",
               "DPO's implicit reward margin: high = the pairs training on the pool separates most (arXiv 2502.14560 "
               "keeps the largest; 2508.04149 keeps the smallest, 'difficult' pairs; Selective DPO drops the "
               "hardest: order low takes the other end). Known bias: tracks the length difference (correlation 0.38 "
               "with it under vanilla DPO, as summarised from DavIR v2: long chosen responses win); check it against "
               "len_diff."),
    pair_score("davir_chosen", "(L_base - L_ref) / L_base of the chosen response (summed NLL)",
               PAIR_LEARN_RUN, "high",
               "SFT davir of the chosen response: the share of its base loss that training on the pool removes; "
               "relative, so less tied to length than reward_chosen (long responses), but noisy when L_base is near 0."),
    pair_score("davir_rejected", "(L_base - L_ref) / L_base of the rejected response (summed NLL)",
               PAIR_LEARN_RUN, "low",
               "SFT davir of the rejected response; low = training on the pool made it no more likely. Relative, so "
               "less tied to length than reward_rejected (long responses)."),
    pair_score("davir_margin", "davir_chosen - davir_rejected", PAIR_LEARN_RUN, "high",
               "DavIR-DPO's learnability of a pair: how much more training on the pool made the chosen response "
               "likely than the rejected, each relative to its base NLL. Normalising by the base NLL is what "
               "DavIR-DPO reports cuts the correlation with the length difference (0.38 -> 0.07, as summarised from "
               "DavIR v2); still check it against len_diff (long chosen responses)."),
    pair_score("reward_margin_heldout", "reward_margin with the reference trained without the pair's fold",
               PAIR_HELDOUT_RUN, "high",
               "DPO's implicit reward margin under a model that never trained on the pair (k-fold): memorising the "
               "pair cannot inflate it; high = what training on the other pairs generalises to. Known bias: like "
               "reward_margin, tracks the length difference (leans to pairs whose chosen is the longer); check it "
               "against len_diff."),
    pair_score("davir_margin_heldout", "davir_margin with the reference trained without the pair's fold",
               PAIR_HELDOUT_RUN, "high",
               "DavIR-DPO's learnability of a pair under a model that never trained on it (k-fold); relative to the "
               "base NLL of each response, so less tied to length than reward_margin_heldout; still check it against "
               "len_diff (long chosen responses)."),
)}

METHODS = tuple(SCORES)
ORDERS = ("high", "low")

# The columns of a learn run's scores.parquet after the score run's, in table order, with their
# formulas (the trajectory ``loss_ckpt_0..K`` comes first).  ``learn_columns`` derives the order.
LEARN_COLUMNS = {
    "loss_base": "L_0 = loss_ckpt_0",
    "loss_ref": "L_K = loss_ckpt_K",
    "davir": SCORES["davir"].formula,
    "rho": SCORES["rho"].formula,
    "ifd": SCORES["ifd"].formula,
    "ppl_base": SCORES["ppl"].formula,
}
HELDOUT_COLUMNS = {"loss_ref_heldout": "L under the model trained without the example's fold",
                   "davir_heldout": SCORES["davir_heldout"].formula, "rho_heldout": SCORES["rho_heldout"].formula}
# The scores of a pair score run and of a pair learn run, in table order, with their formulas.
PAIR_COLUMNS = {s.column: s.formula for s in SCORES.values() if s.written_by == PAIR_SCORE_RUN}
PAIR_LEARN_COLUMNS = {s.column: s.formula for s in SCORES.values() if s.written_by == PAIR_LEARN_RUN}
PAIR_HELDOUT_COLUMNS = {s.column: s.formula for s in SCORES.values() if s.written_by == PAIR_HELDOUT_RUN}
# A pair run's per-response columns beside its margins (the source's ratings).
RATING_SIDE_COLUMNS = ("rating_chosen", "rating_rejected")
STABILITY_SCORES = ("davir", "rho")  # per reference run: {score}_r{i}, spread {score}_sd
LENGTH_COLUMNS = ("n_response_tokens", "n_prompt_tokens", "n_tokens_full", "len_diff", "n_chosen_tokens",
                  "n_rejected_tokens")


def data_of(columns) -> str:
    """The kind of data a score table holds: PAIRS (a pair run's table has ``pair_id``) or SFT."""
    return PAIRS if "pair_id" in set(columns) else SFT


def length_column(columns) -> str:
    """The length a table's length strata and length profile follow: a pair's ``len_diff``
    (chosen - rejected tokens, the length bias DavIR-DPO targets), an example's response tokens."""
    return "len_diff" if data_of(columns) == PAIRS else "n_response_tokens"


def methods_for(columns) -> list[str]:
    """The methods that select from a table of this data (SFT examples or preference pairs)."""
    data = data_of(columns)
    return [n for n, s in SCORES.items() if s.data in (data, BOTH)]


def default_method(columns) -> str:
    """The method a form preselects: the learnability score when the table has it, else the base loss
    (for pairs: davir_margin, else margin_sum)."""
    ok = available_methods(columns)
    prefer = ("davir_margin", "margin_sum") if data_of(columns) == PAIRS else ("davir", "loss")
    return next((m for m in prefer if ok.get(m) is None), "random")


def trajectory_columns(columns) -> list[str]:
    """The trajectory columns ``loss_ckpt_0 .. loss_ckpt_K`` of a table, in checkpoint order."""
    found = [(int(m.group(1)), c) for c in columns if (m := re.fullmatch(r"loss_ckpt_(\d+)", str(c)))]
    return [c for _, c in sorted(found)]


def run_columns(columns, score: str) -> list[str]:
    """The per-reference-run columns ``{score}_r1 .. {score}_rN`` of a table, in run order."""
    found = [(int(m.group(1)), c) for c in columns if (m := re.fullmatch(rf"{re.escape(score)}_r(\d+)", str(c)))]
    return [c for _, c in sorted(found)]


def stability_columns(columns) -> list[str]:
    """``loss_ref_r*, davir_r*, rho_r*`` (by run) and ``davir_sd, rho_sd`` present in a table."""
    out = []
    for s in ("loss_ref", *STABILITY_SCORES):
        out += run_columns(columns, s)
    return out + [f"{s}_sd" for s in STABILITY_SCORES if f"{s}_sd" in set(columns)]


def score_columns(columns) -> list[str]:
    """The numeric score columns of a table, in the order the dashboard offers them: the ranking
    scores of the registry, the learn run's other columns, the spreads across reference runs, then
    the trajectory."""
    cols = set(columns)
    ranked = [s.column for s in SCORES.values() if s.ranks and s.column and s.column not in LENGTH_COLUMNS]
    extra = [c for c in (*LEARN_COLUMNS, *HELDOUT_COLUMNS, "loss", *RATING_SIDE_COLUMNS) if c not in ranked]
    spreads = [f"{s}_sd" for s in STABILITY_SCORES]
    seen, out = set(), []
    for c in [*ranked, *extra, *spreads, *trajectory_columns(columns)]:
        if c in cols and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def keeps_high(column: str) -> bool:
    """Whether a selection ranking by ``column`` (a method name or a column) keeps its high end by
    default; columns no method ranks by (loss_ref, loss_ckpt_*) count as high."""
    s = SCORES.get(column)
    if s is None or s.order is None:
        s = next((x for x in SCORES.values() if x.column == column and x.order), None)
    return s is None or s.order == "high"


def available_methods(columns) -> dict[str, str | None]:
    """For each method: None if a score table with ``columns`` supports it, else why not (the
    dashboard greys it out with that reason).  A run is offered its own kind of data's scores only
    (random for both)."""
    cols = set(columns)
    kind = data_of(cols)
    out = {}
    for name, s in SCORES.items():
        needed = [c for c in (s.column, s.fallback) if c]
        if s.data not in (BOTH, kind):
            out[name] = f"a score of {DATA_HELP[s.data]}; this run holds {DATA_HELP[kind]}"
        elif s.written_by == TARGETS or not needed or any(c in cols for c in needed):
            out[name] = None
        else:
            out[name] = f"needs the column {s.column!r}, written by {RUN_HELP[s.written_by]}"
    return out


def run_kind(columns) -> str:
    """``learn`` when a table has a learn run's columns, ``score`` when it has scores, else ``unknown``."""
    cols = set(columns)
    if cols & (set(LEARN_COLUMNS) | set(PAIR_LEARN_COLUMNS)):
        return "learn"
    return "score" if cols & {"loss", "loss_chosen", "margin_sum"} else "unknown"
