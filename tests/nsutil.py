"""Throwaway network namespaces for tests.

Every kernel test runs inside a namespace made here and deleted afterwards,
even when the test fails.  The host's own network is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any


def sh(*argv: str, check: bool = True,
       input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (never through a shell) and return its result."""
    return subprocess.run(list(argv), check=check, text=True, capture_output=True, input=input)


class Netns:
    """A named network namespace under /run/netns."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *argv: str, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *argv, check=check, input=input)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args, check=check)

    def links(self) -> dict[str, dict[str, Any]]:
        """What the kernel reports: `ip -d -j link`, keyed by name."""
        out = self.ip("-d", "-j", "link", "show").stdout
        return {link["ifname"]: link for link in json.loads(out)}

    def link(self, name: str) -> dict[str, Any] | None:
        return self.links().get(name)

    def addrs(self) -> list[dict[str, Any]]:
        return list(json.loads(self.ip("-j", "addr", "show").stdout))

    @property
    def inode(self) -> int:
        return os.stat(f"/run/netns/{self.name}").st_ino


@contextlib.contextmanager
def netns(prefix: str = "vmt") -> Iterator[Netns]:
    """Create a fresh namespace with lo up; always delete it."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    sh("ip", "netns", "add", name)
    try:
        ns = Netns(name)
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        # Kill anything we left running in it (only our own children live there).
        pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        sh("ip", "netns", "del", name, check=False)
