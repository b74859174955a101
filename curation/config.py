"""Settings: each run's config is a dataclass whose fields carry their help and validation.

One source of truth, in the style of huggingface/trl: a setting is declared once, as a dataclass
field made with :func:`option` (its default, its help text, its command-line flag, whether it
changes results).  From those declarations:

* :func:`add_arguments` builds the command-line parser (``python -m curation score ...``,
  ``jobs submit score ...``), and :func:`from_arguments` turns the parsed flags into the config;
* :func:`result_key` lists the settings that change results (the run key that refuses mixing);
* the job store saves ``dataclasses.asdict(config)`` and the worker rebuilds the config from it;
* the dashboard's forms read each field's default and help (``pages/common.config_input``).

:class:`ComputeConfig` holds how a model runs (device, dtype, batching, the score cache, the
engine); ``curation.runs.steps.RunConfig`` adds what every run over a pool shares (data, model,
template, lengths), and the score, learn, validate and mix configs extend them.  Configs are
keyword-only dataclasses, so fields with and without defaults mix freely across the hierarchy.

We do not use ``transformers.HfArgumentParser``: importing transformers costs seconds on every
``jobs status`` call, and it has neither positional arguments nor ``DOMAIN=PATH``-style mappings.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any

_UNSET = object()


def option(default: Any = _UNSET, help: str = "", *, flag: str | None = None, negate: str | None = None,
           choices: tuple | None = None, metavar: str | None = None, positional: bool = False,
           result: bool = True, cli: bool = True, default_factory=None):
    """A config field with its help text and how it appears on the command line.

    ``flag`` overrides the option name (default ``--field-name``); ``negate`` gives a boolean whose
    default is True a switch-off flag (``--no-ifd``); ``positional`` makes the field a positional
    argument (lists take one or more values); ``result=False`` marks settings that do not change
    results (batch sizes, places, how often to save), so they stay out of the run key;
    ``cli=False`` keeps a field off the command line.
    """
    meta = {"help": help, "flag": flag, "negate": negate, "choices": choices, "metavar": metavar,
            "positional": positional, "result": result, "cli": cli}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    if default is _UNSET:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def split_pairs(text, what: str = "KEY=VALUE") -> list[tuple[str, str]]:
    """``a=b,c=d`` (or a list of such strings, as repeated flags give) -> ``[("a", "b"), ("c", "d")]``,
    keys and values stripped, in order; a piece without ``=`` or with an empty key is refused."""
    out = []
    for part in ([text] if isinstance(text, str) else list(text)):
        for pair in filter(None, (p.strip() for p in str(part).split(","))):
            k, eq, v = pair.partition("=")
            if not eq or not k.strip():
                raise ValueError(f"expected {what} pairs separated by commas, got {pair!r}")
            out.append((k.strip(), v.strip()))
    return out


def parse_pairs(text: str | dict | list | None, what: str = "FIELD=COLUMN") -> dict[str, str]:
    """``a=b,c=d`` -> ``{"a": "b", "c": "d"}``: THE parser of ``KEY=VALUE`` settings (a list of such
    strings, e.g. repeated flags, and a dict are read the same way).  A key given twice is refused,
    whatever the input, never silently replaced by the last."""
    if text is None:
        return {}
    items = ([(str(k).strip(), str(v)) for k, v in text.items()] if isinstance(text, dict)
             else split_pairs(text, what))
    out: dict[str, str] = {}
    for k, v in items:
        if k in out:
            raise ValueError(f"{what.split('=')[0].lower()} {k!r} is given twice ({out[k]!r} and {v!r}); give each once")
        out[k] = v
    return out


def fields_of(cls) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def field_info(cls, name: str) -> dict:
    """``{"default", "help", "type", "choices"}`` of one field (for forms and messages)."""
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if f is None:
        raise KeyError(f"{cls.__name__} has no setting {name!r}")
    default = f.default if f.default is not MISSING else (
        f.default_factory() if f.default_factory is not MISSING else None)
    return {"default": default, "help": f.metadata.get("help", ""), "type": _base_type(cls, f),
            "choices": f.metadata.get("choices")}


def result_key(cfg) -> dict:
    """The settings of ``cfg`` that change results (fields not marked ``result=False``)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("result", True)}


def project(cfg, cls):
    """``cls`` built from the same-named fields of ``cfg`` (e.g. the TrainConfig inside a LearnConfig)."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if f.init})


def add_arguments(parser: argparse.ArgumentParser, cls, optional_out: bool = False,
                  all_optional: bool = False, skip: tuple[str, ...] = ()) -> None:
    """Add one argument per field of the dataclass ``cls`` (see :func:`option`).

    Flags that are not given are absent from the parsed namespace, so :func:`from_arguments`
    takes the dataclass default (and values from a file, e.g. a recipe, are not overridden).
    ``all_optional`` makes required fields optional flags too (they may come from a file)."""
    for f in dataclasses.fields(cls):
        m = f.metadata
        if not m.get("cli", True) or not f.init or f.name in skip:
            continue
        typ = _base_type(cls, f)
        kw: dict[str, Any] = {"help": (m.get("help") or "").replace("%", "%%") or None}
        if m.get("metavar"):
            kw["metavar"] = m["metavar"]
        required = f.default is MISSING and f.default_factory is MISSING and not all_optional
        if m.get("positional") and not all_optional:
            if typing.get_origin(typ) is list:
                kw["nargs"] = "+"
            parser.add_argument(f.name, **kw)
            continue
        name = m.get("flag") or "--" + f.name.replace("_", "-")
        if typ is bool:  # absent: the dataclass default (so a recipe file's value is not overridden)
            if f.default is True:
                kw["help"] = f"turn off {kw['help']}" if kw["help"] else None
                parser.add_argument(m.get("negate") or f"--no-{f.name.replace('_', '-')}", dest=f.name,
                                    action="store_false", default=argparse.SUPPRESS, **kw)
            else:
                parser.add_argument(name, dest=f.name, action="store_true", default=argparse.SUPPRESS, **kw)
            continue
        if typing.get_origin(typ) is dict:  # KEY=VALUE[,KEY=VALUE]; repeatable
            lists = typing.get_origin(typing.get_args(typ)[1]) is list  # KEY=V1 --flag KEY=V2: a list per key
            kw["action"] = _ListPairsAction if lists else _PairsAction
            kw.setdefault("metavar", "KEY=VALUE")
        elif typing.get_origin(typ) is list:
            kw["nargs"] = "+"
        elif typ in (int, float, str):
            kw["type"] = typ
            kw["action"] = _OnceAction  # a second value would silently replace the first
        if m.get("choices"):
            kw["choices"] = list(m["choices"])
        if f.name == "out" and optional_out:
            required = False
            kw["help"] = "output folder (default: WORKSPACE/runs/JOB_ID)"
        if required:
            kw["required"] = True
        else:
            kw["default"] = argparse.SUPPRESS  # absent flags keep the dataclass default
            if f.default not in (MISSING, None) and kw["help"] and "default" not in kw["help"]:
                kw["help"] += f" (default: {f.default})".replace("%", "%%")
        parser.add_argument(name, dest=f.name, **kw)


def from_arguments(cls, args: argparse.Namespace, **overrides):
    """The config ``cls`` from parsed arguments: given flags, else the fields' defaults."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    return cls(**values)


def check_positive(cfg, *names: str) -> None:
    """Raise ValueError naming the first of ``names`` that is not a positive number."""
    for name in names:
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not v >= 1):
            raise ValueError(f"{name.replace('_', '-')} must be a positive whole number, got {v!r}")


def check_choices(cfg, *names: str) -> None:
    """Raise ValueError naming the first of ``names`` whose value is not one of its field's
    ``choices`` (the CLI checks them too; a job store or a recipe file does not go through it)."""
    for name in names:
        choices = next(f.metadata["choices"] for f in dataclasses.fields(cfg) if f.name == name)
        v = getattr(cfg, name)
        if v not in choices:
            raise ValueError(f"{name.replace('_', '-')} must be one of {', '.join(choices)}, got {v!r}")


def check_at_most(cfg, **limits: int) -> None:
    """Raise ValueError naming the first setting above its bound (every count a run multiplies
    its work by is bounded, so a typo cannot start a job that never ends)."""
    for name, limit in limits.items():
        v = getattr(cfg, name)
        if v is not None and not isinstance(v, bool) and v > limit:
            raise ValueError(f"{name.replace('_', '-')} {v}: at most {limit:,}")


@dataclass(kw_only=True)
class ComputeConfig:
    """How a model runs: device, dtype, batching, commits and the score cache (every job kind)."""

    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    dtype: str | None = option(None, "float32 | bfloat16 | float16 (default: bf16 on a GPU, fp32 on a CPU)")
    batch_tokens: int = option(1024, "padded tokens per scoring forward pass (rows x longest)", result=False)
    chunk_examples: int = option(256, "examples per committed scoring chunk (the most a kill can lose)", result=False)
    cache: str | None = option(None, "score cache folder (default: .cache/score-cache, or $CURATION_SCORE_CACHE)",
                               result=False)
    engine: str = option("local", "where the work runs: local (this process) or ray (scoring passes on an actor "
                                  "pool, training on Ray Train)", choices=("local", "ray"), result=False)
    ray_address: str | None = option(None, "--engine ray: the cluster to join (auto: the one this machine belongs "
                                           "to; ray://HOST:10001: a remote one; default: start a local instance)",
                                     result=False)
    workers: int | None = option(None, "--engine ray: how many workers (default: one per CPU of a local instance, "
                                       "or per GPU with --gpus-per-worker)", result=False)
    gpus_per_worker: float = option(0.0, "--engine ray: GPUs per worker (0: CPU workers)", result=False)

    def __post_init__(self):
        check_positive(self, "batch_tokens", "chunk_examples", "workers")
        check_at_most(self, batch_tokens=1 << 20, chunk_examples=1 << 20, workers=4096)
        if self.engine == "local" and (self.ray_address or self.workers or self.gpus_per_worker):
            raise ValueError("--ray-address, --workers and --gpus-per-worker apply to --engine ray")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus-per-worker must be >= 0, got {self.gpus_per_worker}")


class _OnceAction(argparse.Action):
    """A single-valued option given twice is refused (the last one would silently win)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None and self.dest in vars(namespace):
            raise argparse.ArgumentError(self, f"given twice ({getattr(namespace, self.dest)!r} and {values!r}); give it "
                                               "once (a setting that takes several values says so in its help)")
        setattr(namespace, self.dest, values)


class _PairsAction(argparse.Action):
    """``--flag a=1,b=2 --flag c=3`` -> ``{"a": "1", "b": "2", "c": "3"}``; a key given twice is refused."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        given = [f"{k}={v}" for k, v in (current if isinstance(current, dict) else {}).items()]
        try:
            setattr(namespace, self.dest, parse_pairs([*given, values]))
        except ValueError as e:
            raise argparse.ArgumentError(self, str(e)) from None


class _ListPairsAction(argparse.Action):
    """``--flag a=x --flag a=y,b=z`` -> ``{"a": ["x", "y"], "b": ["z"]}`` (several values per key)."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        out = {k: list(v) for k, v in (current if isinstance(current, dict) else {}).items()}
        try:
            pairs = split_pairs(values)
        except ValueError as e:
            raise argparse.ArgumentError(self, str(e)) from None
        for k, v in pairs:
            out.setdefault(k, []).append(v)
        setattr(namespace, self.dest, out)


def _base_type(cls, f: dataclasses.Field):
    """The field's type without ``| None`` (resolved from the annotation string)."""
    hints = typing.get_type_hints(cls)
    t = hints.get(f.name, f.type)
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t = args[0] if len(args) == 1 else t
    return t
