"""vmnet's log lines on stderr (stdlib logging costs milliseconds to import).

`-v` turns on debug lines: every kernel change as its `ip` equivalent.
Warnings always go to stderr.
"""

from __future__ import annotations

import sys

_verbose = False


def set_verbose(on: bool) -> None:
    global _verbose
    _verbose = on


def verbose() -> bool:
    return _verbose


def debug(msg: str) -> None:
    if _verbose:
        sys.stderr.write(f"vmnet: {msg}\n")


def warning(msg: str) -> None:
    sys.stderr.write(f"vmnet: warning: {msg}\n")


def error(msg: str) -> None:
    sys.stderr.write(f"vmnet: error: {msg}\n")
