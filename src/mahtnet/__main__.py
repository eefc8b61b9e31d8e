"""``python -m mahtnet``: the ``mahtnet`` command."""

from mahtnet.cli import entry

entry()
