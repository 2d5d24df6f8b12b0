"""Reading numbers out of a reply: plain, with thousands separators, decimals, fractions
(``3/4``, ``\\frac{3}{4}``, ``1 1/2``), money and units around them.

Every number is read exactly, as a ``Fraction``; a decimal also keeps how many places it was
written with, which is what lets a rounded decimal count as the exact answer it rounds from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# LaTeX wrappers whose content is plain text: \text{ km/h}, \mathrm{m}.
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_NOISE = re.compile(r"\\left|\\right|\\[()\[\]]|\\displaystyle|\\!|\\;|\\:")
_DASHES = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2009": "", "\u202f": "", "\u00a0": " "})

# One number. Not inside a word or another number; an optional minus and dollar sign before it.
_NUMBER = re.compile(
    r"""
    (?<![\w.,/])
    (?P<sign>-\s?)?
    \$?\s?
    (?:
        (?P<whole>\d+)\s+(?P<part>\d+)\s*/\s*(?P<parts>\d+)        # a mixed number: 1 1/2
      | (?P<int>\d{1,3}(?:,\d{3})+|\d+)                            # 1,234,567 or 1234567
        (?: \s*/\s*(?P<den>\d{1,3}(?:,\d{3})+|\d+)(?!\d|\.\d)     # a fraction: 3/4
          | (?P<dec>\.\d+) )?                                      # or decimals: 12.50
      | (?P<bare>\.\d+)                                            # .5
    )
    (?![\d])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Number:
    """One number as written in a reply.

    Attributes:
        value: the exact value.
        text: the characters it was read from.
        places: decimal places written (``12.50`` -> 2), or None for whole numbers and fractions.
    """

    value: Fraction
    text: str
    places: int | None = None


def _integer(digits: str) -> int:
    return int(digits.replace(",", ""))


def _frac_to_plain(match: re.Match[str]) -> str:
    """``\\frac{a}{b}`` -> ``a/b`` (exactly, in lowest terms) when both parts are numbers."""
    top, bottom = read_number(match.group(1)), read_number(match.group(2))
    if top is None or bottom is None or bottom.value == 0:
        return match.group(0)
    value = top.value / bottom.value
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def plain(text: str) -> str:
    """Math markup reduced to plain text: LaTeX fractions become ``a/b``, wrappers their content."""
    text = text.translate(_DASHES)
    text = text.replace("{,}", ",").replace("\\,", "").replace("\\$", "$").replace("\\%", "%").replace("\\ ", " ")
    text = _LATEX_NOISE.sub(" ", text)
    for _ in range(3):  # nested wrappers: \text{\textbf{42}}
        text = _TEXT_WRAP.sub(r" \1 ", text)
    for _ in range(2):  # \frac{\frac{1}{2}}{3}: the inner one first
        text = _LATEX_FRAC.sub(_frac_to_plain, text)
    return text


def _number(match: re.Match[str]) -> Number | None:
    sign = -1 if match.group("sign") else 1
    text = match.group(0).strip()
    if match.group("whole") is not None:
        part, parts = int(match.group("part")), int(match.group("parts"))
        if not 0 < part < parts:  # "3 4/2" is not a mixed number
            return None
        return Number(sign * (int(match.group("whole")) + Fraction(part, parts)), text)
    if match.group("bare") is not None:
        decimals = match.group("bare")[1:]
        return Number(sign * Fraction(int(decimals), 10 ** len(decimals)), text, len(decimals))
    value = Fraction(_integer(match.group("int")))
    if match.group("den") is not None:
        denominator = _integer(match.group("den"))
        return Number(sign * value / denominator, text) if denominator else None
    if match.group("dec") is not None:
        decimals = match.group("dec")[1:]
        value += Fraction(int(decimals), 10 ** len(decimals))
        return Number(sign * value, text, len(decimals))
    return Number(sign * value, text)


def numbers_in(text: str) -> list[Number]:
    """Every number in ``text`` (already :func:`plain`), in order."""
    found = (_number(match) for match in _NUMBER.finditer(text))
    return [number for number in found if number is not None]


def leading_number(text: str) -> Number | None:
    """The number ``text`` (already :func:`plain`) starts with, after spaces and opening marks."""
    match = _NUMBER.match(text.lstrip(" \t$([{"))
    return _number(match) if match else None


def read_number(text: str) -> Number | None:
    """``text`` read as exactly one number (units and a currency sign allowed around it)."""
    found = numbers_in(plain(text))
    return found[0] if len(found) == 1 else None


def agreement(number: Number, exact: Fraction) -> str | None:
    """How ``number`` stands for ``exact``: ``exact``, ``rounded`` or None (it does not).

    A decimal counts as rounded when it is ``exact`` rounded to the places it was written with and
    within 0.1% of it: ``0.333`` and ``33.33`` for ``1/3`` and ``100/3``, but not ``0.33`` for
    ``1/3`` nor ``12.6`` for ``12.55``. A whole number never stands for a fraction.
    """
    if number.value == exact:
        return "exact"
    if not number.places:
        return None
    error = abs(number.value - exact)
    if error <= Fraction(1, 2 * 10**number.places) and error <= abs(exact) / 1000:
        return "rounded"
    return None
