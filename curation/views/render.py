"""Conversations as HTML for the dashboard, with assistant tokens coloured by their loss.

Every piece of dataset text goes through :func:`html.escape` here, so a record that contains HTML
or script shows as text; pages render conversations only through :func:`conversation_html`.
"""

from __future__ import annotations

import html

import numpy as np


def token_pieces(tokenizer, token_ids: list[int]) -> list[str]:
    """The text of each token, such that ``"".join(pieces)`` is the decoded text.

    Byte-level BPE tokens can split a multi-byte character; the character is given to the token
    that completes it (earlier ones get ""), so nothing is shown twice.
    """
    out, prev = [], ""
    # Decoding growing prefixes is exact for every tokenizer; windows keep it linear in practice.
    start = 0
    for i in range(len(token_ids)):
        if i - start > 32:
            start = i - 16
            prev = tokenizer.decode(token_ids[start:i])
        cur = tokenizer.decode(token_ids[start:i + 1])
        if cur.startswith(prev) and not cur.endswith("\ufffd"):
            out.append(cur[len(prev):])
            prev = cur
        else:
            out.append("")
            if not cur.endswith("\ufffd"):
                prev = cur
    return out


def loss_colour(value: float, vmax: float) -> str:
    """White (loss 0) to red (loss >= vmax) for a loss; blue to white to red for a signed drop."""
    if value is None or not np.isfinite(value):
        return "#e0e0e0"
    t = float(np.clip(abs(value) / vmax, 0, 1)) if vmax > 0 else 0.0
    if value >= 0:
        r, g, b = 255, int(255 - 180 * t), int(255 - 180 * t)
    else:
        r, g, b = int(255 - 180 * t), int(255 - 120 * t), 255
    return f"#{r:02x}{g:02x}{b:02x}"


def colour_scale_html(vmax: float, signed: bool = False, label: str = "loss (nats)") -> str:
    """A small legend for :func:`loss_colour`."""
    stops = np.linspace(-vmax if signed else 0, vmax, 7)
    cells = "".join(
        f'<span style="background:{loss_colour(v, vmax)};padding:2px 8px;border:1px solid #ddd">'
        f"{v:.1f}</span>" for v in stops)
    return f'<div style="font-size:0.8em">{html.escape(label)}: {cells}</div>'


def conversation_html(messages: list[dict], pieces: list[str] | None = None,
                      values: list[float] | None = None, positions: list[int] | None = None,
                      vmax: float = 5.0, signed: bool = False) -> str:
    """HTML of a conversation; assistant turns coloured token by token when losses are given.

    Every piece of dataset text goes through :func:`html.escape`, so a record containing HTML or
    script shows as text.  ``positions`` split the tokens into assistant turns: a gap in the
    positions starts the next assistant turn (the scorer's targets are contiguous per turn).
    """
    turns_tokens: list[list[int]] = []
    if pieces is not None and positions is not None:
        for k, p in enumerate(positions):
            if k == 0 or p != positions[k - 1] + 1:
                turns_tokens.append([])
            turns_tokens[-1].append(k)
    style = {"user": "#f3f6fa", "system": "#f7f7f0", "assistant": "#ffffff"}
    parts = ['<div style="font-family:ui-monospace,monospace;font-size:0.85em;line-height:1.6">']
    a = 0
    for m in messages:
        role = m["role"]
        body = html.escape(m["content"])
        if role == "assistant" and a < len(turns_tokens):
            spans = []
            for k in turns_tokens[a]:
                v = values[k]
                tip = "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"
                spans.append(f'<span title="{tip}" style="background:{loss_colour(v, vmax)}">'
                             f"{html.escape(pieces[k])}</span>")
            body = "".join(spans)
            a += 1
        elif role == "assistant" and pieces is not None:
            body += ' <em style="color:#888">(not scored: cut off by max length)</em>'
        parts.append(
            f'<div style="background:{style.get(role, "#fff")};border:1px solid #e3e3e3;border-radius:6px;'
            f'padding:6px 10px;margin:6px 0;white-space:pre-wrap;word-break:break-word">'
            f'<b style="color:#2a6f97">{html.escape(role)}</b>\n{body}</div>')
    parts.append("</div>")
    return "".join(parts)


TOKEN_MODES = ("base loss", "reference loss", "drop (base - reference)")


def token_modes(record: dict | None) -> list[str]:
    """The ways a token-loss record can colour its tokens (the reference's need ``token_losses_ref``)."""
    if record and record.get("token_losses_ref") is not None:
        return list(TOKEN_MODES)
    return list(TOKEN_MODES[:1])


def token_values(record: dict, mode: str) -> tuple[np.ndarray, bool]:
    """``(value per token, signed)`` of a token-loss record (:meth:`curation.runs.folder.Run.token_losses`)
    in a :data:`TOKEN_MODES` mode: the base loss, the reference loss, or the drop base - reference
    (signed: blue where the reference got worse)."""
    base = np.asarray(record["token_losses"], dtype=float)
    if mode == TOKEN_MODES[0]:
        return base, False
    ref = np.asarray(record["token_losses_ref"], dtype=float)
    return (ref, False) if mode == TOKEN_MODES[1] else (base - ref, True)


def preview(text: str, limit: int = 160, escape: bool = True) -> str:
    """A one-line preview of dataset text: whitespace collapsed, cut at ``limit`` characters with
    an ellipsis, and HTML-escaped (``escape=False`` only for widgets that show plain text)."""
    one = " ".join(str(text).split())
    if len(one) > limit:
        one = one[: limit - 1].rstrip() + "\u2026"
    return html.escape(one) if escape else one


def hover_text(text: str, limit: int = 120) -> str:
    """A preview for a plotly hover label: ``<``, ``>`` and ``&`` escaped (so no markup of the data
    becomes a tag), quotes left as they are (plotly decodes ``&lt;``/``&gt;``/``&amp;`` but shows
    ``&quot;`` literally, so escaping them would show the entity)."""
    return html.escape(preview(text, limit, escape=False), quote=False)


def markdown_text(text: str) -> str:
    """``text`` shown as itself in Markdown: HTML escaped and Markdown's markup characters quoted (a
    study or selection name from the user cannot become a link, emphasis or a tag)."""
    import html
    import re

    return re.sub(r"([\\`*_{}\[\]()#+!|~>])", r"\\\1", html.escape(str(text), quote=False))
