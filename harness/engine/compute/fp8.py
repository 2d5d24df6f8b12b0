"""FP8 checkpoints in the compressed-tensors format that vLLM and transformers load, written as a stream.

What becomes FP8, with which scales, is decided from headers by :mod:`bench.engine.planning.fp8_plan`.
Here the weights are read in row chunks straight from a memory map (a run of adjacent small
tensors, such as a layer's experts, as one chunk), quantized, and appended to the output file.
Reading, quantizing and writing overlap: the next run's pages are mapped in while a worker
quantizes the current one and a writer thread writes the last. Peak memory is a few chunks,
whatever the model size.
"""
from __future__ import annotations

import contextlib
import gc
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.engine.compute.stream_writer import Encoded, write_streamed
from bench.engine.compute.tensor_reader import MAP_WINDOW_BYTES, TensorReader
from bench.engine.planning.checkpoint import DTYPE_BYTES, Checkpoint
from bench.engine.planning.fp8_plan import QuantPlan, TensorPlan, plan_quantization, quantization_config
from bench.engine.planning.layout import layout_shards
from bench.engine.planning.side_files import copy_side_files, write_config
from bench.errors import UserError
from bench.pruning_record import PRUNING_FILE

if TYPE_CHECKING:
    import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn value


# --------------------------------------------------------------------------------------------
# Quantization arithmetic


def quantize_blocks(weight: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 weight and float32 ``block`` x ``block`` scales for a ``[..., out, in]`` chunk.

    Per-channel scales go through :class:`ChannelQuantizer` instead (the compiled kernel).
    """
    import torch

    w = weight.to(torch.float32)
    *lead, out_dim, in_dim = w.shape
    rows, cols = math.ceil(out_dim / block), math.ceil(in_dim / block)
    padded = torch.nn.functional.pad(w, (0, cols * block - in_dim, 0, rows * block - out_dim))
    tiles = padded.reshape(*lead, rows, block, cols, block)
    amax = tiles.abs().amax(dim=(-3, -1))
    scale = (amax / FP8_MAX).clamp_(min=torch.finfo(torch.float32).tiny)
    q = (w / _expand_blocks(scale, block, out_dim, in_dim)).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    """Inverse of :func:`quantize_blocks`, in float32."""
    return dequantize_block_scaled(q, scale, (block, block))


def dequantize_block_scaled(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int], *,
                            row_offset: int = 0) -> torch.Tensor:
    """Real float32 values of FP8 codes ``q`` ``[..., out, in]``: each code times its tile's scale.

    ``scale`` has one value per ``block[0]`` x ``block[1]`` tile (the last row and column of tiles
    may be partial). ``row_offset`` says how many rows of the first tile come before ``q``'s first
    row, for a row range that does not start on a tile boundary.
    """
    out_dim, in_dim = q.shape[-2:]
    expanded = scale.repeat_interleave(block[0], dim=-2).repeat_interleave(block[1], dim=-1)
    return fp8_to_float32(q).mul_(expanded[..., row_offset : row_offset + out_dim, :in_dim])


def _expand_blocks(scale: torch.Tensor, block: int, out_dim: int, in_dim: int) -> torch.Tensor:
    """One scale per weight, from one per ``block`` x ``block`` tile."""
    return scale.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)[..., :out_dim, :in_dim]


# Elements quantized in one kernel call: enough that the call's fixed cost (argument checks,
# waking the threads) is small against its work, while the codes buffer stays a few MiB.
BATCH_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class ChannelCodes:
    """One ``[rows, cols]`` block quantized per output channel, with its error sums."""

    codes: np.ndarray  # [rows, cols] uint8: float8_e4m3fn bits, a view into a pooled buffer
    scale: np.ndarray  # [rows, 1] float32
    err_sq: float  # squared Frobenius norm of dequantized minus original
    ref_sq: float  # squared Frobenius norm of the original


class ChannelQuantizer:
    """Per-output-channel FP8 of many blocks in one call: scale ``amax / 448`` (at least float32's
    smallest normal), weights divided, clamped and cast as torch casts to float8_e4m3fn, bit for bit.

    Per-expert tensors are small, so the blocks of a whole run of them go to the compiled kernel
    (:mod:`bench.engine.compute.fp8_kernel`) together.

    Codes go into buffers reused from call to call: fresh memory costs a page fault per 4 KiB,
    which on a virtual machine took longer than quantizing the page. A buffer is reused only once
    nothing views it any more (the writer may still hold the last calls' codes), so the pool
    grows to the number of calls in flight and stays there.
    """

    def __init__(self) -> None:
        self._row_starts: dict[tuple[tuple[int, int], ...], np.ndarray] = {}
        self._buffers: list[np.ndarray] = []

    def _free_buffer(self, n: int) -> np.ndarray:
        """A pooled buffer of at least ``n`` bytes that no tensor views, or a new one."""
        for index in range(len(self._buffers)):
            # Only the pool and this call's argument refer to it: every view of it is gone.
            if len(self._buffers[index]) >= n and sys.getrefcount(self._buffers[index]) == 2:
                return self._buffers[index]
        buffer = np.empty(max(n, BATCH_ELEMENTS), dtype=np.uint8)
        self._buffers.append(buffer)
        return buffer

    def quantize(self, source: torch.Tensor, shapes: list[tuple[int, int]]) -> list[ChannelCodes]:
        """Quantize ``source`` (flat; float16, bfloat16 or float32), which holds ``shapes`` back to back."""
        import torch

        from bench.engine.compute.fp8_kernel import quantize_channels, use_threads

        n = source.numel()
        if n != sum(rows * cols for rows, cols in shapes):
            raise ValueError(f"{n} source elements do not hold blocks {shapes}")
        starts = self._starts(tuple(shapes))
        codes = self._free_buffer(n)[:n]
        total_rows = len(starts) - 1
        scales = np.empty((total_rows, 1), dtype=np.float32)  # fresh: a tensor's scales outlive this call
        err_sq, ref_sq = np.empty(total_rows), np.empty(total_rows)
        use_threads(torch.get_num_threads())
        quantize_channels(stored_bits(source), starts, codes, scales.reshape(-1), err_sq, ref_sq)
        first_rows = np.cumsum([0] + [rows for rows, _ in shapes[:-1]])
        block_err = np.add.reduceat(err_sq, first_rows).tolist()
        block_ref = np.add.reduceat(ref_sq, first_rows).tolist()
        out, start = [], 0
        for (rows, cols), row, err, ref in zip(shapes, first_rows.tolist(), block_err, block_ref, strict=True):
            block = codes[start : start + rows * cols].reshape(rows, cols)
            out.append(ChannelCodes(block, scales[row : row + rows], err, ref))
            start += rows * cols
        return out

    def _starts(self, shapes: tuple[tuple[int, int], ...]) -> np.ndarray:
        """Each row's first element, and the end: kept, as runs repeat the same shapes layer after layer."""
        starts = self._row_starts.get(shapes)
        if starts is None:
            lengths = np.repeat([cols for _, cols in shapes], [rows for rows, _ in shapes])
            starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            self._row_starts[shapes] = starts
        return starts


def stored_bits(source: torch.Tensor) -> np.ndarray:
    """``source``'s bits as the kernel reads them: bfloat16 as uint16, float32 as uint32.

    bfloat16 is the top half of a float32, so its bits are used where they lie (no copy);
    float16 is widened by torch's exact cast first.
    """
    import torch

    if source.dtype == torch.bfloat16:
        return source.view(torch.int16).numpy().view(np.uint16)
    if source.dtype != torch.float32:
        source = source.to(torch.float32)
    return source.view(torch.int32).numpy().view(np.uint32)


def fp8_to_float32(q: torch.Tensor) -> torch.Tensor:
    """``q.to(torch.float32)`` for float8_e4m3fn, value for value, NaN included.

    torch's CPU cast converts one element at a time and dominated quantization; these in-place
    integer steps vectorize (about 4x faster). An e4m3 code's sign and magnitude bits moved into a
    float16 make the same number divided by 2**8, subnormals included (the exponent biases differ
    by 8); only the NaN magnitude (0x7f) needs a float16 NaN exponent of its own.
    """
    import torch

    if q.device.type != "cpu":
        return q.to(torch.float32)
    code = q.view(torch.int8).to(torch.int16)  # sign-extended
    nan_bits = (code & 0x7F).add_(1).bitwise_right_shift_(7).neg_().bitwise_and_(0x7E00)  # 0x7e00 where NaN
    half = code.bitwise_left_shift_(7).bitwise_and_(~0x4000).bitwise_or_(nan_bits)  # sign to bit 15
    return half.view(torch.float16).to(torch.float32).mul_(256.0)


# --------------------------------------------------------------------------------------------
# Streaming: which rows are read together, in what order they are written


@dataclass(frozen=True)
class Piece:
    """Rows of one quantized output: where they lie in the source file and the shape they are written in."""

    plan: TensorPlan
    start: int  # first element within the source tensor
    rows: int
    cols: int
    shape: tuple[int, ...]  # a fused tensor's chunk keeps its [experts, out, in] form
    last: bool  # the output's final piece: its scale and error are complete after it

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def follows(self, other: Piece) -> bool:
        """This piece's data starts in the file where ``other``'s ends (same file and dtype)."""
        mine, theirs = self.plan.source, other.plan.source
        if mine.file != theirs.file or mine.dtype != theirs.dtype:
            return False
        size = DTYPE_BYTES[mine.dtype]
        return mine.offset + self.start * size == theirs.offset + (other.start + other.numel) * size


def pieces(item: TensorPlan, budget: int) -> list[Piece]:
    """``item``'s rows in pieces of about ``budget`` elements (whole experts for a fused output)."""
    shape = item.source.shape
    if item.select is not None:  # one expert's projection out of a fused [experts, out, in] tensor
        expert, begin, stop = item.select
        first, rows, cols, group = (expert * shape[1] + begin) * shape[2], stop - begin, shape[2], 1
    elif len(shape) == 3:  # a fused tensor kept fused: written in chunks of whole experts
        first, rows, cols, group = 0, shape[0] * shape[1], shape[2], shape[1]
    else:
        first, rows, cols, group = 0, shape[0], shape[1], 1
    step = max(budget // (cols * group), 1) * group
    out = []
    for row in range(0, rows, step):
        count = min(step, rows - row)
        written = (count // group, group, cols) if len(shape) == 3 and item.select is None else (count, cols)
        out.append(Piece(item, first + row * cols, count, cols, written, row + step >= rows))
    return out


PAGE_BYTES = 4096


def map_in(source: torch.Tensor) -> None:
    """Fault in the pages of a memory-mapped span by reading one byte of each.

    Called for the next run while the worker quantizes the current one: otherwise the kernel
    takes the page faults itself, about a fifth of its time. numpy's reduction runs without the
    interpreter lock.
    """
    import torch

    source.view(-1).view(torch.uint8).numpy()[::PAGE_BYTES].max(initial=0)


@dataclass
class _Sums:
    """One output's scales and error sums, gathered over its pieces."""

    scales: list[np.ndarray] = field(default_factory=list)
    err_sq: float = 0.0
    ref_sq: float = 0.0


class QuantizedStream:
    """The output tensors of a plan, in plan order, for :func:`write_streamed`.

    Kept tensors are copied through. Per-channel outputs are cut into pieces, and runs of pieces
    that lie back to back in the file (every expert of a layer) are read as one span and
    quantized together; block-scaled outputs go one chunk at a time.

    Runs are quantized one ahead, in a worker thread: while the kernel (which releases the
    interpreter lock) works on the next run, this thread hands the last run's outputs to the
    writer. Only one run is in flight, so memory stays two runs' codes.
    """

    def __init__(self, plan: QuantPlan, reader: TensorReader, chunk_bytes: int,
                 progress: Callable[[str], None] | None = None) -> None:
        self.plan = plan
        self.reader = reader
        self.chunk_bytes = chunk_bytes
        # Per element the quantizer holds one byte of codes, plus four of float32 for float16 sources.
        self.budget = max(min(BATCH_ELEMENTS, chunk_bytes // 5), 1)
        self.progress = progress
        self.errors: dict[str, float] = {}
        self._quantizer = ChannelQuantizer()
        self._sums: dict[str, _Sums] = {}

    def tensors(self) -> Iterator[tuple[str, torch.Tensor | Encoded]]:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fp8-kernel") as pool:
            ahead: tuple[list[Piece], Future[list[ChannelCodes]]] | None = None
            for work in self._work():
                if isinstance(work, list):  # a run: start it, then write the one before
                    source = self.reader.span(work[0].plan.source, work[0].start, sum(p.numel for p in work))
                    map_in(source)
                    started = pool.submit(self._quantizer.quantize, source, [(p.rows, p.cols) for p in work])
                    if ahead is not None:
                        yield from self._outputs(*ahead)
                    ahead = (work, started)
                    continue
                if ahead is not None:
                    yield from self._outputs(*ahead)
                    ahead = None
                if work.action == "keep":
                    for chunk in self.reader.row_chunks(work.source.name, self.chunk_bytes):
                        yield work.source.name, chunk
                else:
                    yield from self._block_scaled(work)
            if ahead is not None:
                yield from self._outputs(*ahead)

    def _work(self) -> Iterator[list[Piece] | TensorPlan]:
        """The plan in order: runs of per-channel pieces, and kept or block-scaled tensors."""
        run: list[Piece] = []
        run_numel = 0
        for item in self.plan.tensors:
            if item.action == "keep" or self.plan.block is not None:
                if run:
                    yield run
                run, run_numel = [], 0
                yield item
                continue
            for piece in pieces(item, self.budget):
                if run and (not piece.follows(run[-1]) or run_numel + piece.numel > self.budget):
                    yield run
                    run, run_numel = [], 0
                run.append(piece)
                run_numel += piece.numel
        if run:
            yield run

    def _outputs(self, run: list[Piece], quantized: Future[list[ChannelCodes]]) -> Iterator[tuple[str, Encoded]]:
        for piece, result in zip(run, quantized.result(), strict=True):
            weight, scale = piece.plan.outputs
            yield weight.name, Encoded("F8_E4M3", piece.shape, result.codes)
            if piece.last and weight.name not in self._sums:  # the usual case: the whole output in one piece
                yield scale.name, Encoded("F32", scale.shape, result.scale)
                self._record(weight.name, result.err_sq, result.ref_sq)
                continue
            sums = self._sums.setdefault(weight.name, _Sums())
            sums.scales.append(result.scale)
            sums.err_sq += result.err_sq
            sums.ref_sq += result.ref_sq
            if piece.last:
                del self._sums[weight.name]
                yield scale.name, Encoded("F32", scale.shape, np.concatenate(sums.scales))
                self._record(weight.name, sums.err_sq, sums.ref_sq)

    def _block_scaled(self, item: TensorPlan) -> Iterator[tuple[str, torch.Tensor]]:
        import torch

        block = self.plan.block
        assert block is not None
        name = item.source.name
        if item.select is not None:
            expert, start, stop = item.select
            chunks: Iterator[torch.Tensor] = iter([self.reader.rows(name, expert, expert + 1)[0, start:stop]])
        else:
            multiple = block if len(item.source.shape) == 2 else 1
            chunks = self.reader.row_chunks(name, self.chunk_bytes, multiple=multiple)
        scales: list[torch.Tensor] = []
        err_sq = ref_sq = 0.0
        for chunk in chunks:
            ref = chunk.to(torch.float32)
            q, scale = quantize_blocks(ref, block)
            err_sq += float(torch.linalg.vector_norm(dequantize_blocks(q, scale, block).sub_(ref))) ** 2
            ref_sq += float(torch.linalg.vector_norm(ref)) ** 2
            del ref
            scales.append(scale)
            yield item.outputs[0].name, q
        yield item.outputs[1].name, torch.cat(scales, dim=0)
        self._record(item.outputs[0].name, err_sq, ref_sq)

    def _record(self, name: str, err_sq: float, ref_sq: float) -> None:
        self.errors[name] = math.sqrt(err_sq / ref_sq) if ref_sq > 0 else 0.0
        if self.progress:
            self.progress(f"{name}: rel. error {self.errors[name]:.4f}")


@contextlib.contextmanager
def without_cycle_collector() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector during a conversion.

    Its many small allocations trigger full collections, and each one walks every object the
    process holds: about 0.2 s with torch and compressed-tensors loaded, a quarter of a whole
    small-model conversion. A conversion makes no reference cycles, so nothing waits on them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------------------------
# The conversion


@dataclass
class FP8Result:
    """What ``quantize_checkpoint`` did, for the CLI summary and for callers."""

    out_dir: Path
    before_bytes: int
    after_bytes: int
    predicted_bytes: int
    quantized: int
    kept: int
    worst_error: float
    worst_tensor: str
    errors: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    scheme: str = "FP8_DYNAMIC"


@without_cycle_collector()
def quantize_checkpoint(
    model_dir: Path | str,
    out_dir: Path | str,
    *,
    block: int | None = None,
    skip_experts: bool = False,
    unfuse: bool = True,
    max_shard_bytes: int = 4 << 30,
    chunk_bytes: int = 64 << 20,
    progress: Callable[[str], None] | None = None,
) -> FP8Result:
    """Write an FP8 (compressed-tensors) copy of ``model_dir`` to ``out_dir``, streamed tensor by tensor.

    Args:
        model_dir: a bf16/fp16/fp32 safetensors checkpoint, or a block-FP8 one whose FP8 tensors are copied
            as they are (its remaining bf16 linear weights are quantized in its own format).
        out_dir: where the FP8 checkpoint goes (created; config, tokenizer and template copied).
        block: ``None`` for per-channel scales (FP8_DYNAMIC), or a block edge (128) for block scales.
        skip_experts: keep routed experts in their original precision (FP8 attention and dense
            layers only): what vLLM's CPU backend can serve.
        unfuse: write fused 3D experts as per-expert FP8 tensors (see :func:`plan_quantization`).
        max_shard_bytes: output shard size limit.
        chunk_bytes: largest piece of one tensor held in memory at a time.
        progress: called with a short line per tensor group, for the CLI.
    """
    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise UserError("--out must differ from --model: quantization writes a new checkpoint")
    checkpoint = Checkpoint.open(model_dir)
    plan = plan_quantization(checkpoint, block=block, skip_experts=skip_experts, unfuse=unfuse)
    shards = layout_shards(plan.output, max_shard_bytes)
    reader = TensorReader(checkpoint, window_bytes=MAP_WINDOW_BYTES)
    stream = QuantizedStream(plan, reader, chunk_bytes, progress)
    written = write_streamed(out_dir, shards, stream.tensors())
    errors = stream.errors
    reader.close()
    config = dict(checkpoint.config)
    if plan.source is None:  # a block-FP8 source keeps its own quantization_config
        config["quantization_config"] = quantization_config(plan)
    write_config(out_dir, config)
    copy_side_files(model_dir, out_dir)
    if (model_dir / PRUNING_FILE).is_file():  # the quantized checkpoint keeps its pruning record
        shutil.copy2(model_dir / PRUNING_FILE, out_dir / PRUNING_FILE)
    after = sum(path.stat().st_size for path in written)
    worst_tensor = max(errors, key=lambda n: errors[n]) if errors else ""
    counts = plan.counts()
    return FP8Result(
        out_dir=out_dir,
        before_bytes=checkpoint.file_bytes(),
        after_bytes=after,
        predicted_bytes=sum(shard.file_bytes for shard in shards),
        quantized=counts["quantized"],
        kept=counts["kept"],
        worst_error=errors.get(worst_tensor, 0.0),
        worst_tensor=worst_tensor,
        errors=errors,
        seconds=time.perf_counter() - started,
        scheme=_scheme(plan),
    )


def _scheme(plan: QuantPlan) -> str:
    if plan.source is not None:
        return f"{plan.source.describe()} (the source's own format: only its bf16 linear weights were quantized)"
    return "FP8_DYNAMIC" if plan.block is None else f"FP8_BLOCK {plan.block}x{plan.block}"
