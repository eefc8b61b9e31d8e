"""Stage: evaluate, :mod:`mahtnet.commands.evaluate` (also ``mahtnet evaluate``; ``--help``)."""

from mahtnet.commands.evaluate import main
from mahtnet.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
