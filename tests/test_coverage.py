"""Coverage predicted before serving: per calibration domain, the router gate mass a prune removes."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from candidate_tables import write_pruning
from rundirs import write_run

from bench.compare.rundata import load_run
from bench.errors import UserError
from bench.pruning_record import coverage_warnings, read_pruning
from bench.report import html as report
from bench.run.checkpoint_facts import copy_checkpoint_facts

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("single_thread")]
torch = pytest.importorskip("torch")

from engine_tiny import build_tiny, single_thread  # noqa: E402,F401

from bench.engine.compute.coverage import DomainMass, measure_coverage, sample_domains  # noqa: E402
from bench.engine.compute.prune import prune_checkpoint  # noqa: E402
from bench.engine.planning.calibration import Mix, build_samples  # noqa: E402
from bench.engine.planning.prune_plan import PruneOptions  # noqa: E402

HOSTILE = "<script>alert('cov')</script>&\"tools\""
TEXTS = {
    "code": [f"def f{i}(x):\n    return x * {i}  # numpy for i in range(10)" for i in range(5)],
    "prose": [f"The quick brown fox {i} jumps over the lazy dog. Mixture of experts models route tokens." for i in range(4)],
    HOSTILE: ['{"name": "get_weather", "arguments": {"city": "Paris"}} ' * (i + 1) for i in range(3)],
}


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> Mix:
    """Three local text datasets of different content, one labelled with markup."""
    root = tmp_path_factory.mktemp("coverage-data")
    datasets = []
    for index, (label, lines) in enumerate(TEXTS.items()):
        path = root / f"d{index}.jsonl"
        path.write_text("\n".join(json.dumps({"text": line}) for line in lines) + "\n")
        datasets.append({"adapter": "text", "name": label, "count": len(lines), "data_files": str(path)})
    return Mix(name="coverage-mix", seq_len=48, samples=12, datasets=datasets)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("coverage-model") / "src", "qwen3_moe", layers=2)


@pytest.fixture(scope="module")
def pruned(tiny: Path, mix: Mix, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Half the experts kept, every domain flagged (threshold 0.0001); unpruned inputs, as transformers runs."""
    out = tmp_path_factory.mktemp("coverage-pruned") / "out"
    prune_checkpoint(tiny, out, mix, PruneOptions(keep=4, propagate="unpruned"), coverage_warn=0.0001)
    return out


def test_domain_mass_splits_routing_by_domain() -> None:
    """Hand-made routing: domain 0 sits on experts 0 and 1, domain 1 on 2 and 3 (0.7 / 0.3 each)."""
    masses = {}
    for layer, (a, b) in {3: ((0, 1), (2, 3)), 5: ((1, 0), (3, 2))}.items():
        mass = DomainMass(n_domains=2, n_experts=4)
        for domain, pair in enumerate((a, b)):
            mass.current = domain
            mass.add(torch.tensor([list(pair)] * 5), torch.tensor([[0.7, 0.3]] * 5))
        masses[layer] = mass
    assert masses[3].mass()[0] == pytest.approx([3.5, 1.5, 0.0, 0.0])
    assert masses[3].tokens == [5, 5]
    coverage = measure_coverage(masses, {3: [2, 3], 5: [1, 2, 3]}, {"a": 1, "b": 1}, threshold=0.5)
    a, b = coverage.domains["a"], coverage.domains["b"]
    assert a.dropped_mass_per_layer == [1.0, pytest.approx(0.3)]  # layer 5 drops only expert 0: 0.3 of a's mass
    assert (a.dropped_mass_mean, a.dropped_mass_max, a.worst_layer) == (pytest.approx(0.65), 1.0, 3)
    assert b.dropped_mass_per_layer == [0.0, 0.0] and b.dropped_mass_mean == 0.0
    assert coverage.dropped_experts_share == pytest.approx((0.5 + 0.25) / 2)  # 2 of 4, then 1 of 4 dropped
    assert coverage.flagged() == ["a"] and len(coverage.warnings()) == 1 and "'a' loses 65.0%" in coverage.warnings()[0]
    keep_all = measure_coverage(masses, {3: [0, 1, 2, 3], 5: [0, 1, 2, 3]}, {"a": 1, "b": 1}, threshold=0.0)
    assert all(d.dropped_mass_max == 0.0 for d in keep_all.domains.values()) and keep_all.flagged() == []


def test_sample_domains_follow_dataset_order() -> None:
    assert sample_domains({"x": 2, "y": 1}, 3) == [0, 0, 1]
    assert sample_domains({"x": 2}, 3) is None  # a label shared by two datasets lost a count


def test_recorded_shares_match_transformers_own_routing(tiny: Path, mix: Mix, pruned: Path) -> None:
    """Recompute each domain's dropped share from the router of the model transformers loads."""
    from transformers import AutoModelForCausalLM

    record = json.loads((pruned / "pruning.json").read_text())
    coverage = record["coverage"]
    samples = build_samples(mix, tiny)
    labels = list(samples.per_dataset)
    assert list(coverage["domains"]) == labels == list(TEXTS)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    routed: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {0: [], 1: []}
    for layer in routed:
        def keep(_module, _inputs, output, layer=layer):  # type: ignore[no-untyped-def]
            routed[layer].append((output[2], output[1]))  # (top-k ids, served top-k weights)
        model.model.layers[layer].mlp.gate.register_forward_hook(keep)
    with torch.inference_mode():
        for ids in samples.token_ids:
            model(torch.tensor([ids]))
    bounds, start = {}, 0
    for label, count in samples.per_dataset.items():
        bounds[label] = range(start, start + count)
        start += count
    for layer_record in record["layers"]:
        layer, kept = layer_record["layer"], set(layer_record["kept"])
        for label in labels:
            total = dropped = 0.0
            for sample in bounds[label]:
                index, weights = routed[layer][sample]
                total += float(weights.double().sum())
                dropped += sum(float(w) for e, w in zip(index.flatten().tolist(), weights.flatten().tolist(), strict=True)
                               if e not in kept)
            share = coverage["domains"][label]["dropped_mass_per_layer"][layer]
            assert share == pytest.approx(dropped / total, abs=1e-4), (label, layer)
    for label, domain in coverage["domains"].items():
        shares = domain["dropped_mass_per_layer"]
        assert all(0 <= s <= 1 for s in shares) and 0 < domain["dropped_mass_mean"] <= domain["dropped_mass_max"] <= 1
        assert domain["dropped_mass_mean"] == pytest.approx(sum(shares) / len(shares), abs=1e-6)
        assert domain["dropped_mass_max"] == max(shares) and shares[domain["worst_layer"]] == max(shares)
        assert domain["tokens"] == sum(len(samples.token_ids[i]) for i in bounds[label])
        assert domain["samples"] == len(TEXTS[label])


def test_domain_mass_adds_up_to_the_scoring_statistics(tiny: Path, mix: Mix) -> None:
    """Split by domain, the served gate mass sums to REAP's own per-expert gate sums, counted once.

    With pruned propagation each layer also runs pruned; only the scoring pass may count.
    """
    from bench.engine.compute.reap import score_experts
    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.moe import resolve

    checkpoint = Checkpoint.open(tiny)
    samples = build_samples(mix, tiny)
    domains = sample_domains(samples.per_dataset, len(samples.token_ids))
    scoring = score_experts(checkpoint, resolve(checkpoint), samples.token_ids, PruneOptions(keep=4), keep=4,
                            domains=domains)
    assert sorted(scoring.domain_mass) == sorted(scoring.stats) == [0, 1]
    for layer, stats in scoring.stats.items():
        mass = scoring.domain_mass[layer]
        assert sum(mass.tokens) == stats.tokens == samples.n_tokens
        per_expert = [sum(row[e] for row in mass.mass()) for e in range(8)]
        assert per_expert == pytest.approx(stats.gate_sum, rel=1e-9)
        assert sum(per_expert) == pytest.approx(stats.tokens, rel=1e-5)  # norm_topk_prob: each token carries 1


def test_keeping_every_expert_drops_nothing(tiny: Path, mix: Mix, tmp_path: Path) -> None:
    result = prune_checkpoint(tiny, tmp_path / "all", mix, PruneOptions(keep=8), coverage_warn=0.0)
    assert result.coverage is not None and set(result.coverage.domains) == set(TEXTS)
    for domain in result.coverage.domains.values():
        assert domain.dropped_mass_per_layer == [0.0, 0.0] and domain.dropped_mass_max == 0.0
    assert result.coverage.flagged() == [] and result.coverage.dropped_experts_share == 0.0  # 0 passes no threshold
    assert read_pruning(tmp_path / "all" / "pruning.json").coverage == result.coverage


def test_bench_prune_prints_the_table_and_warns_only_over_the_threshold(tiny: Path, mix: Mix, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bench.cli import app

    mix_file = tmp_path / "mix.yaml"
    mix_file.write_text(yaml.safe_dump(mix.to_dict()))
    args = ["prune", "--model", str(tiny), "--calibration", str(mix_file), "--keep", "4"]
    low = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "low"), "--coverage-warn", "0.0001"])
    assert low.exit_code == 0, low.output
    warnings = [line for line in low.output.splitlines() if line.startswith("warning: dead category")]
    assert len(warnings) == len(TEXTS)
    record = read_pruning(tmp_path / "low" / "pruning.json")
    assert record.coverage is not None and record.coverage.threshold == 0.0001
    worst = record.coverage.flagged()[0]
    assert warnings[0].startswith(f"warning: dead category: calibration domain {worst!r} loses "
                                  f"{record.coverage.domains[worst].dropped_mass_mean:.1%}")
    assert "threshold 0.01%" in warnings[0] and "evenly spread routing would lose 50.0%" in low.output
    assert low.output.index("coverage: share of each") < low.output.index("kept 4/8 experts")

    high = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "high"), "--coverage-warn", "0.99"])
    assert high.exit_code == 0, high.output
    assert "coverage: share of each" in high.output and "dead category" not in high.output
    assert all(label in high.output for label in TEXTS)

    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad"), "--coverage-warn", "30"])
    assert bad.exit_code != 0 and isinstance(bad.exception, UserError)
    assert "--coverage-warn 30.0 is not a share in [0, 1]" in str(bad.exception)
    assert not (tmp_path / "bad").exists()


class _Coverage(HTMLParser):
    """Text of every cell of the report's coverage tables, row by row, and whether a row is flagged."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._inside = self._body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and "coverage" in (dict(attrs).get("class") or ""):
            self._inside = True
        elif self._inside and tag == "tbody":
            self._body = True
        elif self._body and tag == "tr":
            self.rows.append([])
        elif self._body and tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._inside = self._body = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_report_shows_the_coverage_table_escaped(pruned: Path, tmp_path: Path) -> None:
    record = read_pruning(pruned / "pruning.json")
    assert record.coverage is not None
    run = write_run(tmp_path, "pruned-run", n_per_pack=10)
    copy_checkpoint_facts(pruned, run)
    html = report.render_report([load_run(run)])
    assert "<script>alert('cov')" not in html and "&lt;script&gt;alert(" in html
    parser = _Coverage()
    parser.feed(html)
    assert [row[0] for row in parser.rows] == [f"{label} dead category" for label in TEXTS]  # all over 0.01%
    for row, domain in zip(parser.rows, record.coverage.domains.values(), strict=True):
        assert row[1:] == [str(domain.samples), str(domain.tokens), f"{domain.dropped_mass_mean * 100:.1f}%",
                           f"{domain.dropped_mass_max * 100:.1f}% (layer {domain.worst_layer})"]
    assert "Flagged above 0.01%." in html
    # A cached loop step repeats the same warnings from the stored record.
    assert coverage_warnings(pruned / "pruning.json") == record.coverage.warnings() != []


def test_records_without_coverage_still_load_and_render(tmp_path: Path) -> None:
    old = write_pruning(tmp_path / "old-ckpt", layers=2, experts=6, keep=3)
    assert read_pruning(old).coverage is None and coverage_warnings(old) == []
    run = write_run(tmp_path, "old-run", n_per_pack=10)
    copy_checkpoint_facts(old.parent, run)
    html = report.render_report([load_run(run)])
    assert 'id="pruning"' in html and "<summary><code>old-run</code> " in html
    assert 'class="data coverage"' not in html and "dead category" not in html
    (tmp_path / "broken.json").write_text("{")
    assert coverage_warnings(tmp_path / "broken.json") == []
