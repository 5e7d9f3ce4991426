"""Process entry points of the QEMU ifup/ifdown scripts (`vmnet-qemu-ifup IFNAME`).

QEMU waits for the script before it starts the guest, so this door is light:
it asks vmnetd first (vmnet.daemon.client needs neither os nor the model) and
imports vmnet.integrations.qemu.ifup, which does the work in-process, only
when no daemon serves the state directory.
"""

# No `from __future__ import annotations` here: importing __future__ costs a door that
# vmnetd serves ~0.2 ms; annotations naming TYPE_CHECKING-only types are strings.

import sys

from vmnet.consts import DEFAULT_STATE_DIR, STATE_DIR_ENV

IFUP = "vmnet-qemu-ifup"
IFDOWN = "vmnet-qemu-ifdown"


def _main(prog: str, argv: list[str]) -> int:
    from vmnet.daemon.client import call, environ, exit_served, print_reply

    env = environ()
    try:
        got = call(env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR,
                   "ifup" if prog == IFUP else "ifdown", argv, env)
    except Exception as e:
        from vmnet.errors import VmnetError  # (only now: the door imports no more than it must)

        if not isinstance(e, VmnetError):
            raise
        sys.stderr.write(f"{prog}: error: {e.one_line()}\n")
        return e.exit_code
    if got is not None:
        import posix

        for fd in got[1]:
            posix.close(fd)
        exit_served(print_reply(got[0]))
    import os

    from vmnet.integrations.qemu import ifup

    return ifup.serve(prog, ifup.ifup if prog == IFUP else ifup.ifdown, argv, os.environ)


def main_ifup(argv: list[str] | None = None) -> None:
    """`vmnet-qemu-ifup IFNAME` (and scripts/qemu-ifup)."""
    sys.exit(_main(IFUP, sys.argv[1:] if argv is None else argv))


def main_ifdown(argv: list[str] | None = None) -> None:
    """`vmnet-qemu-ifdown IFNAME` (and scripts/qemu-ifdown)."""
    sys.exit(_main(IFDOWN, sys.argv[1:] if argv is None else argv))
