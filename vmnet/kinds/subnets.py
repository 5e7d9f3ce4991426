"""The subnet of a nat/isolated network that names none: chosen once, kept for good.

The choice is the first 10.77.N.0/24 (then 10.78, ...) that overlaps no route
and no address of the namespace and no other vmnet network, kept in
`DATA_DIR/networks/<name>.json` (default /var/lib/vmnet: records in /run do
not survive a reboot, the subnet a user's guests and scripts know must).
"""

from __future__ import annotations

import os

from vmnet.errors import ConflictError, StateError
from vmnet.state.files import dumps, fname, loads, read_file, write_file

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Iterable

FORMAT = 1
CANDIDATES = 4096  # 10.77.0.0/24 .. 10.92.255.0/24


def as_int(ip: str) -> int:
    a, b, c, d = (int(x) for x in ip.split("."))
    return a << 24 | b << 16 | c << 8 | d


def as_ip(n: int) -> str:
    return f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def span(cidr: str) -> tuple[int, int]:
    """(first, last) address of the subnet of ADDRESS/PREFIX, as integers."""
    ip, _, plen = cidr.partition("/")
    size = 1 << (32 - int(plen or 32))
    first = as_int(ip) & ~(size - 1) & 0xFFFFFFFF
    return first, first + size - 1


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def path(data_dir: str, network: str) -> str:
    return os.path.join(data_dir, "networks", fname(network))


def recall(data_dir: str, network: str) -> str | None:
    """The address kept for `network`, None if none (or the file is no vmnet record)."""
    try:
        d = loads(read_file(path(data_dir, network)))
    except (OSError, ValueError):
        return None
    if isinstance(d, dict) and d.get("format") == FORMAT and d.get("network") == network \
            and isinstance(d.get("address"), str):
        return str(d["address"])
    return None


def keep(data_dir: str, network: str, address: str) -> None:
    d = os.path.join(data_dir, "networks")
    try:
        os.makedirs(d, mode=0o755, exist_ok=True)
    except OSError as e:
        raise StateError(f"cannot create {d}: {e.strerror}",
                         hint="set [defaults] data_dir to a directory root can write") from None
    write_file(path(data_dir, network), dumps({"format": FORMAT, "network": network,
                                               "address": address}))


def forget(data_dir: str, network: str) -> None:
    try:  # noqa: SIM105
        os.unlink(path(data_dir, network))
    except OSError:
        pass


def choose(taken: Iterable[tuple[str, tuple[int, int]]]) -> str:
    """The first candidate /24 that overlaps nothing in `taken` ((what, span) pairs)."""
    spans = [s for _, s in taken]
    for i in range(CANDIDATES):
        first = as_int(f"10.{77 + i // 256}.{i % 256}.0")
        cand = (first, first + 255)
        if not any(overlaps(cand, s) for s in spans):
            return f"{as_ip(first + 1)}/24"
    raise ConflictError("no free 10.77-10.92.x.0/24 subnet is left for a nat network",
                        hint="give the network an address in the config file")
