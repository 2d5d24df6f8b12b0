"""Templates of everyday quantities: counting word problems, rates and units, percentages and money.

Every template draws its numbers from the scale of its :class:`Draw` and computes the answer
with ``Fraction``; money is drawn in whole cents and chosen so the answer is a whole number of
cents, so "to the cent" never needs rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

from bench.packs.reasonmath.problem import Draw, Problem
from bench.packs.reasonmath.written import money, whole

NAMES = ("Ana", "Bilal", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hina", "Ivo", "Jun")


# -- arithmetic word problems ---------------------------------------------------------------------


def crates_left(draw: Draw) -> Problem:
    crates = draw.pick((2, 9), (12, 90), (120, 900))
    per = draw.pick((3, 10), (12, 48), (24, 144))
    shipped = draw.between(1, crates * per - 1)
    question = (
        f"A warehouse receives {whole(crates)} crates of {per} bottles each and then ships out "
        f"{whole(shipped)} bottles. How many bottles are left in the warehouse?"
    )
    params = {"crates": crates, "per": per, "shipped": shipped}
    return Problem("crates_left", params, question, Fraction(crates * per - shipped), "", 2)


def equal_share(draw: Draw) -> Problem:
    each = draw.pick((2, 9), (15, 120), (150, 4000))
    friends = draw.pick((2, 6), (4, 24), (12, 60))
    kept = draw.pick((1, 9), (5, 99), (100, 999))
    total = each * friends + kept
    name = draw.choice(NAMES)
    question = (
        f"{name} has {whole(total)} stickers, keeps {kept} and shares the rest equally among "
        f"{friends} friends. How many stickers does each friend get?"
    )
    params = {"total": total, "kept": kept, "friends": friends, "name": name}
    return Problem("equal_share", params, question, Fraction(each), "", 2)


def two_purchases(draw: Draw) -> Problem:
    packs_a, packs_b = draw.pick((2, 6), (10, 60), (100, 800)), draw.pick((2, 6), (10, 60), (100, 800))
    size_a, size_b = draw.pick((3, 10), (6, 24), (12, 50)), draw.pick((3, 10), (6, 24), (12, 50))
    question = (
        f"A school buys {whole(packs_a)} packs of {size_a} pencils and {whole(packs_b)} packs of "
        f"{size_b} erasers. How many items does it buy in all?"
    )
    params = {"packs_a": packs_a, "size_a": size_a, "packs_b": packs_b, "size_b": size_b}
    return Problem("two_purchases", params, question, Fraction(packs_a * size_a + packs_b * size_b), "", 3)


def free_seats(draw: Draw) -> Problem:
    rows = draw.pick((3, 9), (15, 60), (120, 400))
    seats = draw.pick((4, 10), (20, 40), (40, 90))
    total = rows * seats
    reserved = draw.between(2, total // 3)
    sold = draw.between(2, total - reserved - 1)
    question = (
        f"A hall has {rows} rows of {seats} seats. {whole(reserved)} seats are reserved, and "
        f"{whole(sold)} tickets are sold for the other seats. How many seats are still free?"
    )
    params = {"rows": rows, "seats": seats, "reserved": reserved, "sold": sold}
    return Problem("free_seats", params, question, Fraction(total - reserved - sold), "", 3)


# -- rates and units ------------------------------------------------------------------------------


def travel_time(draw: Draw) -> Problem:
    speed = draw.pick((4, 60), (40, 120), (300, 900))
    distance = draw.pick((10, 99), (100, 2000), (10_000, 40_000))
    question = f"A train covers {whole(distance)} km at a constant {speed} km/h. How many hours does the trip take?"
    return Problem("travel_time", {"distance": distance, "speed": speed}, question, Fraction(distance, speed), "hours", 1)


def average_speed(draw: Draw) -> Problem:
    speed_1, speed_2 = draw.pick((3, 20), (20, 90), (300, 900)), draw.pick((3, 20), (20, 90), (300, 900))
    hours_1, hours_2 = draw.pick((1, 4), (1, 9), (10, 40)), draw.pick((1, 4), (1, 9), (10, 40))
    distance_1, distance_2 = speed_1 * hours_1, speed_2 * hours_2
    question = (
        f"A rider covers {whole(distance_1)} km at {speed_1} km/h, then {whole(distance_2)} km at "
        f"{speed_2} km/h. What is the average speed over the whole ride, in km/h?"
    )
    params = {"distance_1": distance_1, "speed_1": speed_1, "distance_2": distance_2, "speed_2": speed_2}
    answer = Fraction(distance_1 + distance_2) / (Fraction(distance_1, speed_1) + Fraction(distance_2, speed_2))
    return Problem("average_speed", params, question, answer, "km/h", 5)


def convert_speed(draw: Draw) -> Problem:
    to_kmh = bool(draw.between(0, 1))
    speed = draw.pick((2, 30), (30, 400), (12_000, 90_000))
    if to_kmh:
        question = f"An object moves at {whole(speed)} metres per second. What is its speed in km/h?"
        answer = Fraction(speed * 3600, 1000)
    else:
        question = f"An object moves at {whole(speed)} km/h. What is its speed in metres per second?"
        answer = Fraction(speed * 1000, 3600)
    params = {"speed": speed, "to": "km/h" if to_kmh else "m/s"}
    return Problem("convert_speed", params, question, answer, "km/h" if to_kmh else "m/s", 2)


def work_together(draw: Draw) -> Problem:
    hours_a = draw.pick((2, 9), (10, 60), (100, 600))
    hours_b = draw.pick((2, 9), (10, 60), (100, 600))
    question = (
        f"One pump fills a tank in {hours_a} hours and a second pump fills it in {hours_b} hours. "
        "Working together, how many hours do they take to fill the tank?"
    )
    answer = Fraction(hours_a * hours_b, hours_a + hours_b)
    return Problem("work_together", {"hours_a": hours_a, "hours_b": hours_b}, question, answer, "hours", 3)


def fuel_use(draw: Draw) -> Problem:
    per_100 = draw.pick((4, 12), (5, 15), (25, 45))
    distance = draw.pick((20, 90), (150, 2500), (12_000, 80_000))
    question = f"A van uses {per_100} litres of fuel per 100 km. How many litres does it need for {whole(distance)} km?"
    params = {"per_100": per_100, "distance": distance}
    return Problem("fuel_use", params, question, Fraction(per_100 * distance, 100), "litres", 2)


# -- percentages and money ------------------------------------------------------------------------


def discount(draw: Draw) -> Problem:
    cents = 20 * draw.pick((10, 300), (300, 20_000), (60_000, 900_000))
    percent = 5 * draw.between(1, 15)
    question = f"A jacket costs {money(cents)} and is on sale at {percent}% off. What is the sale price, in dollars?"
    answer = Fraction(cents * (100 - percent), 100 * 100)
    return Problem("discount", {"price_cents": cents, "percent": percent}, question, answer, "$", 2)


def percent_change(draw: Draw) -> Problem:
    start = 20 * draw.pick((1, 4), (10, 400), (1000, 9000))
    percent = 5 * draw.between(1, 30)
    end = start * (100 + percent) // 100
    grew = draw.between(0, 3) > 0
    if not grew:
        percent = 5 * draw.between(1, 18)
        end = start * (100 - percent) // 100
    past, present = ("grew", "grow") if grew else ("fell", "fall")
    question = f"A town's population {past} from {whole(start)} to {whole(end)}. By what percent did it {present}?"
    return Problem("percent_change", {"start": start, "end": end}, question, Fraction(abs(end - start) * 100, start), "%", 3)


def simple_interest(draw: Draw) -> Problem:
    principal = draw.pick((10, 90), (200, 9000), (20_000, 500_000))
    rate = draw.between(1, 9)
    years = draw.between(2, 10)
    question = (
        f"{money(principal * 100)} is deposited at {rate}% simple interest per year. "
        f"How much is in the account after {years} years, in dollars?"
    )
    answer = Fraction(principal) + Fraction(principal * rate * years, 100)
    return Problem("simple_interest", {"principal": principal, "rate": rate, "years": years}, question, answer, "$", 3)


def bill_with_tax(draw: Draw) -> Problem:
    count = draw.pick((2, 9), (10, 90), (200, 900))
    cents = 20 * draw.pick((5, 60), (10, 200), (100, 2000))
    tax = 5 * draw.between(1, 5)
    question = (
        f"{count} notebooks cost {money(cents)} each, plus {tax}% sales tax on the total. "
        "What is the total cost, in dollars?"
    )
    answer = Fraction(count * cents * (100 + tax), 100 * 100)
    return Problem("bill_with_tax", {"count": count, "price_cents": cents, "tax": tax}, question, answer, "$", 3)


def rise_then_fall(draw: Draw) -> Problem:
    dollars = 4 * draw.pick((2, 24), (25, 2400), (2500, 200_000))
    rise = 5 * draw.between(1, 10)
    fall = 5 * draw.between(1, 10)
    question = (
        f"A price of {money(dollars * 100)} rises by {rise}% and then the new price falls by {fall}%. "
        "What is the final price, in dollars?"
    )
    answer = Fraction(dollars * (100 + rise) * (100 - fall), 100 * 100)
    return Problem("rise_then_fall", {"price": dollars, "rise": rise, "fall": fall}, question, answer, "$", 4)


def percent_of(draw: Draw) -> Problem:
    percent = draw.between(1, 99)
    number = draw.pick((2, 99), (100, 9999), (10_000, 999_999))
    question = f"What is {percent}% of {whole(number)}?"
    return Problem("percent_of", {"percent": percent, "number": number}, question, Fraction(percent * number, 100), "", 1)


ARITHMETIC: tuple[Callable[[Draw], Problem], ...] = (crates_left, equal_share, two_purchases, free_seats)
RATES_UNITS: tuple[Callable[[Draw], Problem], ...] = (travel_time, average_speed, convert_speed, work_together, fuel_use)
PERCENT_MONEY: tuple[Callable[[Draw], Problem], ...] = (
    discount,
    percent_change,
    simple_interest,
    bill_with_tax,
    rise_then_fall,
    percent_of,
)
