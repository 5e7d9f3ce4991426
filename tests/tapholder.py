"""A process inside a test namespace that holds tap fds, as QEMU would.

Attaching to a name that does not exist creates a temporary (non-persistent)
tap, exactly what QEMU does with `ifname=` when the tap is missing; closing
the holder's stdin makes it exit and the kernel drop its fds.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

from tests.nsutil import Netns

IFF_TAP, IFF_NO_PI, IFF_MULTI_QUEUE = 0x0002, 0x1000, 0x0100

_HOLD = r"""
import fcntl, os, struct, sys
name, flags, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fds = []
try:
    for _ in range(count):
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), flags))  # TUNSETIFF
        fds.append(fd)
except OSError as e:
    print(f"error {e.errno}", flush=True)
    sys.exit(1)
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def hold_tap(ns: Netns, name: str, *, queues: int = 1,
             multi_queue: bool | None = None) -> Iterator[subprocess.Popen[str]]:
    """Hold `queues` fds on tap `name` (created, non-persistent, if missing) until exit."""
    mq = queues > 1 if multi_queue is None else multi_queue
    flags = IFF_TAP | IFF_NO_PI | (IFF_MULTI_QUEUE if mq else 0)
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", _HOLD, name,
                             str(flags), str(queues)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline().strip()
        if line != "held":
            raise RuntimeError(f"could not hold tap {name}: {line or 'holder died'}")
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
