"""The disk-backed hidden state store: exact round trips, bf16 rounding only, scores as the in-memory path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.moe import resolve
from bench.engine.planning.prune_plan import PruneOptions
from bench.errors import UserError

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("single_thread")]
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from engine_tiny import build_tiny, single_thread  # noqa: E402,F401

LENGTHS = [5, 1, 17, 9]


def test_disk_store_round_trips_exactly_in_float32_and_rounds_once_in_bfloat16(tmp_path: Path) -> None:
    from bench.engine.compute.hidden_store import DiskHiddenStates

    states = [torch.randn(n, 12) * 3 for n in LENGTHS]
    with DiskHiddenStates(tmp_path, LENGTHS, 12, dtype="float32") as exact:
        assert exact.path.stat().st_size == sum(LENGTHS) * 12 * 4
        for i in reversed(range(len(states))):  # any order: each sequence has its own rows
            exact.write(i, states[i])
        assert all(torch.equal(exact.read(i), s) for i, s in enumerate(states))
        exact.write(2, states[2] + 1)  # overwritten in place, neighbours untouched
        assert torch.equal(exact.read(2), states[2] + 1) and torch.equal(exact.read(3), states[3])
    with DiskHiddenStates(tmp_path, LENGTHS, 12) as store:
        assert store.path.stat().st_size == sum(LENGTHS) * 12 * 2
        for i, s in enumerate(states):
            store.write(i, s)
        for i, s in enumerate(states):
            back = store.read(i)
            assert back.dtype == torch.float32 and torch.equal(back, s.to(torch.bfloat16).float())
        folder = store.folder
    assert not folder.exists() and os.listdir(tmp_path) == []


def test_disk_store_refuses_a_scratch_it_cannot_fill_naming_the_flag(tmp_path: Path) -> None:
    from bench.engine.compute.hidden_store import DiskHiddenStates

    with pytest.raises(UserError, match=r"need .* of scratch in .*pass --scratch-dir on a larger disk"):
        DiskHiddenStates(tmp_path, [1 << 40], 2048)
    with pytest.raises(UserError, match="does not exist"):
        DiskHiddenStates(tmp_path / "missing", [4], 8)
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def scored_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("store") / "model", "qwen3_moe", layers=3, tokenizer=False)


def _score(model: Path, scratch: Path, tokens: list[list[int]] | None = None,  # type: ignore[no-untyped-def]
           **options: object):
    from bench.engine.compute.reap import score_experts

    checkpoint = Checkpoint.open(model)
    torch.manual_seed(0)
    tokens = tokens or [torch.randint(3, 380, (n,)).tolist() for n in (40, 23, 64, 31, 50)]
    return score_experts(checkpoint, resolve(checkpoint), tokens,
                         PruneOptions(keep=4, scratch_dir=str(scratch), **options), keep=4)  # type: ignore[arg-type]


def test_store_path_scores_as_the_in_memory_path(scored_model: Path, tmp_path: Path) -> None:
    memory = _score(scored_model, tmp_path, hidden_store="memory")
    exact = _score(scored_model, tmp_path, hidden_store="float32")
    rounded = _score(scored_model, tmp_path)  # the default: bfloat16 on disk
    assert os.listdir(tmp_path) == []  # every scratch file removed
    # A float32 store changes nothing: the same numbers, bit for bit, the same experts kept.
    for layer in range(3):
        assert exact.stats[layer].reap_sum == memory.stats[layer].reap_sum
    assert exact.kept == memory.kept
    # bfloat16 between layers: layer 0 sees the (bfloat16) embeddings either way, so it is exact;
    # later layers move by bfloat16 rounding only (a token on a routing tie may flip to its
    # runner-up expert), and rank the experts the same.
    assert rounded.stats[0].reap_sum == memory.stats[0].reap_sum
    for layer in (1, 2):
        ours, reference = rounded.stats[layer], memory.stats[layer]
        assert sum(ours.count) == sum(reference.count)
        assert max(abs(a - b) for a, b in zip(ours.count, reference.count, strict=True)) <= 2
        assert rounded.scores()[layer] == pytest.approx(memory.scores()[layer], rel=5e-2)
        assert rounded.scores()[layer] != memory.scores()[layer]  # the store did round

        def ranking(scores: list[float]) -> list[int]:
            return sorted(range(len(scores)), key=lambda e: -scores[e])

        assert ranking(rounded.scores()[layer]) == ranking(memory.scores()[layer])
    assert rounded.kept == memory.kept


def test_scratch_is_removed_when_scoring_fails(scored_model: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexError):  # a token id past the vocabulary fails while embedding, after the store opened
        _score(scored_model, tmp_path, tokens=[[3, 4, 5], [3, 10**6]])
    assert os.listdir(tmp_path) == []
