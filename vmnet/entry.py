"""Console entry point.  Imports as little as possible before dispatching."""

from __future__ import annotations


def main() -> None:
    from vmnet.cli import main as cli_main

    cli_main()
