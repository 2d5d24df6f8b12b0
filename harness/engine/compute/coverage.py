"""Coverage predicted before serving: the router gate mass each calibration dataset loses to pruning.

Why: REAP scoring already routes every calibration token through every sparse layer's router. Split
by the dataset each token came from, the served top-k weights tell, before any GPU time is spent
serving, whether one kind of input (tool calls, say) had most of its expert mass on experts the
prune drops, while the mix as a whole looks fine. Each dataset of the mix is one domain, named by
its label.

:class:`DomainMass` accumulates during scoring (one per sparse layer, ``[domains, experts]`` in
float64, like the REAP sums); :func:`measure_coverage` turns it and the kept experts into the
``coverage`` record of ``pruning.json`` (:class:`bench.pruning_record.CoverageRecord`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.errors import UserError
from bench.pruning_record import CoverageRecord, DomainCoverage

if TYPE_CHECKING:
    import torch

# A domain is flagged once it loses most (over half) of its gate mass. Lower defaults flag every
# domain of an ordinary 50% prune: on the SmolLM2 MoE (8 experts, top-2, evenly routed) keeping 4
# cost each local-sample domain 48.8-49.0%, about the share of experts dropped.
DEFAULT_COVERAGE_WARN = 0.5


@dataclass
class DomainMass:
    """One sparse layer's served gate mass, per calibration domain and expert, summed in float64.

    The scoring loop sets ``current`` to the domain of the sequence it runs next; the experts'
    forward calls :meth:`add` with the top-k routing it is given.
    """

    n_domains: int
    n_experts: int
    tokens: list[int] = field(default_factory=list)
    current: int = 0
    _mass: torch.Tensor | None = None  # [domains, experts], made on the routing's device at first use

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = [0] * self.n_domains

    def add(self, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> None:
        """Add one sequence's routing: ``[tokens, top_k]`` expert ids and their served weights."""
        import torch

        if self._mass is None:
            self._mass = torch.zeros((self.n_domains, self.n_experts), dtype=torch.float64,
                                     device=top_k_weights.device)
        self._mass[self.current].index_add_(0, top_k_index.reshape(-1), top_k_weights.reshape(-1).double())
        self.tokens[self.current] += int(top_k_index.shape[0])

    def mass(self) -> list[list[float]]:
        """``[domain][expert]`` summed gate weights (zeros before any token was routed)."""
        if self._mass is None:
            return [[0.0] * self.n_experts for _ in range(self.n_domains)]
        return [[float(v) for v in row] for row in self._mass.cpu().tolist()]


def sample_domains(per_dataset: Mapping[str, int], n_samples: int) -> list[int] | None:
    """Each sample's domain index, samples being in dataset order; None when the counts do not add up.

    They do not when two datasets of a mix share a label (the second count replaces the first).
    """
    if sum(per_dataset.values()) != n_samples:
        return None
    return [index for index, count in enumerate(per_dataset.values()) for _ in range(count)]


def dropped_share(mass: Sequence[float], kept: Sequence[int]) -> float:
    """Share of the gate mass on experts outside ``kept``; 0 when there is no mass at all."""
    total = sum(mass)
    if total <= 0:
        return 0.0
    keep = set(kept)
    dropped = sum(value for expert, value in enumerate(mass) if expert not in keep)
    return min(max(dropped / total, 0.0), 1.0)


def measure_coverage(masses: Mapping[int, DomainMass], kept: Mapping[int, Sequence[int]],
                     per_dataset: Mapping[str, int], threshold: float) -> CoverageRecord:
    """Per domain: the dropped share in each sparse layer, its mean over layers, and the worst layer.

    ``masses`` and ``kept`` are keyed by decoder layer index; layers are taken in index order.
    """
    check_threshold(threshold)
    layers = sorted(masses)
    if not layers:
        raise ValueError("coverage needs at least one scored sparse layer")
    per_layer = {layer: masses[layer].mass() for layer in layers}
    dropped_experts = [1 - len(set(kept[layer])) / masses[layer].n_experts for layer in layers]
    domains: dict[str, DomainCoverage] = {}
    for index, (label, samples) in enumerate(per_dataset.items()):
        shares = [dropped_share(per_layer[layer][index], kept[layer]) for layer in layers]
        worst = max(range(len(layers)), key=lambda i: shares[i])
        domains[label] = DomainCoverage(
            samples=samples,
            tokens=masses[layers[0]].tokens[index],
            dropped_mass_mean=round(sum(shares) / len(shares), 6),
            dropped_mass_max=round(shares[worst], 6),
            worst_layer=layers[worst],
            dropped_mass_per_layer=[round(share, 6) for share in shares],
        )
    return CoverageRecord(threshold=threshold, domains=domains,
                          dropped_experts_share=round(sum(dropped_experts) / len(dropped_experts), 6))


def check_threshold(threshold: float) -> None:
    """A coverage threshold is a share of gate mass."""
    if not 0 <= threshold <= 1:
        raise UserError(f"--coverage-warn {threshold} is not a share in [0, 1] (e.g. 0.5 flags a calibration "
                        "domain that loses over 50% of its router gate mass)")


def render_coverage(coverage: CoverageRecord) -> list[str]:
    """The coverage table ``bench prune`` prints, then one warning line per flagged domain."""
    flagged = set(coverage.flagged())
    width = max([len(label) for label in coverage.domains] + [6])
    layers = max((len(d.dropped_mass_per_layer) for d in coverage.domains.values()), default=0)
    lines = [
        "coverage: share of each calibration domain's router gate mass on dropped experts, mean over "
        f"{layers} MoE layers and the worst layer (the base loses 0%{_even_routing(coverage)}):",
        f"  {'domain':<{width}} {'samples':>7} {'tokens':>9} {'dropped':>8} {'worst layer':>18}",
    ]
    for label, domain in coverage.domains.items():
        worst = f"{domain.dropped_mass_max:.1%} (layer {domain.worst_layer})"
        mark = "  <- over threshold" if label in flagged else ""
        lines.append(f"  {label:<{width}} {domain.samples:>7} {domain.tokens:>9} {domain.dropped_mass_mean:>8.1%} "
                     f"{worst:>18}{mark}")
    return [*lines, *coverage.warnings()]


def _even_routing(coverage: CoverageRecord) -> str:
    if coverage.dropped_experts_share is None:
        return ""
    return f"; evenly spread routing would lose {coverage.dropped_experts_share:.1%}, the share of experts dropped"
