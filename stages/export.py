"""Stage: export: :mod:`mahtnet.commands.export` (also ``mahtnet export``; ``--help`` for its arguments)."""

from mahtnet.commands.export import main
from mahtnet.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
