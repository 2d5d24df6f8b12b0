"""The ``bench`` command line: parses arguments and calls library functions, nothing more.

Each command lives in its own module with a ``register(app)`` function. Heavy imports
(torch, datasets, vLLM clients) happen inside the command, so ``bench --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from bench.errors import UserError

app = typer.Typer(
    name="bench",
    help="Evaluate compressed MoE checkpoints behind a real vLLM server: run, gate, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per command group; each defines register(app).
COMMAND_MODULES = [
    "bench.cli.run",
    "bench.cli.gate",
    "bench.cli.engine",
    "bench.cli.candidate",
    "bench.cli.diverge",
]



@app.callback()
def _root() -> None:
    """Evaluate compressed MoE checkpoints behind a real vLLM server: run, gate, report."""


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)

def main() -> None:
    """Entry point: user mistakes print one line and exit non-zero, never a traceback."""
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
