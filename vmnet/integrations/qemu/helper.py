"""`vmnet-bridge-helper`: a drop-in for QEMU's qemu-bridge-helper, with no setuid bit.

QEMU runs a bridge helper for `-netdev bridge,br=BR,helper=PATH` (and libvirt's
session mode for `<interface type='bridge'>`) as

    PATH [--use-vnet] --br=BR --fd=N

with N one end of a socketpair, and reads the tap's fd from it (SCM_RIGHTS, one
byte of data), then the helper's exit status.  This helper asks vmnetd for the
tap: the daemon checks the bridge against the network's `allow_users` /
`allow_groups` (SO_PEERCRED says who asks), brings it up through the engine as
`vmnet run` does (a VM record named helper-<hash>, mode "run", its holder the
QEMU that started the helper), opens the tap with persist cleared, so the tap
goes when QEMU does, and passes the fd back; the helper forwards it to QEMU.
Without a daemon, root opens the tap in-process (the same code); a user gets
one line saying to start vmnetd.
"""

from __future__ import annotations

import os
import sys

from vmnet.errors import InputError, PrivilegeError, VmnetError
from vmnet.model.names import sha256
from vmnet.model.value import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from vmnet.daemon.policy import Policy

PROG = "vmnet-bridge-helper"
USAGE = f"usage: {PROG} [--use-vnet] --br=BRIDGE --fd=UNIXFD"
PREFIX = "vmh"  # tap names: vmh + 10 hex digits of a hash (13 characters)


class HelperArgs(Value):
    __slots__ = ("bridge", "fd", "vnet_hdr")

    def __init__(self, bridge: str, fd: int | None, vnet_hdr: bool) -> None:
        self.bridge = bridge
        self.fd = fd
        self.vnet_hdr = vnet_hdr


def parse(argv: Sequence[str]) -> HelperArgs:
    """qemu-bridge-helper's command line (its own parser takes these three)."""
    from vmnet.model import validate

    bridge = None
    fd = None
    vnet = False
    for a in argv:
        if a == "--use-vnet":
            vnet = True
        elif a.startswith("--br="):
            bridge = validate.ifname(a[5:], "--br")
        elif a.startswith("--fd="):
            fd = validate.integer(a[5:], "--fd", 0, 1 << 20)
        else:
            raise InputError(f"unknown argument {a!r} ({USAGE})")
    if bridge is None:
        raise InputError(f"--br= is required ({USAGE})")
    return HelperArgs(bridge, fd, vnet)


def _qemu_of(pid: int, uid: int) -> int:
    """The process the tap is for: the helper's parent (QEMU) when it is the same user's,
    else the helper itself."""
    from vmnet.state.files import proc_parent, proc_uid

    ppid = proc_parent(pid)
    return ppid if ppid is not None and ppid > 1 and proc_uid(ppid) == uid else pid


def open_tap(policy: Policy, argv: Sequence[str], state_dir: str, config: str | None) -> int:
    """The tap for one helper call, up on its bridge, opened with persist cleared: its fd."""
    from vmnet.config import load_config
    from vmnet.engine.context import Context
    from vmnet.integrations.qemu import run as qrun
    from vmnet.model import Network, Nic, Vm, default_mac
    from vmnet.state.records import Proc

    args = parse(argv)
    peer = policy.peer
    cfg = load_config(config, env={}, cache_dir=state_dir)
    net = next((n for n in cfg.networks.values() if n.bridge == args.bridge), None)
    if net is None:
        if not peer.root:
            raise policy.refuse_network(cfg, Network(name=args.bridge, bridge=args.bridge))
        net = Network(name=args.bridge, bridge=args.bridge)
    qemu_pid = _qemu_of(peer.pid, peer.uid)
    holder = Proc.of(qemu_pid) or Proc(qemu_pid, 0)
    tag = sha256(f"{peer.uid}:{holder.pid}:{holder.start}:{os.urandom(4).hex()}".encode()
                 ).hexdigest()[:10]
    name = f"helper-{tag}"
    vm = Vm(name, uid=peer.uid, gid=None, user=None, nics=(Nic(
        0, net, tap=f"{PREFIX}{tag}", mac=default_mac(name, 0, cfg.mac_scheme),
        vnet_hdr=args.vnet_hdr),))
    ctx = Context(state_dir=state_dir).use_config(cfg)
    try:
        if not peer.root:
            policy.check_vm(cfg, vm, None, ctx.store())
        _, fds, _ = qrun.lease(ctx, vm, holder, vhost=False)
    finally:
        ctx.close()
    return fds[0][0]


def send_fd(sock_fd: int, fd: int) -> None:
    """Hand `fd` to QEMU over its socketpair end, as qemu-bridge-helper does."""
    import _socket

    from vmnet.daemon.client import rights

    s = _socket.socket(fileno=os.dup(sock_fd))
    try:
        s.sendmsg([b"\0"], rights([fd]))
    finally:
        s.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Process entry point of `vmnet-bridge-helper` (QEMU reads our exit status)."""
    from vmnet.consts import DEFAULT_STATE_DIR, STATE_DIR_ENV

    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in in (["--help"], ["-h"]):
        sys.stdout.write(USAGE + "\n")
        return 0
    env = os.environ
    try:
        args = parse(args_in)
        if args.fd is None:
            raise InputError(f"--fd= is required ({USAGE})")
        state_dir = env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
        from vmnet.daemon.client import call

        got = call(state_dir, "helper", args_in, env)
        if got is None:
            if os.geteuid() != 0:
                raise PrivilegeError(f"vmnetd is not running on {state_dir}/vmnetd.sock",
                                     hint="start it as root (`vmnetd`, or the vmnetd.socket "
                                          "unit): it opens the tap for users without root")
            from vmnet.daemon.policy import Peer, Policy

            me = Policy(Peer(os.getpid(), 0, os.getgid()), state_dir, None)
            fd = open_tap(me, args_in, state_dir, env.get("VMNET_CONFIG"))
        else:
            reply, fds = got
            if reply.get("rc") != 0 or len(fds) != 1:
                for x in fds:
                    os.close(x)
                err = reply.get("err")
                text = err if isinstance(err, str) and err else "vmnet: error: vmnetd sent no tap\n"
                # the daemon speaks as vmnet; QEMU shows our name
                sys.stderr.write("".join(f"{PROG}: {line.removeprefix('vmnet: ')}\n"
                                         for line in text.splitlines()))
                rc = reply.get("rc")
                return rc if isinstance(rc, int) and rc else 1
            fd = fds[0]
        try:
            send_fd(args.fd, fd)
        finally:
            os.close(fd)
    except VmnetError as e:
        sys.stderr.write(f"{PROG}: error: {e.one_line()}\n")
        return e.exit_code
    except OSError as e:
        sys.stderr.write(f"{PROG}: error: cannot pass the tap to QEMU: {e.strerror}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
