"""Templates of symbolic problems: algebra, number theory, counting and probability.

Equations are built backwards from a drawn solution, so every one has exactly the solution the
pack scores against; probabilities stay exact fractions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

from bench.packs.reasonmath.problem import Draw, Problem
from bench.packs.reasonmath.written import linear, money, whole

# -- algebra --------------------------------------------------------------------------------------


def _nonzero(draw: Draw, low: int, high: int) -> int:
    value = 0
    while value == 0:
        value = draw.between(low, high)
    return value


def solve_linear(draw: Draw) -> Problem:
    a = _nonzero(draw, *((-9, 9), (-40, 40), (-400, 400))[draw.scale])
    x = draw.pick((-12, 12), (-90, 90), (-900, 900))
    b = draw.pick((-20, 20), (-500, 500), (-50_000, 50_000))
    c = a * x + b
    question = f"Solve for x: {linear((a, 'x'), (b, ''))} = {c}."
    return Problem("solve_linear", {"a": a, "b": b, "c": c}, question, Fraction(x), "", 2)


def two_sided(draw: Draw) -> Problem:
    a = _nonzero(draw, *((-9, 9), (-40, 40), (-300, 300))[draw.scale])
    c = a
    while c == a:
        c = _nonzero(draw, *((-9, 9), (-40, 40), (-300, 300))[draw.scale])
    x = draw.pick((-10, 10), (-60, 60), (-600, 600))
    b = draw.pick((-20, 20), (-400, 400), (-40_000, 40_000))
    d = a * x + b - c * x
    question = f"Solve for x: {linear((a, 'x'), (b, ''))} = {linear((c, 'x'), (d, ''))}."
    return Problem("two_sided", {"a": a, "b": b, "c": c, "d": d}, question, Fraction(x), "", 3)


def system_sum(draw: Draw) -> Problem:
    span = ((1, 6), (2, 20), (10, 90))[draw.scale]
    x, y = draw.pick((-9, 9), (-50, 50), (-800, 800)), draw.pick((-9, 9), (-50, 50), (-800, 800))
    while True:
        a1, b1, a2, b2 = (_nonzero(draw, -span[1], span[1]) for _ in range(4))
        if a1 * b2 - a2 * b1 != 0:
            break
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y
    question = (
        f"The numbers x and y satisfy {linear((a1, 'x'), (b1, 'y'))} = {c1} and "
        f"{linear((a2, 'x'), (b2, 'y'))} = {c2}. What is x + y?"
    )
    params = {"a1": a1, "b1": b1, "c1": c1, "a2": a2, "b2": b2, "c2": c2}
    return Problem("system_sum", params, question, Fraction(x + y), "", 5)


def ages(draw: Draw) -> Problem:
    young = draw.pick((2, 15), (3, 30), (3, 30))
    times = draw.between(2, 5)
    later = draw.pick((1, 9), (5, 40), (100, 900))
    total = times * young + young + 2 * later
    question = (
        f"A tree is {times} times as old as a sapling. In {later} years the sum of their ages will be "
        f"{whole(total)} years. How old is the sapling now, in years?"
    )
    params = {"times": times, "later": later, "total": total}
    return Problem("ages", params, question, Fraction(young), "years", 3)


def evaluate_quadratic(draw: Draw) -> Problem:
    a = _nonzero(draw, *((-5, 5), (-20, 20), (-90, 90))[draw.scale])
    b = draw.pick((-9, 9), (-60, 60), (-900, 900))
    c = draw.pick((-9, 9), (-300, 300), (-9000, 9000))
    t = _nonzero(draw, *((-4, 4), (-15, 15), (-60, 60))[draw.scale])
    question = f"Let f(x) = {linear((a, 'x^2'), (b, 'x'), (c, ''))}. What is f({t})?"
    return Problem("evaluate_quadratic", {"a": a, "b": b, "c": c, "t": t}, question, Fraction(a * t * t + b * t + c), "", 4)


def consecutive(draw: Draw) -> Problem:
    count = draw.between(3, 9)
    first = draw.pick((1, 20), (30, 900), (2000, 90_000))
    total = count * first + count * (count - 1) // 2
    question = f"The sum of {count} consecutive integers is {whole(total)}. What is the largest of them?"
    return Problem("consecutive", {"count": count, "total": total}, question, Fraction(first + count - 1), "", 3)


# -- number theory --------------------------------------------------------------------------------


def _coprime_pair(draw: Draw, low: int, high: int) -> tuple[int, int]:
    while True:
        p, q = draw.between(low, high), draw.between(low, high)
        if p != q and math.gcd(p, q) == 1:
            return p, q


def gcd(draw: Draw) -> Problem:
    g = draw.pick((2, 9), (6, 60), (30, 400))
    p, q = _coprime_pair(draw, *((2, 9), (3, 60), (40, 300))[draw.scale])
    a, b = g * p, g * q
    question = f"What is the greatest common divisor of {whole(a)} and {whole(b)}?"
    return Problem("gcd", {"a": a, "b": b}, question, Fraction(g), "", 2)


def lcm(draw: Draw) -> Problem:
    g = draw.pick((1, 6), (2, 12), (5, 40))
    p, q = _coprime_pair(draw, *((2, 9), (3, 30), (20, 150))[draw.scale])
    a, b = g * p, g * q
    question = (
        f"Two lights blink every {whole(a)} and every {whole(b)} seconds, and they have just blinked "
        "together. After how many seconds do they next blink together?"
    )
    return Problem("lcm", {"a": a, "b": b}, question, Fraction(g * p * q), "seconds", 3)


def power_remainder(draw: Draw) -> Problem:
    base = draw.pick((2, 9), (11, 99), (101, 999))
    exponent = draw.pick((2, 4), (3, 12), (10, 60))
    modulus = draw.pick((3, 9), (7, 97), (11, 997))
    question = f"What is the remainder when {whole(base)}^{exponent} is divided by {modulus}?"
    answer = Fraction(pow(base, exponent, modulus))
    return Problem("power_remainder", {"base": base, "exponent": exponent, "modulus": modulus}, question, answer, "", 3)


PRIMES = (2, 3, 5, 7, 11, 13)


def divisor_count(draw: Draw) -> Problem:
    low, high = ((12, 100), (101, 10_000), (10_001, 900_000))[draw.scale]
    while True:
        chosen = sorted(draw.rng.sample(PRIMES, draw.between(1, 2 + draw.scale)))
        powers = {p: draw.between(1, 6 if p < 5 else 2) for p in chosen}
        n = math.prod(p**k for p, k in powers.items())
        if low <= n <= high:
            break
    answer = math.prod(k + 1 for k in powers.values())
    question = f"How many positive divisors does {whole(n)} have?"
    return Problem("divisor_count", {"n": n}, question, Fraction(answer), "", 3)


def multiples_either(draw: Draw) -> Problem:
    a, b = _coprime_pair(draw, *((2, 9), (3, 20), (7, 60))[draw.scale])
    if draw.between(0, 1):  # share a factor sometimes, so the overlap is not just a * b
        k = draw.between(2, 3)
        a, b = a * k, b * k
    n = draw.pick((30, 100), (500, 9000), (20_000, 900_000))
    overlap = a * b // math.gcd(a, b)
    question = f"How many integers from 1 to {whole(n)} (inclusive) are divisible by {a} or by {b}?"
    return Problem("multiples_either", {"n": n, "a": a, "b": b}, question, Fraction(n // a + n // b - n // overlap), "", 5)


# -- counting and probability ---------------------------------------------------------------------


def committee(draw: Draw) -> Problem:
    n = draw.pick((5, 10), (10, 20), (25, 40))
    k = draw.between(2, min(5, n - 1))
    question = f"In how many ways can a committee of {k} people be chosen from {n} people?"
    return Problem("committee", {"n": n, "k": k}, question, Fraction(math.comb(n, k)), "", 2)


def podium(draw: Draw) -> Problem:
    n = draw.pick((4, 8), (10, 25), (30, 80))
    k = draw.between(2, 3)
    places = "first, second and third" if k == 3 else "first and second"
    question = f"{n} runners race. In how many different ways can the {places} places be filled (no ties)?"
    return Problem("podium", {"n": n, "k": k}, question, Fraction(math.perm(n, k)), "", 2)


def two_red(draw: Draw) -> Problem:
    red = draw.pick((2, 9), (10, 60), (100, 400))
    blue = draw.pick((1, 9), (10, 60), (100, 400))
    total = red + blue
    question = (
        f"A bag holds {red} red and {blue} blue marbles. Two marbles are drawn without replacement. "
        "What is the probability that both are red?"
    )
    answer = Fraction(red, total) * Fraction(red - 1, total - 1)
    return Problem("two_red", {"red": red, "blue": blue}, question, answer, "", 3)


def dice_sum(draw: Draw) -> Problem:
    faces = draw.pick((4, 6), (8, 20), (100, 200))
    target = draw.between(2, 2 * faces)
    ways = sum(1 for first in range(1, faces + 1) if 1 <= target - first <= faces)
    question = (
        f"Two fair dice, each with faces numbered 1 to {faces}, are rolled. "
        f"What is the probability that the two numbers add up to {target}?"
    )
    return Problem("dice_sum", {"faces": faces, "target": target}, question, Fraction(ways, faces * faces), "", 2)


def at_least_one(draw: Draw) -> Problem:
    faces = draw.pick((2, 6), (6, 12), (6, 12))
    rolls = draw.pick((2, 3), (3, 4), (4, 5))
    question = (
        f"A fair die with faces numbered 1 to {faces} is rolled {rolls} times. "
        f"What is the probability of rolling {faces} at least once?"
    )
    answer = 1 - Fraction(faces - 1, faces) ** rolls
    return Problem("at_least_one", {"faces": faces, "rolls": rolls}, question, answer, "", 3)


def expected_payout(draw: Draw) -> Problem:
    slots = draw.choice((4, 5, 10, 20))  # divisors of 100: the expected payout is whole cents
    win_big = draw.between(1, 2)
    win_small = draw.between(1, slots - win_big - 1)
    big = draw.pick((5, 20), (50, 500), (10_000, 90_000))
    small = draw.pick((1, 4), (5, 40), (100, 900))
    question = (
        f"A wheel has {slots} equal slots. {win_big} of them {'pays' if win_big == 1 else 'pay'} {money(big * 100)}, "
        f"{win_small} {'pays' if win_small == 1 else 'pay'} {money(small * 100)}, and the rest pay nothing. "
        "What is the expected payout of one spin, in dollars?"
    )
    params = {"slots": slots, "win_big": win_big, "big": big, "win_small": win_small, "small": small}
    answer = Fraction(win_big * big + win_small * small, slots)
    return Problem("expected_payout", params, question, answer, "$", 3)


ALGEBRA: tuple[Callable[[Draw], Problem], ...] = (solve_linear, two_sided, system_sum, ages, evaluate_quadratic, consecutive)
NUMBER_THEORY: tuple[Callable[[Draw], Problem], ...] = (gcd, lcm, power_remainder, divisor_count, multiples_either)
COUNTING: tuple[Callable[[Draw], Problem], ...] = (committee, podium, two_red, dice_sum, at_least_one, expected_payout)
