"""The libvirt hook's process entry point (`vmnet-libvirt-hook`, and the file `vmnet hook
install` writes): vmnetd first, vmnet.integrations.libvirt.hook in-process only when no
daemon serves the state directory.

It sits beside the client rather than in vmnet.integrations.libvirt because libvirtd
waits for it at every domain event: those two packages and the hook's module cost
~0.3 ms to import, and vmnetd runs the hook's logic itself (vmnet.daemon.doors).  Here:
the few rules every call obeys before that logic runs (stdout to /dev/null, stdin read
with a bound, which calls have work) and the request.
"""

# No `from __future__ import annotations` here: importing __future__ costs a door that
# vmnetd serves ~0.2 ms; annotations naming TYPE_CHECKING-only types are strings.

import sys

from vmnet.consts import DEFAULT_STATE_DIR, MAX_XML_BYTES

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO

# (op, subop) pairs with work; libvirt 9.0 also calls start/started/stopped,
# reconnect, migrate, restore, attach: none of them concerns the taps.
PREPARE = ("prepare", "begin")
STARTED = ("started", "begin")  # QEMU runs: it becomes the holder of the domain's VMs
RELEASE = ("release", "end")


def route(argv: "Sequence[str]") -> tuple[str, tuple[str, str]]:
    """The state directory and (op, subop) of a call, read without validating anything
    (vmnet.integrations.libvirt.hook.parse_args does, wherever the call is handled)."""
    state_dir = DEFAULT_STATE_DIR
    pos: list[str] = []
    for arg in argv:
        if arg.startswith("--state-dir=") and not pos:
            state_dir = arg[len("--state-dir="):] or DEFAULT_STATE_DIR
        elif not (arg.startswith("--") and "=" in arg and not pos):
            pos.append(arg)
    return state_dir, (pos[1], pos[2]) if len(pos) >= 3 else ("", "")


def read_bounded(stream: "IO[bytes]", limit: int = MAX_XML_BYTES) -> bytes:
    """Read at most limit+1 bytes; more than `limit` is refused (not parsed)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        from vmnet.errors import InputError

        raise InputError(f"domain XML on stdin is larger than {limit >> 20} MiB; refused")
    return b"".join(chunks)


def say(line: str) -> None:
    """One line on stderr (libvirt shows it as the start's error), whitespace folded."""
    try:
        sys.stderr.write(" ".join(line.split()) + "\n")
        sys.stderr.flush()
    except OSError:
        pass


def main(argv: "Sequence[str] | None" = None) -> int:
    """Process entry point; one line on error.  Through vmnetd when one serves the state
    directory (the XML and this process's network namespace go with the request)."""
    # Nothing may reach stdout, whatever a library prints: libvirt may read
    # it as replacement XML.
    import posix  # (built in; os costs a millisecond for os.environ)

    try:
        devnull = posix.open("/dev/null", posix.O_WRONLY)
        posix.dup2(devnull, 1)
        posix.close(devnull)
    except OSError:
        pass
    args = sys.argv[1:] if argv is None else list(argv)
    stdin = sys.stdin.buffer
    try:
        state_dir, op = route(args)
        if op in (PREPARE, STARTED, RELEASE):
            data = read_bounded(stdin)
            from vmnet.daemon.client import call, environ, exit_served, print_reply

            got = call(state_dir, "hook", args, environ(), stdin=data)
            if got is not None:
                for fd in got[1]:
                    posix.close(fd)
                exit_served(print_reply(got[0]))
            import io

            stdin = io.BytesIO(data)
    except Exception as e:
        from vmnet.errors import VmnetError

        if not isinstance(e, VmnetError):
            raise
        say(f"vmnet: error: {e.one_line()}")
        return 1
    from vmnet.integrations.libvirt.hook import handle

    return handle(args, stdin)


if __name__ == "__main__":
    sys.exit(main())
