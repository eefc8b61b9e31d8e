"""Benchmark: :mod:`mahtnet.commands.benchmark` (also ``mahtnet benchmark``; ``--help`` for its arguments)."""

from mahtnet.commands.benchmark import main
from mahtnet.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
