"""What vmnetd does with one request: the same code as each door in-process.

`vmnet` command lines run through vmnet.cli.main.execute, the QEMU scripts
through vmnet.integrations.qemu.ifup, the libvirt hook through its `handle`,
`vmnet run` through vmnet.integrations.qemu.run's lease/hold/release and the
bridge helper through vmnet.integrations.qemu.helper.  Output is captured and
returned, so a client prints what the door would have printed and exits with
its status.  Each request runs in the peer's network namespace (root sends its
own as an fd; a user's is ignored: the daemon's) and gets the daemon's home
namespace, directory and settings back afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import traceback

from vmnet import log
from vmnet.config import users
from vmnet.daemon.client import MAX_FDS
from vmnet.daemon.policy import Peer, Policy
from vmnet.errors import InputError, PrivilegeError, VmnetError
from vmnet.kernel import netns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from vmnet.daemon.wire import Plain, Request
    from vmnet.engine.context import Context
    from vmnet.integrations.qemu.run import Lease

    Served = tuple[int, list[int], "Session | None", dict[str, Plain]]

MAX_FDBASE = 4096


class Session:
    """A `vmnet run` whose QEMU runs at the client: its lease, where it lives, who."""

    __slots__ = ("lease", "lock_timeout", "ns_fd", "peer", "state_dir")

    def __init__(self, lease: Lease, peer: Peer, state_dir: str, lock_timeout: float,
                 ns_fd: int) -> None:
        self.lease = lease
        self.peer = peer
        self.state_dir = state_dir
        self.lock_timeout = lock_timeout
        self.ns_fd = ns_fd


class Doors:
    def __init__(self, state_dir: str, config: str | None, verbose: bool = False) -> None:
        self.adopt: Callable[[], None] | None = None  # the watcher's, in each request's ns
        self.verbose = verbose  # one log line per request
        self.state_dir = state_dir
        self.config = config
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.home_inode = netns.current_inode()

    # -- one request --------------------------------------------------------------
    def serve(self, peer: Peer, req: Request, fds: list[int]
              ) -> tuple[dict[str, Plain], list[int], Session | None]:
        ns_fd = None
        if fds:
            ns_fd, rest = fds[0], fds[1:]
            for fd in rest:
                os.close(fd)
        handlers: dict[str, Callable[[Peer, Request], Served]] = {
            "vmnet": self._vmnet, "ifup": self._script, "ifdown": self._script,
            "hook": self._hook, "run": self._run, "helper": self._helper}

        def work() -> Served:
            if ns_fd is not None:
                if not peer.root or len(fds) > 1:
                    raise PrivilegeError("vmnetd takes a network namespace (one fd) from root "
                                         "only", hint="send no fds")
                netns.enter_fd(ns_fd)
            if peer.root:
                with contextlib.suppress(OSError):
                    os.chdir(req.cwd)
            return handlers[req.door](peer, req)

        t = time.monotonic()
        try:
            reply, out_fds, session = self._captured(work)
        finally:
            if ns_fd is not None:
                os.close(ns_fd)
        if self.verbose:
            sys.stderr.write(f"vmnetd: pid {peer.pid} uid {peer.uid}: {req.door} "
                             f"{' '.join(req.argv)[:120]} -> rc {reply.get('rc')!r} "
                             f"({(time.monotonic() - t) * 1000:.1f} ms)\n")
        return reply, out_fds, session

    def _captured(self, work: Callable[[], Served]
                  ) -> tuple[dict[str, Plain], list[int], Session | None]:
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        users.forget()  # the user database may have changed since the last request
        rc: int = 1
        fds: list[int] = []
        session: Session | None = None
        extra: dict[str, Plain] = {}
        try:
            rc, fds, session, extra = work()
        except VmnetError as e:
            err.write(f"vmnet: error: {e.one_line()}\n")
            rc = e.exit_code
        except SystemExit as e:  # a door that exits: its status, never the daemon's end
            rc = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # a bug: one line to the client, the trace to our log
            err.write(f"vmnet: internal error in vmnetd: {type(e).__name__}: {e}\n")
            saved[1].write(traceback.format_exc())
            rc = 1
        finally:
            sys.stdout, sys.stderr = saved
            log.set_verbose(False)
            if self.adopt is not None:
                self._adopt()
            self._home()
        return {"rc": rc, "out": out.getvalue(), "err": err.getvalue(), **extra}, fds, session

    def _adopt(self) -> None:
        assert self.adopt is not None
        try:
            self.adopt()
        except Exception:  # the watcher must never fail a request
            sys.stderr.write(traceback.format_exc())

    def _home(self) -> None:
        if netns.current_inode() != self.home_inode:
            netns.enter_fd(self.home)
        with contextlib.suppress(OSError):
            os.chdir("/")

    def _env(self, peer: Peer, req: Request) -> dict[str, str]:
        return req.env if peer.root else {}

    def _policy(self, peer: Peer) -> Policy:
        return Policy(peer, self.state_dir, self.config)

    # -- the doors ----------------------------------------------------------------
    def _vmnet(self, peer: Peer, req: Request) -> Served:
        from vmnet.cli.main import execute

        return execute(req.argv, self._env(peer, req), self._policy(peer)), [], None, {}

    def _script(self, peer: Peer, req: Request) -> Served:
        from vmnet.integrations.qemu import ifup

        env = dict(req.env)
        env["VMNET_STATE_DIR"] = self.state_dir
        # (a peer without root is refused by the script's own check, in its words)
        if req.door == "ifup":
            return ifup.serve(ifup.IFUP, ifup.ifup, req.argv, env, peer.root), [], None, {}
        return ifup.serve(ifup.IFDOWN, ifup.ifdown, req.argv, env, peer.root), [], None, {}

    def _hook(self, peer: Peer, req: Request) -> Served:
        from vmnet.integrations.libvirt import hook

        if not peer.root:
            raise PrivilegeError("the libvirt hook goes through vmnetd for root only")
        return hook.handle(req.argv, io.BytesIO(req.stdin or b"")), [], None, {}

    def _run(self, peer: Peer, req: Request) -> Served:
        """`vmnet run`: the network and its fds; QEMU runs at the client (as the peer, or
        as root names), which reports its pid and then its exit (session_event)."""
        from vmnet.cli import commands
        from vmnet.cli.main import setup
        from vmnet.integrations.qemu import run as qrun
        from vmnet.state.records import Proc

        env = self._env(peer, req)
        g, parsed = setup(req.argv, env, self._policy(peer))
        cmd = parsed.command
        if parsed.help is not None or cmd is None or cmd.path != ("run",):
            raise InputError("vmnetd's run door takes a `vmnet run VM -- QEMU...` command line")
        base = req.extra.get("fdbase")
        if not isinstance(base, int) or isinstance(base, bool) or not 3 <= base <= MAX_FDBASE:
            raise InputError(f"run: fdbase {base!r} is not in 3-{MAX_FDBASE}")
        if g.verbose:
            log.set_verbose(True)
        if g.netns:
            netns.enter(g.netns)
        values = parsed.values
        qemu = commands.qemu_command(values)
        vm = commands.recorded_vm(g, str(values["vm"]), values)
        count = sum(n.queues for n in vm.nics) * (2 if os.path.exists(qrun.VHOST_PATH) else 1)
        if count > MAX_FDS:
            raise InputError(f"VM {vm.name!r} needs {count} fds, over the {MAX_FDS} one "
                             "message can carry", hint="fewer queues, or run it as root "
                                                       "without vmnetd")
        ctx = g.context()
        try:
            got, fds, vhost = qrun.lease(ctx, vm, Proc.of(peer.pid) or Proc(peer.pid, 0))
        finally:
            ctx.close()
        order = [f for group in (fds, vhost) for i in sorted(group) for f in group[i]]
        at = {f: base + k for k, f in enumerate(order)}
        cmdline = qrun.qemu_argv(vm, qemu, {i: [at[f] for f in fs] for i, fs in fds.items()},
                                 {i: [at[f] for f in fs] for i, fs in vhost.items()},
                                 netdev_only=bool(values.get("netdev_only")))
        ident = qrun.qemu_identity(vm, env) if peer.root else None
        g.done()
        session = Session(got, peer, g.state_dir, g.lock_timeout,
                          os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        args: list[Plain] = list(cmdline)
        groups: list[Plain] = list(ident.groups) if ident is not None else []
        return 0, order, session, {
            "vm": vm.name, "argv": args,
            "ident": None if ident is None else [ident.uid, ident.gid, groups]}

    def _helper(self, peer: Peer, req: Request) -> Served:
        from vmnet.integrations.qemu import helper

        fd = helper.open_tap(self._policy(peer), req.argv, self.state_dir, self.config)
        return 0, [fd], None, {}

    # -- a `vmnet run` in progress ------------------------------------------------
    def session_event(self, session: Session, value: Plain
                      ) -> tuple[dict[str, Plain], list[int], bool]:
        """{"started": PID} once QEMU runs, {"exited": STATUS} when it is gone."""
        from vmnet.integrations.qemu import run as qrun
        from vmnet.state.records import Proc

        done = False

        def work() -> Served:
            nonlocal done
            if not isinstance(value, dict):
                raise InputError("a run session takes {started: PID} or {exited: STATUS}")
            netns.enter_fd(session.ns_fd)
            ctx = self._context(session)
            try:
                if "started" in value:
                    pid = value["started"]
                    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
                        raise InputError(f"started: {pid!r} is no pid")
                    qemu = Proc.of(pid)
                    if qemu is not None and _child_of(pid, session.peer):
                        qrun.hold(ctx, session.lease, qemu)
                    return 0, [], None, {}
                status = value.get("exited")
                if not isinstance(status, int) or isinstance(status, bool):
                    raise InputError(f"exited: {status!r} is no exit status")
                done = True
                self._close_session(session)
                return qrun.release(ctx, session.lease, status), [], None, {}
            finally:
                ctx.close()

        reply, fds, _ = self._captured(work)
        return reply, fds, done

    def end_session(self, session: Session, status: int | None) -> None:
        """The client went away: release the network as `vmnet run` would."""
        from vmnet.integrations.qemu import run as qrun

        def work() -> Served:
            netns.enter_fd(session.ns_fd)
            ctx = self._context(session)
            try:
                qrun.release(ctx, session.lease, status)
            finally:
                ctx.close()
                self._close_session(session)
            return 0, [], None, {}

        reply, _, _ = self._captured(work)
        if reply.get("err"):
            sys.stderr.write(str(reply["err"]))

    def _context(self, session: Session) -> Context:
        from vmnet.engine.context import Context

        return Context(state_dir=session.state_dir, lock_timeout=session.lock_timeout)

    def _close_session(self, session: Session) -> None:
        if session.ns_fd >= 0:
            os.close(session.ns_fd)
            session.ns_fd = -1


def _child_of(pid: int, peer: Peer) -> bool:
    """QEMU must be the peer's own child (root's: any process of root's choosing)."""
    from vmnet.state.files import proc_parent, proc_uid

    return peer.root or (proc_parent(pid) == peer.pid and proc_uid(pid) == peer.uid)
