"""Preference-pair record shapes: detect a record's shape and read it into a prompt and two responses.

The shapes (``curation.data.load.PAIR_FORMATS``; detected per source from its first usable record,
or forced with ``--format``; ``--columns chosen=good,rejected=bad`` maps other field names):

==================== ===================================================================================
format               fields
==================== ===================================================================================
trl-standard         ``prompt``, ``chosen``, ``rejected``: strings
trl-conversational   ``prompt``: messages; ``chosen`` / ``rejected``: one assistant message each (a list
                     of one, as TRL writes them)
trl-implicit         ``chosen`` / ``rejected``: whole conversations; the prompt is their longest shared
                     prefix of whole messages, each response the one assistant message after it
anthropic-hh         ``chosen`` / ``rejected``: ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` texts, read as
                     turns and split like trl-implicit
llamafactory-ranking ``conversations``: ShareGPT turns ending with a human turn (optional ``system``);
                     ``chosen`` / ``rejected``: ``{"from": "gpt", "value": ...}`` message objects
alpaca-ranking       ``instruction``, optional ``input`` and ``system``, ``chosen``, ``rejected``:
                     strings; the user turn is built as for an Alpaca SFT record
ultrafeedback        ``prompt``: a string; ``chosen`` / ``rejected``: whole conversations split like
                     trl-implicit, the prompt string equal to the conversation's (last) user turn
                     (HuggingFaceH4/ultrafeedback_binarized; its other columns are ignored)
==================== ===================================================================================

Any shape may carry ``score_chosen`` and ``score_rejected`` (UltraFeedback-binarized's ratings):
both numbers, or neither.

Every pair is validated as the two SFT examples it is scored as (``prompt + [chosen]`` through
:func:`curation.data.load.normalise`, so roles, role order and empty turns are judged exactly as for
SFT data), and its prompt must end with a user turn.  What a record breaks becomes the one-line
:class:`~curation.data.load.RecordError` reason the curator reads in ``rejected.jsonl``.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from curation.data.load import PAIR_FORMATS, ROLE_ALIASES, RecordError, SourceError, normalise

SIDES = ("chosen", "rejected")
SAME = "chosen equals rejected: the pair prefers nothing"
# Anthropic HH turns: "\n\nHuman: " and "\n\nAssistant: " (the space after the colon belongs to the
# marker, as in TRL's examples/datasets/hh-rlhf-helpful-base.py); the text may also begin without
# the blank line.
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


class PairParts(NamedTuple):
    """A record read as a pair: validated prompt messages, the two response texts, the ratings."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    rating_chosen: float | None = None
    rating_rejected: float | None = None


def renamed(record: dict, columns: dict[str, str] | None) -> dict:
    """``record`` with the canonical field names of a ``--columns`` mapping (canonical -> column)."""
    return {**record, **{k: record[v] for k, v in (columns or {}).items() if v in record}}


def is_pair_record(record: dict, columns: dict[str, str] | None = None) -> bool:
    """Whether a record is (meant as) a preference pair: it has ``chosen`` or ``rejected``, after
    ``--columns`` (one without the other is a pair with a missing response, not an SFT example)."""
    r = renamed(record, columns)
    return "chosen" in r or "rejected" in r


def detect_pair_format(record: dict, columns: dict[str, str] | None = None) -> str:
    """The pair shape of ``record`` (after applying the column mapping)."""
    r = renamed(record, columns)
    if not is_pair_record(r):
        raise RecordError(f"not a preference pair: fields {sorted(r)} have no 'chosen' or 'rejected'; map yours "
                          "with --columns (e.g. --columns chosen=better,rejected=worse)")
    if "conversations" in r:
        return "llamafactory-ranking"
    if "instruction" in r:
        return "alpaca-ranking"
    if "prompt" in r:
        if isinstance(r["prompt"], list):
            return "trl-conversational"
        return "ultrafeedback" if isinstance(r["chosen"], list) else "trl-standard"
    return "trl-implicit" if isinstance(r["chosen"], list) else "anthropic-hh"


def read_pair(record: dict, fmt: str, columns: dict[str, str] | None = None) -> PairParts:
    """Read one record of pair shape ``fmt`` into validated :class:`PairParts` (or raise the
    :class:`RecordError` that says why it is not a usable pair)."""
    if fmt not in READERS:
        raise SourceError(f"unknown pair format {fmt!r}; expected one of {', '.join(PAIR_FORMATS)}")
    r = renamed(record, columns)
    prompt, chosen, rejected = READERS[fmt](r)
    return PairParts(checked_prompt(prompt, chosen, rejected), chosen, rejected, *ratings(r))


def checked_prompt(prompt: list, chosen: str, rejected: str) -> list[dict[str, str]]:
    """The prompt's normalised messages, validated with the chosen response as one SFT conversation."""
    if chosen == rejected:
        raise RecordError(SAME)
    if not prompt:
        raise RecordError("no prompt")
    last = role_of(prompt[-1])
    if last not in (None, "user"):  # an unknown role is named by normalise below
        raise RecordError(f"the prompt ends with {'an' if last == 'assistant' else 'a'} {last} turn; a pair's "
                          "prompt must end with a user turn")
    messages = normalise({"messages": [*prompt, {"role": "assistant", "content": chosen}]}, "messages")
    return messages[:-1]


def role_of(turn) -> str | None:
    """The chat role of a raw turn (``role`` or ``from``, through the role aliases), None if unknown."""
    if not isinstance(turn, dict):
        return None
    role = turn.get("role", turn.get("from"))
    return ROLE_ALIASES.get(role.lower()) if isinstance(role, str) else None


def response(value, side: str) -> str:
    """A response's text from a string, a message object or a list of one message."""
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordError(f"the {side} response must be one assistant message, got a list of {len(value)}")
        value = value[0]
    if isinstance(value, dict):
        role = value.get("role", value.get("from"))
        if role is not None and role_of(value) != "assistant":
            raise RecordError(f"the {side} response has the role {role!r}, expected an assistant message")
        value = value.get("content", value.get("value"))
    if value is None:
        raise RecordError(f"no {side} response")
    if not isinstance(value, str):
        raise RecordError(f"the {side} response is {type(value).__name__}, expected text")
    if not value.strip():
        raise RecordError(f"empty {side} response")
    return value


def ratings(r: dict) -> tuple[float | None, float | None]:
    """``(rating_chosen, rating_rejected)`` from ``score_chosen`` / ``score_rejected``: both or neither."""
    given = {side: r.get(f"score_{side}") for side in SIDES}  # None, "" (CSV) and NaN (Parquet) are no rating
    given = {side: v for side, v in given.items() if not (v is None or v == "" or (isinstance(v, float) and v != v))}
    if not given:
        return None, None
    if len(given) == 1:
        (side,) = given
        other = SIDES[1 - SIDES.index(side)]
        raise RecordError(f"score_{side} without score_{other}: give both ratings or neither")
    return _number(given["chosen"], "score_chosen"), _number(given["rejected"], "score_rejected")


def _number(value, key: str) -> float:
    x = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        x = float(value)
    elif isinstance(value, str):  # CSV cells are text
        try:
            x = float(value.strip())
        except ValueError:
            pass
    if x is None or not math.isfinite(x):
        raise RecordError(f"{key} is {value!r}, expected a number")
    return x


# ----------------------------------------------------------------------------------------------
# one reader per shape: record (canonical field names) -> (raw prompt turns, chosen, rejected)


def _text(r: dict, key: str) -> str:
    if r.get(key) is None:
        raise RecordError(f"missing field {key!r}")
    if not isinstance(r[key], str):
        raise RecordError(f"field {key!r} is {type(r[key]).__name__}, expected text")
    return r[key]


def _turn_list(r: dict, key: str) -> list:
    if r.get(key) is None:
        raise RecordError(f"missing field {key!r}")
    if not isinstance(r[key], list) or not r[key]:
        raise RecordError(f"field {key!r} must be a non-empty list of messages")
    return r[key]


def _responses(r: dict) -> tuple[str, str]:
    return response(r.get("chosen"), "chosen"), response(r.get("rejected"), "rejected")


def _standard(r: dict):
    return [{"role": "user", "content": _text(r, "prompt")}], *_responses(r)


def _conversational(r: dict):
    return _turn_list(r, "prompt"), *_responses(r)


def _llamafactory(r: dict):
    turns = list(_turn_list(r, "conversations"))
    system = r.get("system")
    if isinstance(system, str) and system.strip() and role_of(turns[0]) != "system":
        turns.insert(0, {"role": "system", "content": system})
    return turns, *_responses(r)


def _alpaca(r: dict):
    chosen, rejected = _responses(r)
    fields = {k: r[k] for k in ("instruction", "input", "system") if k in r}
    # The user (and system) turns exactly as an Alpaca SFT record with this output would have them.
    return normalise({**fields, "output": chosen}, "alpaca")[:-1], chosen, rejected


def split_shared(chosen: list, rejected: list) -> tuple[list, str, str]:
    """``(prompt turns, chosen text, rejected text)`` of two whole conversations: the prompt is their
    longest shared prefix of whole messages, and each must go on with exactly one assistant message.

    The prefix rule is TRL's (``trl/data_utils.py``, ``extract_prompt``: the longest common
    sequence of turns of chosen and rejected); messages compare by role (through the aliases) and
    content.  Where TRL keeps several differing turns as a multi-turn completion, a pair here is one
    response against one response, so such a record is rejected with its reason."""
    def key(turn):
        return (role_of(turn), turn.get("content", turn.get("value"))) if isinstance(turn, dict) else turn

    k = 0
    while k < min(len(chosen), len(rejected)) and key(chosen[k]) == key(rejected[k]):
        k += 1
    if k == len(chosen) == len(rejected):
        raise RecordError(SAME)
    if k == 0:
        raise RecordError("no shared prompt: chosen and rejected differ from their first turn")
    if len(chosen) - k != 1 or len(rejected) - k != 1:
        raise RecordError(f"after their shared prompt of {k} turn(s) the chosen goes on with {len(chosen) - k} "
                          f"turn(s) and the rejected with {len(rejected) - k}; each must go on with exactly one "
                          "assistant message")
    return chosen[:k], response(chosen[k], "chosen"), response(rejected[k], "rejected")


def _implicit(r: dict):
    return split_shared(_turn_list(r, "chosen"), _turn_list(r, "rejected"))


def hh_turns(text: str, side: str) -> list[dict[str, str]]:
    """The turns of an Anthropic HH text ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` as messages."""
    if not isinstance(text, str):
        raise RecordError(f"the {side} dialogue is {type(text).__name__}, expected Anthropic HH text")
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RecordError(f"the {side} text is not an Anthropic HH dialogue ('\\n\\nHuman: ...\\n\\nAssistant: "
                          "...'); for a prompt and two answers give a 'prompt' column (trl-standard)")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said} for who, said in zip(parts[1::2], parts[2::2])]


def _hh(r: dict):
    """The two dialogues share every turn up to the last ``\\n\\nAssistant:``; the prompt is those
    turns (ending with a Human turn), each response its dialogue's final Assistant turn.  TRL's own
    reading (``examples/datasets/hh-rlhf-helpful-base.py``, ``extract_dialogue``) cuts the common
    character prefix back to the last ``"\\n\\nAssistant: "`` and splits the rest into the same turns."""
    chosen, rejected = (hh_turns(_text(r, side), side) for side in SIDES)
    return split_shared(chosen, rejected)


def _ultrafeedback(r: dict):
    """HuggingFaceH4/ultrafeedback_binarized: ``prompt`` repeats the conversation's user turn.  TRL
    (``maybe_extract_prompt``) ignores a string prompt beside conversational chosen/rejected and
    extracts the prompt from them; here the string must also agree with the extracted user turn."""
    text = _text(r, "prompt")
    prompt, chosen, rejected = _implicit(r)
    last_user = next((t for t in reversed(prompt) if role_of(t) == "user"), None)
    said = last_user.get("content", last_user.get("value")) if last_user else None
    if not isinstance(said, str) or said.strip() != text.strip():
        raise RecordError("the 'prompt' column differs from the user turn of the chosen and rejected conversations")
    return prompt, chosen, rejected


READERS = {"trl-standard": _standard, "trl-conversational": _conversational, "trl-implicit": _implicit,
           "anthropic-hh": _hh, "llamafactory-ranking": _llamafactory, "alpaca-ranking": _alpaca,
           "ultrafeedback": _ultrafeedback}
assert set(READERS) == set(PAIR_FORMATS), "every pair format has one reader"
