"""Render conversations with a chat template, tokenise once, and mark the assistant tokens.

The loss covers every assistant turn.  For turn ``i`` the assistant characters are those of the
full rendering between ``render(messages[:i], add_generation_prompt=True)`` and
``render(messages[:i+1])``, so the end-of-turn marker is learned too.  The full rendering is
tokenised once; character offsets say which tokens fall inside those spans.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation.data.load import RecordError

# Used when the tokenizer has no chat template (base models) or when asked for by name.
ALPACA_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% else %}{{ 'Below is an instruction that describes a task. Write a response that "
    "appropriately completes the request.\\n\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Response:\\n' + message['content'] + (eos_token if eos_token else '') + '\\n\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Template:
    """A chat template: its name (``chat``, ``alpaca`` or a file path) and Jinja source."""

    name: str
    source: str

    @property
    def fingerprint(self) -> str:
        return "sha256:" + hashlib.sha256(self.source.encode()).hexdigest()[:16]


@dataclass
class Encoded:
    """One tokenised example, ready for the scorer.

    ``target`` marks the tokens whose loss counts (assistant tokens at positions >= 1, since the
    first token has nothing to be predicted from).
    """

    input_ids: np.ndarray  # (T,) int32, already cut to max_length
    target: np.ndarray  # (T,) bool
    n_tokens_full: int  # length before truncation
    truncated: bool

    @property
    def n_response_tokens(self) -> int:
        return int(self.target.sum())

    @property
    def n_prompt_tokens(self) -> int:
        return len(self.input_ids) - self.n_response_tokens

    @property
    def response_start(self) -> int:
        """Where the final assistant turn's target tokens begin (the start of the last run of
        targets): the tokens before it are the prompt that response was given, earlier assistant
        turns included.  ``len(input_ids)`` without any target (nothing of a response is left)."""
        t = self.target.astype(np.int8)
        starts = np.flatnonzero(np.diff(t, prepend=0) == 1)  # (runs,) the first index of each run of targets
        return int(starts[-1]) if len(starts) else len(t)


def pack_encoded(encoded) -> dict:
    """Encoded examples as three flat arrays (input_ids, target, offsets): a compact message for
    another process (a Ray worker), a few MB for thousands of examples."""
    lengths = np.fromiter((len(e.input_ids) for e in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if not len(encoded):
        return {"input_ids": np.zeros(0, np.int32), "target": np.zeros(0, bool), "offsets": offsets}
    return {"input_ids": np.concatenate([e.input_ids for e in encoded]).astype(np.int32, copy=False),
            "target": np.concatenate([e.target for e in encoded]), "offsets": offsets}


def unpack_encoded(packed: dict) -> list[Encoded]:
    """The examples :func:`pack_encoded` packed (``n_tokens_full`` is their packed length)."""
    o, ii, tg = packed["offsets"], packed["input_ids"], packed["target"]
    return [Encoded(ii[o[k]:o[k + 1]], tg[o[k]:o[k + 1]], int(o[k + 1] - o[k]), False) for k in range(len(o) - 1)]


def resolve_template(tokenizer, template: str = "auto") -> Template:
    """Pick the template: ``auto`` (the tokenizer's, else Alpaca), ``chat``, ``alpaca`` or a path
    to a ``.jinja`` file."""
    if template == "auto":
        template = "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--template chat: this tokenizer has no chat template; use alpaca")
        return Template("chat", tokenizer.chat_template)
    if template == "alpaca":
        return Template("alpaca", ALPACA_TEMPLATE)
    path = Path(template)
    if path.is_file():
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--template {path}: cannot be read ({e})") from None
        tpl = Template(str(path), source)
        try:  # compile and render once, so a broken template is one clear error, not a crash per row
            render(tokenizer, tpl, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        except Exception as e:  # noqa: BLE001 - jinja2's syntax, security and undefined errors
            where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
            raise ValueError(f"--template {path}: the Jinja template cannot be used{where}: "
                             f"{type(e).__name__}: {e}") from None
        return tpl
    raise ValueError(
        f"--template {template!r}: expected auto, chat, alpaca or the path of a Jinja file"
    )


def render(tokenizer, template: Template, messages, add_generation_prompt: bool = False) -> str:
    """Render messages to text with ``template``."""
    return tokenizer.apply_chat_template(
        messages, chat_template=template.source, tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def assistant_spans(tokenizer, template: Template, messages) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return ``(text, [(start, end) character span per assistant turn])``.

    Raises :class:`RecordError` if the template does not render the conversation's prefixes as
    prefixes of the whole (then the assistant tokens cannot be located exactly).
    """
    full = render(tokenizer, template, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, template, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, template, messages[: i + 1])
        if not (full.startswith(upto) and upto.startswith(before)):
            raise RecordError(
                f"the chat template does not render turn {i} as a prefix of the conversation, "
                "so its assistant tokens cannot be located; try --template alpaca"
            )
        spans.append((len(before), len(upto)))
    return full, spans


def encode(tokenizer, template: Template, messages, max_length: int) -> Encoded:
    """Tokenise one conversation and mark its assistant tokens (see :func:`encode_many`)."""
    return encode_many(tokenizer, template, [messages], max_length)[0]


def encode_many(tokenizer, template: Template, conversations, max_length: int) -> list[Encoded | RecordError]:
    """Tokenise conversations (one tokenizer call for all) and mark their assistant tokens.

    Examples longer than ``max_length`` are cut at the end and flagged ``truncated``.  Failures are
    returned in place as :class:`RecordError` so callers can report them and go on.
    """
    rendered: list[tuple[str, list] | RecordError] = []
    for messages in conversations:
        try:
            rendered.append(assistant_spans(tokenizer, template, messages))
        except RecordError as e:
            rendered.append(e)
    return _tokenise_marked(tokenizer, rendered, max_length)


def encode_response_only(tokenizer, template: Template, conversations, max_length: int) -> list[Encoded | RecordError]:
    """Tokenise each conversation *without its user turns* and mark its assistant tokens.

    This is IFD's "response alone": the template applied to what is left (for single-turn data,
    the assistant message only; a system message is kept).  The assistant characters are those of
    the full rendering's assistant spans (:func:`assistant_spans`), found in the shortened
    rendering from the end backwards (templates add text at the start, e.g. a default system
    prompt); tokens are then marked exactly as :func:`encode_many` marks them.
    """
    rendered: list[tuple[str, list] | RecordError] = []
    for messages in conversations:
        try:
            full, spans = assistant_spans(tokenizer, template, messages)
            text = render(tokenizer, template, [m for m in messages if m["role"] != "user"])
            found, end = [], len(text)
            for s, e in reversed(spans):
                pos = text.rfind(full[s:e], 0, end)
                if pos < 0:
                    raise RecordError("the response-only rendering does not contain the assistant turn")
                found.append((pos, pos + (e - s)))
                end = pos
            rendered.append((text, found[::-1]))
        except (RecordError, ValueError) as e:
            rendered.append(e if isinstance(e, RecordError) else RecordError(str(e)))
    return _tokenise_marked(tokenizer, rendered, max_length)


def token_lengths(tokenizer, template: Template, examples) -> "pd.DataFrame":  # noqa: F821
    """``example_id, domain, n_prompt_tokens, n_response_tokens, n_tokens_full`` of ``examples``
    (no truncation): what the Data page plots before anything is scored."""
    import pandas as pd

    exs = list(examples)
    enc = encode_many(tokenizer, template, [e.messages for e in exs], max_length=10**9)
    rows = [{"example_id": e.example_id, "domain": e.domain, "n_prompt_tokens": x.n_prompt_tokens,
             "n_response_tokens": x.n_response_tokens, "n_tokens_full": x.n_tokens_full}
            for e, x in zip(exs, enc) if not isinstance(x, RecordError)]
    return pd.DataFrame(rows, columns=["example_id", "domain", "n_prompt_tokens", "n_response_tokens", "n_tokens_full"])


def _tokenise_marked(tokenizer, rendered, max_length: int) -> list[Encoded | RecordError]:
    """Tokenise the ``(text, assistant character spans)`` items in one call; a token is a target
    when it starts inside a span (the first token never is); errors pass through in place."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("a fast (Rust) tokenizer is needed for character offsets")
    texts = [r[0] for r in rendered if not isinstance(r, RecordError)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else None
    out: list[Encoded | RecordError] = []
    k = 0
    for r in rendered:
        if isinstance(r, RecordError):
            out.append(r)
            continue
        ids = np.asarray(enc["input_ids"][k], dtype=np.int32)  # (T,)
        starts = np.asarray([o[0] for o in enc["offset_mapping"][k]], dtype=np.int64)  # (T,) first character
        k += 1
        target = np.zeros(len(ids), dtype=bool)
        for s, e in r[1]:
            target |= (starts >= s) & (starts < e)  # a token belongs to the turn it starts in
        target[:1] = False  # the first token is never predicted
        n_full = len(ids)
        out.append(Encoded(ids[:max_length], target[:max_length], n_full, n_full > max_length))
    return out
