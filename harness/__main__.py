"""``python -m bench``: the command line."""

from bench.cli import main

main()
