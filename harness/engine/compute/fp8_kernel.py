"""Per-output-channel float8_e4m3fn quantization of many rows in one compiled pass.

Quantizing is memory-bound work of a dozen elementwise steps; as separate array operations each
step is one more sweep over memory, and together they cost several times the copy of the file.
Here each row is visited while it sits in cache: for its largest magnitude (the scale), to
divide, clamp and encode, and (from float32 scratch) to sum the squared error and norm. The
encoding is torch's own (``c10::detail::fp8e4m3fn_from_fp32_value``: round to nearest even,
subnormals through a float add), written so the compiler can vectorize it; its intermediate is
the rounded value, so the error needs no decoding pass.

Compiled once per machine: ``cache=True`` keeps the machine code beside this module (numba falls
back to its user cache directory, or to compiling per process, when that is not writable).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

# numba's OpenMP layer shares torch's OpenMP runtime: launching it resets torch's thread count to
# every core, and its idle threads spin beside torch's. numba's own pool touches neither. (Read
# when numba is imported and again when it compiles; a choice made in the environment stands.)
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import overload  # noqa: E402

FP8_MAX = np.float32(448.0)  # largest finite float8_e4m3fn value
TINY = np.float32(np.finfo(np.float32).tiny)  # the floor under an all-zero row's scale
ROWS_PER_TASK = 64  # rows handed to a thread at a time (each task allocates its scratch once)

_SUBNORMAL_BITS = np.uint32(121 << 23)  # float32 bits of 2**-6, e4m3's smallest normal
_DENORM_MAGIC = np.float32(2.0**14)  # its float32 ulp is 2**-9, e4m3's subnormal step
_DENORM_MAGIC_BITS = np.uint32(141 << 23)
_EXPONENT_REBIAS = np.uint32((127 - 7) << 3)  # float32 minus e4m3 exponent bias, at the code's bit 3
_ABS_MASK = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)


def _float32_bits(stored: np.integer) -> np.uint32:
    """The float32 bit pattern of one stored element (compiled per dtype by the overload below)."""
    raise NotImplementedError("only called from compiled code")


@overload(_float32_bits)
def _float32_bits_of(stored: Any) -> Callable[[Any], np.uint32] | None:
    """bfloat16 (read as uint16) is the top half of a float32: widening is a shift by a constant,
    which, unlike a shift by a variable, the compiler keeps in 32-bit vector lanes."""
    if stored == types.uint16:

        def from_bfloat16(stored: Any) -> np.uint32:
            return np.uint32(np.uint32(stored) << 16)

        return from_bfloat16
    if stored == types.uint32:

        def from_float32(stored: Any) -> np.uint32:
            return np.uint32(stored)

        return from_float32
    return None


@njit(cache=True, fastmath=False, error_model="numpy")
def _row_scale(row: np.ndarray) -> np.float32:
    """``max(amax / 448, tiny)`` in float32, as torch computes the per-channel scale.

    The magnitudes are compared as integers: for non-negative floats the bit patterns sort as
    the values do, and a NaN sorts above infinity, so NaN propagates as in torch's ``amax``.
    """
    largest = np.uint32(0)
    for i in range(len(row)):
        largest = max(largest, np.uint32(_float32_bits(row[i]) & _ABS_MASK))
    scale = np.uint32(largest).view(np.float32) / FP8_MAX
    if scale < TINY:  # false for NaN, which stays, as torch's clamp leaves it
        scale = TINY
    return scale


@njit(cache=True, fastmath=False, error_model="numpy")
def _encode_row(row: np.ndarray, scale: np.float32, codes: np.ndarray, scaled: np.ndarray,
                rounded_values: np.ndarray) -> None:
    """``(row / scale).clamp(-448, 448)`` as e4m3 codes; per element also ``|row / scale|`` and the
    magnitude its code stands for, both float32, for the error sums.

    The steps of torch's CPU cast (``c10::detail::fp8e4m3fn_from_fp32_value``), value for
    value: normals round their float32 significand to 3 bits (ties to even) by an integer add;
    below 2**-6 adding 2**14 makes the float unit round at e4m3's subnormal step. NaN keeps its
    sign. Every step is branch-free, so the compiler vectorizes the loop. Integer results are
    cast back to uint32 at each step: numba widens integer arithmetic to 64 bits.
    """
    for i in range(len(row)):
        y = np.uint32(_float32_bits(row[i])).view(np.float32) / scale
        bits = np.float32(y).view(np.uint32)
        magnitude = np.uint32(bits & _ABS_MASK).view(np.float32)
        scaled[i] = magnitude
        if magnitude > FP8_MAX:  # false for NaN, which stays, as torch's clamp leaves it
            magnitude = FP8_MAX
        a = np.float32(magnitude).view(np.uint32)
        shifted = np.float32(magnitude + _DENORM_MAGIC)
        sub_code = np.uint32(shifted.view(np.uint32) - _DENORM_MAGIC_BITS)
        sub_value = np.float32(shifted - _DENORM_MAGIC)
        rounded = np.uint32((a + 0x7FFFF + ((a >> 20) & 1)) & 0xFFF00000)
        normal_code = np.uint32((rounded >> 20) - _EXPONENT_REBIAS)
        subnormal = a < _SUBNORMAL_BITS
        code = sub_code if subnormal else normal_code
        value = sub_value if subnormal else rounded.view(np.float32)
        if a > _INF_BITS:
            code = np.uint32(0x7F)
        codes[i] = np.uint8(code | ((bits >> 24) & 0x80))
        rounded_values[i] = value


@njit(cache=True, fastmath={"reassoc", "nsz", "contract"}, error_model="numpy")
def _sums_of_squares(scaled: np.ndarray, rounded_values: np.ndarray) -> tuple[float, float]:
    """Sums of the squared rounding errors and of the squared weights, in units of the scale.

    Divided by the scale, every weight is at most 448, so float32 squares cannot overflow (the
    weights' own squares can, for float32 sources) and the loop vectorizes 16 lanes wide. The
    order of the additions may change here (a sum in strict order cannot vectorize); against a
    float64 sum in order, the squared error agrees to a few parts in a million.
    """
    err = np.float32(0.0)
    ref = np.float32(0.0)
    for i in range(len(scaled)):
        d = rounded_values[i] - scaled[i]
        err += d * d
        ref += scaled[i] * scaled[i]
    return np.float64(err), np.float64(ref)


@njit(parallel=True, nogil=True, cache=True, fastmath=False, error_model="numpy")
def quantize_channels(source: np.ndarray, row_starts: np.ndarray, codes: np.ndarray, scales: np.ndarray,
                      err_sq: np.ndarray, ref_sq: np.ndarray) -> None:
    """Per-row FP8 of ``source``, whose row ``r`` is ``source[row_starts[r]:row_starts[r + 1]]``.

    ``source`` holds bfloat16 as uint16 or float32 as uint32 (see ``_float32_bits``). Writes
    each element's code to ``codes`` and, per row, the float32 scale, the squared error of the
    dequantized row and the squared norm of the original (float64) to ``scales``, ``err_sq``
    and ``ref_sq``.
    Each row is read twice while it sits in cache (scale, codes), then its scratch once (sums):
    one pass over memory. Rows are indexed through their own views so no index can be negative,
    which lets the compiler vectorize. The interpreter lock is released, so the writer thread
    runs beside it.
    """
    rows = len(row_starts) - 1
    widest = 0
    for r in range(rows):
        widest = max(widest, row_starts[r + 1] - row_starts[r])
    for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        scaled_scratch = np.empty(widest, dtype=np.float32)
        rounded_scratch = np.empty(widest, dtype=np.float32)
        for r in range(task * ROWS_PER_TASK, min((task + 1) * ROWS_PER_TASK, rows)):
            row = source[row_starts[r] : row_starts[r + 1]]
            scaled = scaled_scratch[: len(row)]
            rounded_values = rounded_scratch[: len(row)]
            scale = _row_scale(row)
            _encode_row(row, scale, codes[row_starts[r] : row_starts[r + 1]], scaled, rounded_values)
            scales[r] = scale
            err, ref = _sums_of_squares(scaled, rounded_values)
            square = np.float64(scale) * np.float64(scale)
            err_sq[r] = err * square
            ref_sq[r] = ref * square


def use_threads(threads: int) -> None:
    """Run the kernel on ``threads`` threads (torch's count), within what numba started with."""
    started_with = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]  # set when numba starts
    numba.set_num_threads(max(1, min(threads, started_with)))
