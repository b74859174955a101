"""Final answers of math solutions, for an optional generation eval: extract, normalise, compare.

:func:`extract_answer` looks for the final answer of a solution text, in this order:

1. the text after the last ``####`` (GSM8K);
2. the text after the last "The answer is:" (CHAMP's solutions in the default pool end with it;
   also "The final answer is", with or without the colon, any case);
3. the content of the last ``\\boxed{...}`` (balanced braces, so ``\\boxed{\\frac{1}{2}}`` works);
4. the last number in the text (``-3``, ``1,234``, ``2.5``, ``3/4``).

A marker's answer is the rest of its line (a generation that runs on to a new question does not
leak into it); a ``\\boxed{}`` inside it is unwrapped.  An empty marker falls through to the next
rule.  The result is normalised by :func:`normalise_answer`: spaces, ``$``, ``\\!``/``\\,`` and a
trailing ``.`` removed, ``\\dfrac``/``\\tfrac`` -> ``\\frac``, thousands commas dropped from a
whole number (``1,234`` -> ``1234``; ``C(10,500)`` keeps its comma).

:func:`answers_match` compares two answers as numbers when both parse as one (``72.0`` = ``72``,
``\\frac{1}{2}`` = ``1/2`` = ``0.5``, ``50%`` = ``50``; relative tolerance 1e-6), else as
normalised strings (``n=2``, ``\\sqrt{2}``, ``No integer solutions``).  The string comparison is
exact: CHAMP's free-form answers (``0 is the only possible value``) need a human or a judge model
to grade a paraphrase.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_HASH = "####"
_MARKER = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is(?![\w'’])\s*:?", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed\s+([^\s$]+)")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|[-+]?\.\d+")
_THOUSANDS = re.compile(r"^([-+]?)(\d{1,3}(?:,\d{3})+)((?:\.\d+)?%?)$")
_FRAC = re.compile(r"^([-+]?)\\frac\{([^{}]+)\}\{([^{}]+)\}$")
_PLAIN_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")


def extract_answer(text: str | None) -> str | None:
    """The final answer of ``text``, normalised, or ``None`` when none is found."""
    if not text:
        return None
    if _HASH in text:
        ans = _first_line(text.rsplit(_HASH, 1)[1])
        if ans:
            return normalise_answer(_unbox(ans))
    markers = list(_MARKER.finditer(text))
    if markers:
        ans = _first_line(text[markers[-1].end():])
        if ans:
            return normalise_answer(_unbox(ans))
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return normalise_answer(boxed)
    numbers = _NUMBER.findall(text)
    if numbers:
        return normalise_answer(numbers[-1])
    return None


def normalise_answer(ans: str) -> str:
    """Spaces, ``$``, LaTeX thin spaces, ``\\left``/``\\right`` and a trailing ``.`` removed;
    ``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``{,}`` and thousands commas in numbers dropped."""
    s = ans.strip()
    s = s.replace("{,}", ",")
    for old in ("\\!", "\\,", "\\;", "\\:", "\\ ", "\\left", "\\right", "\\displaystyle"):
        s = s.replace(old, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("$", "")
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    m = _THOUSANDS.match(s)  # only a whole number: "C(10,500)" and "x=1,y=234" keep their commas
    if m:
        s = m.group(1) + m.group(2).replace(",", "") + m.group(3)
    return s


def answers_match(pred: str | None, gold: str | None) -> bool:
    """Whether two answers agree: as numbers (relative tolerance 1e-6) when both parse as a number
    or fraction, else as normalised strings.  ``None`` never matches."""
    if pred is None or gold is None:
        return False
    p, g = normalise_answer(pred), normalise_answer(gold)
    x, y = to_number(p), to_number(g)
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12)
    return p == g


def to_number(ans: str) -> float | None:
    """``ans`` (normalised or not) as a float when it is a plain number, ``a/b`` or ``\\frac{a}{b}``
    of numbers, optionally with a trailing ``%``; else ``None``."""
    s = normalise_answer(ans)
    s = _unbox(s)
    if s.endswith("%"):
        s = s[:-1]
    if _PLAIN_NUMBER.match(s):
        return float(s)
    m = _FRAC.match(s)
    if m:
        sign, a, b = m.groups()
        s = f"{sign}{a}/{b}"
    if s.count("/") == 1:
        a, b = s.split("/")
        sign = ""
        if a[:1] in "+-" and a:
            sign, a = a[0], a[1:]
        if _PLAIN_NUMBER.match(a) and _PLAIN_NUMBER.match(b) and a[:1] not in "+-":
            try:
                value = Fraction(a) / Fraction(b)
            except (ZeroDivisionError, ValueError):
                return None
            return float(-value if sign == "-" else value)
    return None


def _first_line(rest: str) -> str:
    """The first non-empty line of ``rest``, stripped."""
    for line in rest.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _unbox(ans: str) -> str:
    """The content of the last ``\\boxed{}`` in ``ans`` when it has one, else ``ans``."""
    inner = _last_boxed(ans)
    return inner if inner is not None and inner.strip() else ans


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces; the last
    complete one when the final one is cut off; ``\\boxed 5`` without braces too."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    bare = _BOXED_BARE.findall(text)
    return bare[-1] if bare else None
