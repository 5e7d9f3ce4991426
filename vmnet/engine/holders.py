"""Which processes hold a tap: /proc/PID/fdinfo/FD shows `iff:\tNAME` for tun fds."""

from __future__ import annotations

import os


def tap_holders(names: set[str], netns: int | None = None) -> dict[str, list[str]]:
    """Map tap name -> ['pid 123 (qemu-system-x86)', ...] for taps in `names`.

    fdinfo names a tap, not its namespace: only processes in network namespace `netns`
    (an inode; default: the one this process is in, where vmnet reads the taps) count,
    so a same-named tap in another namespace is not taken for ours (a holder in another
    namespace is then missed: its tap's carrier still tells, and callers say "a
    process")."""
    out: dict[str, list[str]] = {}
    if not names:
        return out
    if netns is None:
        from vmnet.kernel.netns import current_inode

        netns = current_inode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != netns:
                continue
        except OSError:
            continue
        fdinfo = f"/proc/{pid}/fdinfo"
        try:
            fds = os.listdir(fdinfo)
        except OSError:
            continue
        found: set[str] = set()
        for fd in fds:
            try:
                with open(f"{fdinfo}/{fd}", "rb") as f:
                    data = f.read(512)
            except OSError:
                continue
            i = data.find(b"iff:\t")
            if i < 0:
                continue
            name = data[i + 5:].split(b"\n", 1)[0].decode(errors="replace")
            if name in names:
                found.add(name)
        if found:
            for name in found:
                out.setdefault(name, []).append(who(pid))
    return out


def who(pid: int | str) -> str:
    """A process as vmnet names it in messages: `pid 123 (qemu-system-x86)`."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = "?"
    return f"pid {pid} ({comm})"
