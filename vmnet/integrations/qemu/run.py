"""`vmnet run`: bring a VM's network up, start QEMU on ready tap fds, tear down after.

The order matters and each step says why:

1. Refusals first (QEMU binary missing; in `ops.up`, a tap held by someone):
   nothing changed.
2. `ops.up` in mode "run", with vmnet itself as the holder until QEMU exists,
   so a `vmnet run` killed before QEMU starts leaves a record `gc` clears.
3. Under the state lock again, check carrier and open one fd per queue.  A
   multi-queue tap silently accepts a second holder, so carrier (someone
   holds an fd) is the only guard; the lock keeps two `run`s from both
   passing it.  Persist is cleared on the attached fds: from then on the
   kernel deletes the tap when the last fd closes, so the tap dies with QEMU
   even if vmnet is SIGKILLed.
4. QEMU inherits the fds (`pass_fds`), runs as the VM's user, and is
   recorded as the holder; vmnet closes its own copies at once.
5. Signals are forwarded; when QEMU exits, for whatever reason, the network
   is torn down (`ops.down`, force) and QEMU's status is returned.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType

from vmnet import log
from vmnet.config import resolve_user
from vmnet.engine import ops
from vmnet.engine.context import Context
from vmnet.engine.holders import tap_holders
from vmnet.errors import BusyError, InputError, NotFoundError, VmnetError
from vmnet.kernel import tun
from vmnet.kernel.base import LinkInfo
from vmnet.model import Vm
from vmnet.model.value import Value
from vmnet.render.qemu import vm_args
from vmnet.state.records import Proc

VHOST_PATH = "/dev/vhost-net"
NOBODY = 65534  # nobody/nogroup: who QEMU runs as when the VM names no user
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

Fds = dict[int, list[int]]  # NIC index -> fds, one per queue


class Identity(Value):
    """Whom QEMU runs as."""

    __slots__ = ("gid", "groups", "uid")

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...]) -> None:
        self.uid = uid
        self.gid = gid
        self.groups = groups


def qemu_identity(vm: Vm, env: Mapping[str, str], *, euid: int | None = None) -> Identity | None:
    """The VM's user, with its primary group and supplementary groups; None: keep ours.

    A VM owned by root runs as root (asked for explicitly).  A VM with only a
    group runs as the sudo user, else as nobody, with that group: never as
    root by accident.  Without root, vmnet cannot switch users and QEMU is not
    root anyway.
    """
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    uid = vm.uid
    if uid is None:
        sudo = env.get("SUDO_USER")
        uid = resolve_user(sudo, "SUDO_USER")[0] if sudo and sudo != "root" else NOBODY
    if uid == 0:
        return None
    try:
        pw: pwd.struct_passwd | None = pwd.getpwuid(uid)
    except KeyError:
        pw = None
    gid = vm.gid if vm.gid is not None else (pw.pw_gid if pw else NOBODY)
    groups = set(os.getgrouplist(pw.pw_name, gid)) if pw else {gid}
    if vm.gid is not None:
        groups.add(vm.gid)
    return Identity(uid=uid, gid=gid, groups=tuple(sorted(groups)))


def find_binary(argv0: str, env: Mapping[str, str]) -> str:
    """The executable QEMU's argv[0] names (PATH lookup as exec would do)."""
    if "/" in argv0:
        if os.path.isfile(argv0) and os.access(argv0, os.X_OK):
            return argv0
        raise NotFoundError(f"QEMU binary {argv0} does not exist or is not executable",
                            hint="install qemu-system-x86 or fix the path after `--`")
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise NotFoundError(f"QEMU binary {argv0!r} not found in PATH",
                            hint="install qemu-system-x86 or give the full path after `--`")
    return found


def refuse_held(vm: Vm, links: dict[str, LinkInfo | None]) -> None:
    """A tap with carrier has a holder; a multi-queue tap would accept us silently."""
    held = {n.tap for n in vm.nics if (lk := links.get(n.tap)) is not None and lk.carrier}
    if not held:
        return
    who = tap_holders(held)
    tap = sorted(held)[0]
    by = ", ".join(who.get(tap, [])) or "another process"
    raise BusyError(f"tap {tap} of VM {vm.name!r} is already held by {by}", ifname=tap,
                    hint="is the VM already running? stop it first; vmnet never attaches "
                         "a second QEMU to a tap")


def open_vhost(path: str, count: int) -> list[int]:
    """One /dev/vhost-net fd per queue, or none when the device is missing or refused.

    QEMU 7.2 aborts on vhost=on without the device, so vhost is only asked for
    with fds in hand.
    """
    if not os.path.exists(path):
        return []
    fds: list[int] = []
    try:
        for _ in range(count):
            fds.append(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        log.warning(f"{path}: {errno.errorcode.get(e.errno or 0, e.strerror)}; starting QEMU "
                    "without vhost")
        close_fds(fds)
        return []
    return fds


def close_fds(*groups: Sequence[int] | Fds) -> None:
    for g in groups:
        for fd in (f for fs in g.values() for f in fs) if isinstance(g, dict) else g:
            with contextlib.suppress(OSError):
                os.close(fd)


def attach(ctx: Context, vm: Vm, *, vhost_path: str = VHOST_PATH,
           unpersist: bool = True, vhost: bool = True) -> tuple[Fds, Fds]:
    """Open every NIC's queues (persist cleared unless the taps are borrowed from `up`)
    and, with `vhost`, vhost fds, under the state lock."""
    fds: Fds = {}
    vhost_fds: Fds = {}
    try:
        with ctx.store().locked(ctx.lock_timeout):
            k = ctx.kernel()
            refuse_held(vm, {n.tap: k.link(n.tap) for n in vm.nics})
            for nic in vm.nics:
                fds[nic.index] = tun.open_queues(nic.tap, nic.queues, vnet_hdr=nic.vnet_hdr,
                                                 path=ctx.tun_path, unpersist=unpersist)
                log.debug(f"{vm.name}: attached {nic.tap} (fds {fds[nic.index]})"
                          + (", persist cleared" if unpersist else ""))
        if vhost:
            vhost_fds = _vhost_fds(vm, vhost_path)
    except BaseException:
        close_fds(fds, vhost_fds)
        raise
    return fds, vhost_fds


def _vhost_fds(vm: Vm, vhost_path: str) -> Fds:
    if not os.path.exists(vhost_path):
        # Once per run, however many NICs: QEMU then moves every packet itself.
        log.warning(f"{vhost_path} is missing: QEMU moves the packets of "
                    f"{len(vm.nics)} NIC(s) in userspace (more CPU, lower throughput "
                    "than vhost-net); `modprobe vhost_net` if this kernel has it")
    vhost: Fds = {}
    try:
        for nic in vm.nics:
            got = open_vhost(vhost_path, nic.queues)
            if got:
                vhost[nic.index] = got
    except BaseException:
        close_fds(vhost)
        raise
    return vhost


def qemu_argv(vm: Vm, argv: Sequence[str], fds: Fds, vhost: Fds, *,
              netdev_only: bool = False) -> list[str]:
    """The user's QEMU command with the network options appended."""
    return [*argv, *vm_args(vm, fds=fds, vhostfds=vhost or None, netdev_only=netdev_only)]


def exit_status(returncode: int) -> int:
    """A shell's view of a child's status: 128+N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalForwarder:
    """Catch SIGTERM/SIGINT/SIGHUP; pass them on to QEMU while it runs."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.started = False

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = self.received or signum
        if self.child is not None:
            # send_signal polls first: a QEMU already reaped (pid maybe reused) is skipped
            self.child.send_signal(signum)

    def check(self) -> None:
        """Before QEMU runs, a signal means: give up (the caller tears down)."""
        if self.received is not None and not self.started:
            raise Interrupted(self.received)

    def attach(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        self.started = True
        if self.received is not None:
            child.send_signal(self.received)

    def detach(self) -> None:
        self.child = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalForwarder]:
        old = [(signum, signal.signal(signum, self._handle)) for signum in FORWARDED]
        try:
            yield self
        finally:
            for signum, handler in old:
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def set_holder(ctx: Context, name: str, holder: Proc) -> None:
    """Record QEMU as the holder of the VM's taps (gc clears the record once it is gone)."""
    store = ctx.store()
    with store.locked(ctx.lock_timeout):
        rec = store.get_vm(name)
        if rec is None:
            return
        rec.holder = holder
        store.put_vm(rec)


def teardown(ctx: Context, name: str, ours: set[Proc]) -> None:
    """Remove the VM's network unless another holder has taken the record over since, or
    a process still holds its taps (a child of QEMU kept the fds).  Then nothing is
    deleted: persist is cleared, so the kernel removes each tap with its last fd, and gc
    clears the record once they are gone."""
    rec = ctx.store().get_vm(name)
    if rec is not None and rec.holder is not None and rec.holder not in ours:
        log.warning(f"{name}: record now belongs to pid {rec.holder.pid}; leaving the "
                    "network to it")
        return
    if rec is not None:
        k = ctx.kernel()
        held = {n.tap for n in rec.nics if (lk := k.link(n.tap)) is not None and lk.carrier}
        if held:
            who = tap_holders(held)
            pids = ", ".join(sorted({p for t in held for p in who.get(t, [])})) or "a process"
            log.warning(f"{name}: QEMU exited but {', '.join(sorted(held))} still held by "
                        f"{pids}; nothing deleted (each tap goes with its last fd; `vmnet gc` "
                        "then clears the record)")
            return
    res = ops.down(ctx, name, force=True)
    log.debug(f"{name}: removed {', '.join(res.plan.taps) or 'network (taps already gone)'}")


def check_qemu_argv(argv: Sequence[str]) -> None:
    """Refuse a QEMU command `vmnet run` cannot follow (before anything changes)."""
    if not argv:
        raise InputError("no QEMU command given after `--`")
    if any(a in ("-daemonize", "--daemonize") for a in argv[1:]):
        raise InputError("vmnet run cannot follow a QEMU that daemonizes: it would tear the "
                         "network down as soon as QEMU's first process exits",
                         hint="drop -daemonize (run vmnet run itself in the background), or "
                              "`vmnet up VM` and start QEMU with `vmnet qemu-args VM`")


class Lease(Value):
    """A VM's network, taken for one QEMU: whether it was borrowed from `vmnet up` (then
    left as found) and which processes may hold it (vmnet's, then QEMU's)."""

    __slots__ = ("borrowed", "ours", "vm")

    def __init__(self, vm: str, borrowed: bool, ours: set[Proc]) -> None:
        self.vm = vm
        self.borrowed = borrowed
        self.ours = ours


def lease(ctx: Context, vm: Vm, holder: Proc, *, vhost_path: str = VHOST_PATH,
          vhost: bool = True) -> tuple[Lease, Fds, Fds]:
    """Bring the network up for one QEMU (`holder` holds it until QEMU does) and open its
    fds.  A VM that `vmnet up` made is borrowed: its taps and record stay as they are."""
    prev = ctx.store().get_vm(vm.name)
    borrowed = prev is not None and prev.mode == "up"
    got = Lease(vm.name, borrowed, {holder})
    if borrowed:
        ops.up(ctx, vm, mode="up", refuse_held=True)
    else:
        ops.up(ctx, vm, mode="run", holder=holder, refuse_held=True)
    try:
        fds, vhost_fds = attach(ctx, vm, vhost_path=vhost_path, unpersist=not borrowed,
                                vhost=vhost)
    except BaseException:
        release(ctx, got, None)
        raise
    return got, fds, vhost_fds


def hold(ctx: Context, got: Lease, qemu: Proc | None) -> None:
    """QEMU runs: it is the holder now (gc clears the record once it is gone)."""
    if qemu is not None and not got.borrowed:
        got.ours.add(qemu)
        set_holder(ctx, got.vm, qemu)


def release(ctx: Context, got: Lease, status: int | None) -> int:
    """QEMU exited with `status` (None: it never started): take the network down unless
    it was borrowed; a failed teardown is reported and turns status 0 into 1."""
    if got.borrowed:
        log.debug(f"{got.vm}: its taps stay, as `vmnet up` made them")
        return status or 0
    try:
        teardown(ctx, got.vm, got.ours)
    except VmnetError as e:
        log.error(f"{got.vm}: teardown failed: {e.one_line()}; `vmnet gc` finishes it")
        return status or 1
    return status or 0


def passed(*groups: Fds) -> tuple[int, ...]:
    return tuple(f for g in groups for fs in g.values() for f in fs)


def run(ctx: Context, vm: Vm, argv: Sequence[str], *, netdev_only: bool = False,
        vhost_path: str = VHOST_PATH, env: Mapping[str, str] | None = None) -> int:
    """Run QEMU (`argv`) on `vm`'s network; return its exit status (128+N if killed)."""
    env = dict(os.environ) if env is None else env
    check_qemu_argv(argv)
    exe = find_binary(argv[0], env)
    ident = qemu_identity(vm, env)
    with SignalForwarder().installed() as sig:
        got, fds, vhost = lease(ctx, vm, Proc.me(), vhost_path=vhost_path)
        try:
            try:
                sig.check()
                cmd = qemu_argv(vm, argv, fds, vhost, netdev_only=netdev_only)
                log.debug(f"starting {' '.join(cmd)}")
                proc = start(cmd, exe, passed(fds, vhost), ident)
            finally:
                close_fds(fds, vhost)  # QEMU has its own copies now (or nothing started)
            sig.attach(proc)
            hold(ctx, got, Proc.of(proc.pid))
            rc = proc.wait()
            sig.detach()
            log.debug(f"{vm.name}: QEMU (pid {proc.pid}) exited with status {exit_status(rc)}")
        except Interrupted as e:
            release(ctx, got, None)
            return 128 + e.signum
        except BaseException:
            release(ctx, got, None)
            raise
        return release(ctx, got, exit_status(rc))


def start(cmd: list[str], exe: str, fds: tuple[int, ...],
          ident: Identity | None) -> subprocess.Popen[bytes]:
    """QEMU, with `fds` inherited, as `ident` (None: as we are)."""
    try:
        if ident is None:
            return subprocess.Popen(cmd, executable=exe, pass_fds=fds)
        return subprocess.Popen(cmd, executable=exe, pass_fds=fds, user=ident.uid,
                                group=ident.gid, extra_groups=list(ident.groups))
    except OSError as e:
        raise VmnetError(f"cannot start {cmd[0]}: {e.strerror}", op="exec",
                         errno=e.errno) from None


def fd_base(count: int = 64) -> int:
    """A first fd number above every fd this process has, with room for `count` more:
    where a client puts the fds vmnetd sends, so the numbers it rendered hold."""
    try:
        top = max(int(n) for n in os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        top = 255
    return max(10, top + count + 1)


def run_through_daemon(argv: Sequence[str], env: Mapping[str, str]) -> int | None:
    """`vmnet run ...` with vmnetd holding the privilege: the daemon brings the network
    up and sends its fds; QEMU runs here, as this user; the daemon releases the network
    when QEMU exits or this process goes.  None: no daemon, run in-process."""
    from vmnet.daemon import client

    s = client.connect(client.state_dir_of(argv, env))
    if s is None:
        return None
    try:
        rest = list(argv[list(argv).index("--") + 1:]) if "--" in argv else []
        exe = find_binary(rest[0], env) if rest else ""
        base = fd_base(client.MAX_FDS)
        with SignalForwarder().installed() as sig:
            ns = client.own_netns()
            try:
                client.send(s, client.request("run", argv, env, extra={"fdbase": base}), ns)
            finally:
                close_fds(ns)
            reply, fds = client.receive(s)
            cmd = reply.get("argv")
            if reply.get("rc") != 0 or not isinstance(cmd, list):
                close_fds(fds)
                return client.print_reply(reply)
            client.print_reply({"err": reply.get("err"), "out": reply.get("out")})
            name = str(reply.get("vm"))
            placed = tuple(range(base, base + len(fds)))
            try:
                for fd, at in zip(fds, placed, strict=True):
                    os.dup2(fd, at)
                    os.close(fd)
                sig.check()
                ident = reply.get("ident")
                who = None if not isinstance(ident, list) else Identity(
                    int(str(ident[0])), int(str(ident[1])),
                    tuple(int(str(g)) for g in ident[2] or ()))  # type: ignore[union-attr]
                log.debug(f"starting {' '.join(str(a) for a in cmd)}")
                proc = start([str(a) for a in cmd], exe, placed, who)
            except Interrupted as e:
                return 128 + e.signum  # closing the connection releases the network
            finally:
                close_fds(placed)
            sig.attach(proc)
            try:
                client.send(s, {"started": proc.pid})
                client.receive(s, what="run")
            except (OSError, VmnetError):
                log.warning(f"vmnetd went away as QEMU started: the taps go with QEMU; "
                            f"`vmnet down {name}` then clears the record")
            rc = exit_status(proc.wait())
            sig.detach()
            try:
                client.send(s, {"exited": rc})
                done, _ = client.receive(s, what="run")
            except (OSError, VmnetError):
                log.warning(f"vmnetd went away while QEMU ran: its taps went with it; "
                            f"`vmnet down {name}` clears the record")
                return rc
            client.print_reply({"err": done.get("err"), "out": done.get("out")})
            got = done.get("rc")
            return got if isinstance(got, int) else 1
    finally:
        s.close()
