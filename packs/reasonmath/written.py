"""How numbers are written: in questions, in reference answers, and in signed expressions.

Large numbers carry thousands separators and money carries a dollar sign, as a person would
write them, so a model is also tested on reading ``12,500`` and ``$48.60``.
"""

from __future__ import annotations

from fractions import Fraction


def whole(n: int) -> str:
    """``12500`` -> ``12,500``; small numbers stay plain."""
    return f"{n:,}" if abs(n) >= 10_000 else str(n)


def money(cents: int) -> str:
    """Cents as dollars: ``4860`` -> ``$48.60``, ``4800`` -> ``$48``."""
    dollars, rest = divmod(cents, 100)
    return f"${dollars:,}" if rest == 0 else f"${dollars:,}.{rest:02d}"


def exact_decimal(value: Fraction, max_places: int = 6) -> str | None:
    """``value`` as a finite decimal (``5/4`` -> ``1.25``), or None when it has none that short."""
    for places in range(max_places + 1):
        scaled = value * 10**places
        if scaled.denominator == 1:
            sign = "-" if scaled < 0 else ""
            digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
            return sign + (digits[:-places] + "." + digits[-places:] if places else digits)
    return None


def answer_text(value: Fraction, unit: str) -> str:
    """The reference way to write an answer: money to the cent, else an integer, an exact
    decimal of up to four places, or a fraction in lowest terms."""
    if unit == "$":
        cents = value * 100
        if cents.denominator == 1:
            return money(cents.numerator)
    if value.denominator == 1:
        return str(value.numerator)
    return exact_decimal(value, 4) or f"{value.numerator}/{value.denominator}"


def term(coefficient: int, variable: str, first: bool) -> str:
    """One term of a linear expression: ``3x``, ``- x``, ``+ 12``; ``first`` drops a plus sign."""
    magnitude = abs(coefficient)
    body = (variable if magnitude == 1 else f"{magnitude}{variable}") if variable else str(magnitude)
    if first:
        return f"-{body}" if coefficient < 0 else body
    return f"- {body}" if coefficient < 0 else f"+ {body}"


def linear(*terms: tuple[int, str]) -> str:
    """``linear((3, "x"), (-7, ""))`` -> ``3x - 7``; zero terms are left out."""
    kept = [(c, v) for c, v in terms if c != 0]
    if not kept:
        return "0"
    return " ".join(term(c, v, index == 0) for index, (c, v) in enumerate(kept))
