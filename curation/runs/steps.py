"""What every run over a pool shares: its settings (:class:`RunConfig`) and the steps it starts and
ends with.

    load_inputs (sources, model, template, max length) -> claim (provenance, the run folder)
        -> tokenise (examples.parquet) -> ... the run's own passes ... -> write_tables

``score`` (:mod:`curation.runs.score`) and ``learn`` (:mod:`curation.runs.learn`) call these in
this order; the run folder they write is described in :mod:`curation.runs.folder`.

What comes after a run (validation's proxy trainings and eval sets, selection's targets) reopens
its model context with :func:`reopen`: the run's template checked against its fingerprint, its max
length, the pass settings, and :meth:`RunContext.encode` (the one encoding that drops and names
the examples that cannot be used).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass

from curation import __version__
from curation.config import ComputeConfig, check_at_most, check_positive, option, parse_pairs, result_key
from curation.data.load import DEFAULT_MAX_RECORD_BYTES, SOURCE_FORMATS, SourceError
from curation.runs.folder import Run, RunError, example_table, run_key, score_table, source_entries, token_table

DEFAULT_MAX_LENGTH = 2048  # tokens per example, unless the model's context is shorter


@dataclass(kw_only=True)
class RunConfig(ComputeConfig):
    """The settings every run over a pool shares: the data, the model and how examples become tokens."""

    sources: list[str] = option(help="data files, datasets folders or hub ids; DOMAIN= tags their examples "
                                     "(e.g. math=gsm8k.jsonl)", positional=True, metavar="[DOMAIN=]PATH")
    out: str = option(help="output folder (scores.parquet, token_losses.parquet, run.json)", result=False)
    model: str = option("default", "`default` (SmolLM2-135M-Instruct, shipped in a PyPI wheel), a model folder, "
                                   "a .gguf file or a hub id")
    max_length: int | None = option(None, f"tokens per example; longer ones are cut at the end and flagged `truncated` "
                                          f"(default: {DEFAULT_MAX_LENGTH}, or the model's context length if shorter)")
    limit: int | None = option(None, "use the first N records of each source")
    template: str = option("auto", "auto | chat | alpaca | path to a Jinja chat template")
    columns: dict[str, str] = option(help="map canonical fields to your columns, e.g. question=problem,answer=solution",
                                     default_factory=dict)
    format: str | None = option(None, "force the record shape instead of detecting it (SFT examples or "
                                      "preference pairs)", choices=SOURCE_FORMATS)
    max_record_bytes: int = option(DEFAULT_MAX_RECORD_BYTES, "a record larger than this (a line, a CSV row, a JSON "
                                                             "object, as stored) is rejected by name without being read")

    def __post_init__(self):
        ComputeConfig.__post_init__(self)
        if isinstance(self.sources, str):
            self.sources = [self.sources]
        if not self.sources:
            raise ValueError("give at least one source: [DOMAIN=]PATH")
        self.columns = parse_pairs(self.columns)
        check_positive(self, "max_length", "limit", "max_record_bytes")
        check_at_most(self, max_length=1 << 20, max_record_bytes=1 << 31)
        self.source_specs()  # a malformed DOMAIN=PATH is refused now, not when a job starts

    def source_specs(self):
        from curation.data.load import parse_source_arg

        return [parse_source_arg(s, columns=self.columns, format=self.format, max_record_bytes=self.max_record_bytes)
                for s in self.sources]

    def resolved_max_length(self, context: int | None) -> int:
        """``max_length``, or the default capped at the model's ``context``; an explicit value above
        the context is refused (the model has no position for those tokens)."""
        if self.max_length is None:
            return min(DEFAULT_MAX_LENGTH, context or DEFAULT_MAX_LENGTH)
        if context and self.max_length > context:
            raise ValueError(f"--max-length {self.max_length} is above the model's context length ({context} tokens); "
                             f"use --max-length {context} or less")
        return self.max_length


def data_kind(cfg: RunConfig) -> str:
    """``"pairs"`` or ``"sft"``: what the run's sources hold (:class:`curation.data.pairs.MixedData`,
    one line, for a mix).  A source of neither kind is left to the SFT loader, which says what is
    wrong with it."""
    from curation.data.pairs import MixedData, run_kind

    try:
        return run_kind(cfg.source_specs())
    except MixedData:
        raise
    except SourceError:
        return "sft"


def load_inputs(cfg: RunConfig, report, kind: str | None = None):
    """Load the sources (SFT examples, or with ``kind == "pairs"`` preference pairs) and the
    model, resolve the template and the max length: ``(data, model, template, max_length)``.
    Without ``kind`` the sources must hold SFT examples (pairs are refused with one line)."""
    from curation.data.load import load_sources
    from curation.data.pairs import load_pairs
    from curation.data.templates import resolve_template
    from curation.scoring.losses import check_head_path
    from curation.scoring.models import load_model

    report(phase="loading data", done=0, total=None)
    if kind is None and data_kind(cfg) == "pairs":
        raise SourceError(f"{', '.join(cfg.sources)}: preference pairs; this command reads SFT examples (score them "
                          "with `python -m curation score`)")
    if kind == "pairs":
        data = load_pairs(cfg.source_specs(), limit=cfg.limit)
    else:
        data = load_sources(cfg.source_specs(), limit=cfg.limit)
    report(phase="loading model")
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    max_length = cfg.resolved_max_length(getattr(lm.model.config, "max_position_embeddings", None))
    check_head_path(lm.model)
    template = resolve_template(lm.tokenizer, cfg.template)
    return data, lm, template, max_length


def claim(kind: str, cfg, data, lm, template, settings, reference=None, extra: dict | None = None,
          key: dict | None = None):
    """The run's provenance and its folder, claimed (refused if it holds another run).

    ``key``: the settings that change results (default: ``cfg.result_key()``).  ``settings`` (a :class:`curation.scoring.passes.PassSettings`) names the base model's pass, from
    which :meth:`Run.scores` reads the rows committed so far while the run is in progress."""
    sources = source_entries(data.sources)
    meta = {
        "kind": kind, "code_version": __version__, "config": asdict(cfg), "model": lm.describe(),
        "template": {"name": template.name, "fingerprint": template.fingerprint},
        "max_length": settings.max_length, "sources": sources,
        "n_examples": len(data.pairs) if hasattr(data, "pairs") else len(data.examples),
        "n_rejected_on_load": len(data.rejected),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        **(extra or {}),
    }
    if key is None:
        key = cfg.result_key() if hasattr(cfg, "result_key") else result_key(cfg)
    key_settings = {**key,
                    "max_length": settings.max_length}  # resolved: the default, capped by the model
    meta["run_key"] = run_key(kind, key_settings, meta["model"], meta["template"], sources,
                              reference.describe() if reference is not None else None)
    meta["base_pass"] = {"cache": str(settings.cache.root.resolve()), "key": settings.key(lm.fingerprint)}
    run = Run(cfg.out)
    run.claim(meta)
    return run, meta


def encode_examples(data, tokenizer, template, max_length: int, need_response: bool = False):
    """Tokenise every example and mark its assistant tokens (no side effect).

    Returns ``(examples, encoded, rejected rows)``: the loader's rejected records, then the
    examples the template cannot render, each with its reason (and, with ``need_response``, the
    examples with no assistant token within ``max_length``: nothing of them can be trained on or
    evaluated)."""
    from curation.data.load import RecordError, Rejected
    from curation.data.templates import encode_many

    rejected = [asdict(r) for r in data.rejected]
    examples, encoded = [], []
    for ex, enc in zip(data.examples, encode_many(tokenizer, template, [e.messages for e in data.examples],
                                                  max_length)):
        why = str(enc) if isinstance(enc, RecordError) else (
            "no assistant token within max length" if need_response and enc.n_response_tokens == 0 else None)
        if why is not None:
            rejected.append(asdict(Rejected(ex.source, ex.source_index, None, why, ex.example_id)))
        else:
            examples.append(ex)
            encoded.append(enc)
    return examples, encoded, rejected


@dataclass
class RunContext:
    """A finished run's model context, reopened: the tokenizer, the run's template (checked against
    the fingerprint it recorded), its max length and the settings of passes through the score
    cache, so that more examples (eval sets, targets, training sets) are encoded, masked and scored
    exactly as the run's own were."""

    tokenizer: object
    template: object  # curation.data.templates.Template
    max_length: int
    settings: object  # curation.scoring.passes.PassSettings

    def encode(self, data, need_response: bool = False):
        """:func:`encode_examples` of a loader result with the run's template and max length."""
        return encode_examples(data, self.tokenizer, self.template, self.max_length, need_response)


def reopen(meta: dict, tokenizer, dtype: str, device: str, fix: str, cache: str | None = None,
           compute: ComputeConfig | None = None) -> RunContext:
    """The :class:`RunContext` of the run ``meta`` (its run.json) for a model whose ``tokenizer``
    runs on ``device`` in ``dtype``; the pass settings commit into ``cache`` (None: the default
    score cache) and batch as ``compute`` says (None: the defaults of :class:`ComputeConfig`).
    A template that renders otherwise than the run's is refused (:class:`RunError`), with ``fix``:
    what the user can do about it."""
    from curation.data.templates import resolve_template
    from curation.scoring.passes import PassSettings, ScoreCache

    template = resolve_template(tokenizer, meta.get("config", {}).get("template", "auto"))
    want = meta.get("template", {}).get("fingerprint")
    if want and template.fingerprint != want:
        raise RunError(f"the model's chat template ({template.fingerprint}) differs from the run's ({want}): its "
                       f"examples would be masked otherwise than the run's; {fix}")
    batch_tokens, chunk_examples = ((compute.batch_tokens, compute.chunk_examples) if compute is not None
                                    else (ComputeConfig.batch_tokens, ComputeConfig.chunk_examples))
    settings = PassSettings(ScoreCache(cache), template.fingerprint, meta["max_length"], dtype, device, batch_tokens,
                            chunk_examples)
    return RunContext(tokenizer, template, meta["max_length"], settings)


def tokenise(run: Run, data, tokenizer, template, max_length: int, report):
    """:func:`encode_examples`, and record the examples table in the run.

    Returns ``(examples, encoded, rejected rows, examples table)``."""
    report(phase="tokenising", done=0, total=len(data.examples))
    examples, encoded, rejected = encode_examples(data, tokenizer, template, max_length)
    table = example_table(examples, encoded)
    run.write_examples(table)
    return examples, encoded, rejected, table


def write_tables(run: Run, table, encoded, rows, rejected, ref_rows=None, extra_columns=None):
    """scores.parquet (the examples table + the base pass, + ``extra_columns``), token_losses.parquet
    and rejected.jsonl."""
    scores = score_table(table, rows)
    for name, array in (extra_columns or {}).items():
        scores = scores.append_column(name, array)
    run.write_results(scores, token_table(table, encoded, rows, ref_rows), rejected)
    return scores
