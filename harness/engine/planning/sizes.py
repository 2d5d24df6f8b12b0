"""Byte counts as people read them, for the one-line summaries the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SizeReport:
    """Sizes of a conversion, for the one-line summary the CLI prints."""

    before_bytes: int
    after_bytes: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.after_bytes / self.before_bytes if self.before_bytes else float("nan")


def gib(n_bytes: float) -> str:
    return f"{n_bytes / (1 << 30):.3f} GiB" if n_bytes >= (1 << 28) else f"{n_bytes / (1 << 20):.2f} MiB"
