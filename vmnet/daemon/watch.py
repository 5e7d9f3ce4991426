"""vmnetd's watcher: link events in every namespace that has vmnet records.

Two repairs, both through the engine's own operations:

- **Reaping.**  A recorded tap that loses its carrier (1 -> 0) or disappears, in a
  namespace, sets off `gc` there (vmnet.engine.ops.gc, exactly what `vmnet gc`
  does): a `run` VM whose QEMU is gone, a hook VM whose domain's QEMU is gone
  (libvirt asked, else the process table: vmnet.integrations.libvirt.probe), are
  torn down with their records.  gc keeps what is held (carrier, or a holder in
  /proc), idle `up` taps, and work in flight; `ip link set down` and the ifdown
  script leave the carrier of a held tap on, so they set off nothing.
- **Re-attach.**  A bridge the records use that appears with a new ifindex was
  deleted and re-created: vmnet.engine.repair.reattach brings its VMs up again as
  recorded.  The ifindex of each such bridge is kept in the namespace's
  watch.json, so a vmnetd restarted meanwhile sees what changed while it was away.

Work is debounced (DEBOUNCE) and retried when the namespace's lock is busy; every
namespace is swept by gc every SWEEP seconds too (an event lost to a receive
buffer overrun, or a QEMU that died without its taps changing).  Each action is
logged as its `ip` commands and kept in STATE_DIR/ns-<inode>/watch.json, which
`vmnet status` shows.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from vmnet.kernel import netns, rtnl
from vmnet.kernel.events import OVERRUN, LinkEvents
from vmnet.state.files import write_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vmnet.engine.context import Context

DEBOUNCE = 0.05  # seconds from an event to the work it sets off
RETRY = 0.25  # seconds before trying again when the namespace's lock is busy
SWEEP = 30.0  # seconds between gc sweeps of each namespace
LOCK_WAIT = 1.0  # seconds the watcher waits for a namespace's lock
KEEP = 20  # actions kept in watch.json
STATE_FILE = "watch.json"


class Watched:
    """One namespace: its fd, its event socket, what it knows of its links."""

    __slots__ = ("bridges", "carrier", "due", "events", "history", "inode", "names",
                 "ns_fd", "reap", "repair", "sweep_at")

    def __init__(self, inode: int, ns_fd: int, events: LinkEvents) -> None:
        self.inode = inode
        self.ns_fd = ns_fd
        self.events = events
        self.carrier: dict[int, bool] = {}  # ifindex -> carrier
        self.names: dict[int, tuple[str, str | None]] = {}  # ifindex -> (name, kind)
        self.bridges: dict[str, int] = {}  # bridge the records use -> ifindex last seen
        self.history: list[dict[str, object]] = []
        self.due: float | None = None
        self.reap = False
        self.repair: set[str] = set()
        self.sweep_at = time.monotonic() + SWEEP


class Watcher:
    def __init__(self, state_dir: str, config: str | None, home_fd: int,
                 register: Callable[[Watched], None],
                 unregister: Callable[[Watched], None], sweep: float = SWEEP) -> None:
        self.sweep = sweep
        self.state_dir = state_dir
        self.config = config
        self.home_fd = home_fd
        self.register = register
        self.unregister = unregister
        self.watched: dict[int, Watched] = {}

    # -- which namespaces ---------------------------------------------------------
    def _records_dir(self, inode: int) -> str:
        return os.path.join(self.state_dir, f"ns-{inode}")

    def adopt(self) -> None:
        """Watch the namespace this process is in now, if it has records (vmnetd calls
        this after each request, still in the request's namespace)."""
        inode = netns.current_inode()
        if inode in self.watched or not os.path.isdir(
                os.path.join(self._records_dir(inode), "vms")):
            return
        ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            events = LinkEvents()
        except OSError:
            os.close(ns_fd)
            return
        w = Watched(inode, ns_fd, events)
        w.sweep_at = time.monotonic() + self.sweep
        self.watched[inode] = w
        self.register(w)
        self._resync(w)
        w.reap = True  # what died while nobody watched
        w.due = time.monotonic()

    def discover(self) -> None:
        """At start: find a handle on every namespace that has records (named ones in
        /run/netns, else any process's), and watch it."""
        wanted = {int(n[3:]) for n in _listdir(self.state_dir)
                  if n.startswith("ns-") and n[3:].isdigit()}
        if not wanted:
            return
        found: dict[int, str] = {}
        candidates = [os.path.join(netns.NETNS_RUN_DIR, n)
                      for n in _listdir(netns.NETNS_RUN_DIR)]
        candidates += [f"/proc/{p}/ns/net" for p in _listdir("/proc") if p.isdigit()]
        for path in candidates:
            try:
                ino = os.stat(path).st_ino
            except OSError:
                continue
            if ino in wanted and ino not in found:
                found[ino] = path
                if len(found) == len(wanted):
                    break
        for path in found.values():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                netns.enter_fd(fd)
                self.adopt()
            finally:
                os.close(fd)
                netns.enter_fd(self.home_fd)

    def close(self) -> None:
        for w in list(self.watched.values()):
            self._drop(w)

    def _drop(self, w: Watched) -> None:
        self.unregister(w)
        w.events.close()
        os.close(w.ns_fd)
        self.watched.pop(w.inode, None)

    # -- events -------------------------------------------------------------------
    def _resync(self, w: Watched) -> None:
        """A fresh picture of the links (at adoption, after an overrun)."""
        from vmnet.kernel import open_kernel

        k = open_kernel()
        try:
            links = k.snapshot().links
        finally:
            k.close()
        w.carrier = {lk.index: lk.carrier for lk in links.values()}
        w.names = {lk.index: (lk.name, lk.kind) for lk in links.values()}
        saved = self._load(w)
        used = self._bridges_in_records(w)
        for name in used:
            lk = links.get(name)
            before = saved.get(name)
            if lk is None or lk.kind != "bridge":
                # gone now: when it comes back, whatever its ifindex, it is re-created
                w.bridges[name] = -1 if before is None else before
                continue
            if before is not None and before != lk.index:
                w.repair.add(name)  # re-created while nobody watched
            w.bridges[name] = lk.index

    def on_events(self, w: Watched) -> None:
        now = time.monotonic()
        for kind, f in w.events.read(0):
            if kind == OVERRUN:
                self._resync(w)
                w.reap = True
                w.due = now + DEBOUNCE
                continue
            index = int(str(f["index"]))
            name = str(f["name"])
            link_kind = f.get("kind")
            carrier = bool(f.get("carrier"))
            if kind == rtnl.RTM_DELLINK:
                w.carrier.pop(index, None)
                w.names.pop(index, None)
                if name in w.bridges and name not in self._bridges_in_records(w):
                    del w.bridges[name]  # released by vmnet: no repair when it comes back
                if self._is_recorded_tap(w, name):
                    w.reap = True
                    w.due = now + DEBOUNCE
                continue
            before = w.carrier.get(index)
            w.carrier[index] = carrier
            w.names[index] = (name, None if link_kind is None else str(link_kind))
            if before and not carrier and self._is_recorded_tap(w, name):
                w.reap = True
                w.due = now + DEBOUNCE
            if link_kind == "bridge":
                seen = w.bridges.get(name)
                if seen is not None and seen != index:
                    w.bridges[name] = index
                    w.repair.add(name)
                    w.due = now + DEBOUNCE
                elif seen is None and name in self._bridges_in_records(w):
                    w.bridges[name] = index

    def _is_recorded_tap(self, w: Watched, name: str) -> bool:
        return os.path.lexists(os.path.join(self._records_dir(w.inode), "taps", name))

    def _bridges_in_records(self, w: Watched) -> set[str]:
        d = os.path.join(self._records_dir(w.inode), "bridges")
        return {n[:-5] for n in _listdir(d) if n.endswith(".json")}

    # -- work -------------------------------------------------------------------------
    def next_due(self) -> float | None:
        times = [t for w in self.watched.values() for t in (w.due, w.sweep_at)
                 if t is not None]
        return min(times) if times else None

    def tick(self) -> None:
        now = time.monotonic()
        for w in list(self.watched.values()):
            if now >= w.sweep_at:
                if not _reachable(w.inode):
                    # Only our fds keep it alive (deleted, its processes gone): let it go,
                    # or its links would live on with us.
                    sys.stderr.write(f"vmnetd: watcher: namespace {w.inode} is gone; "
                                     "no longer watched\n")
                    self._drop(w)
                    continue
                w.reap = True
                w.due = now
                w.sweep_at = now + self.sweep
            if w.due is None or now < w.due:
                continue
            w.due = None
            try:
                netns.enter_fd(w.ns_fd)
                self._work(w)
            finally:
                netns.enter_fd(self.home_fd)
            if not os.path.isdir(os.path.join(self._records_dir(w.inode), "vms")):
                self._drop(w)  # nothing of vmnet's left there

    def _work(self, w: Watched) -> None:
        from vmnet.config import load_config
        from vmnet.engine import ops
        from vmnet.engine.context import Context
        from vmnet.engine.repair import reattach
        from vmnet.errors import BusyError, VmnetError
        from vmnet.integrations.libvirt.probe import domain_alive

        ctx = Context(state_dir=self.state_dir, lock_timeout=LOCK_WAIT)
        try:
            for bridge in sorted(w.repair):
                try:
                    cfg = load_config(self.config, env={}, cache_dir=self.state_dir)
                    got = reattach(ctx, cfg, bridge)
                except BusyError:
                    w.due = time.monotonic() + RETRY
                    return
                except VmnetError as e:
                    self._note(w, "repair", f"bridge {bridge}: not repaired: {e.one_line()}",
                               [])
                    w.repair.discard(bridge)
                    continue
                w.repair.discard(bridge)
                if got.vms or got.notes:
                    self._note(w, "repair", f"bridge {bridge} re-created: re-attached "
                               f"{', '.join(got.vms) or 'nothing'}"
                               + "".join(f"; {n}" for n in got.notes), got.commands)
            if w.reap:
                try:
                    report = ops.gc(ctx, domain_alive=domain_alive)
                except BusyError:
                    w.due = time.monotonic() + RETRY
                    return
                except VmnetError as e:
                    self._note(w, "reap", f"gc failed: {e.one_line()}", [])
                    report = None
                w.reap = False
                for line in report.cleared if report else []:
                    self._note(w, "reap", f"reaped {line}", [])
                self._services(w, ctx)
        finally:
            ctx.close()
            self._save(w)

    def _services(self, w: Watched, ctx: Context) -> None:
        """A nat/isolated network whose dnsmasq died gets it back (`network reload`)."""
        from vmnet.config import load_config
        from vmnet.engine import ops
        from vmnet.errors import VmnetError
        from vmnet.kinds import dnsmasq, l3

        site = ctx.site()
        for brec in ctx.store().bridges().values():
            if brec.kind == "bridge" or dnsmasq.running(site.paths(brec.bridge)) is not None:
                continue
            try:
                cfg = load_config(self.config, env={}, cache_dir=self.state_dir)
                done = ops.reload_network(ctx.use_config(cfg), l3.network_of(brec, cfg))
            except VmnetError as e:
                self._note(w, "service", f"network {brec.network}: dnsmasq not restarted: "
                           f"{e.one_line()}", [])
                continue
            if done:
                self._note(w, "service", "; ".join(done), [])

    def _note(self, w: Watched, what: str, text: str, commands: list[str]) -> None:
        sys.stderr.write(f"vmnetd: watcher (ns {w.inode}): {text}\n")
        for c in commands:
            sys.stderr.write(f"vmnetd:   {c}\n")
        w.history.append({"at": time.time(), "what": what, "text": text,
                          "commands": list(commands)})
        del w.history[:-KEEP]

    # -- watch.json ---------------------------------------------------------------------
    def _load(self, w: Watched) -> dict[str, int]:
        bridges, w.history = notes(self._records_dir(w.inode))
        return bridges

    def _save(self, w: Watched) -> None:
        d = self._records_dir(w.inode)
        if not os.path.isdir(os.path.join(d, "vms")):
            return
        data = {"format": 1, "bridges": w.bridges, "history": w.history}
        try:
            write_file(os.path.join(d, STATE_FILE), json.dumps(data, indent=1).encode())
        except Exception as e:  # a full disk must not stop the watcher
            sys.stderr.write(f"vmnetd: watcher: cannot write {d}/{STATE_FILE}: {e}\n")


def notes(records_dir: str) -> tuple[dict[str, int], list[dict[str, object]]]:
    """A namespace's watch.json (the one reader: the watcher, `vmnet status`): the
    ifindex of each bridge last seen, and the actions, newest last; nothing if unusable."""
    try:
        with open(os.path.join(records_dir, STATE_FILE)) as f:
            data = json.load(f)
        bridges = {str(k): int(v) for k, v in data.get("bridges", {}).items()}
        history = [h for h in data.get("history", []) if isinstance(h, dict)][-KEEP:]
    except (OSError, ValueError, AttributeError, TypeError):
        return {}, []
    return bridges, history


def _reachable(inode: int) -> bool:
    """Whether anyone but us can still reach the namespace: a name in /run/netns, or a
    process in it (our own fds on it show in /proc/self/fd, not in /proc/*/ns/net)."""
    me = str(os.getpid())
    paths = [os.path.join(netns.NETNS_RUN_DIR, n) for n in _listdir(netns.NETNS_RUN_DIR)]
    paths += [f"/proc/{p}/ns/net" for p in _listdir("/proc") if p.isdigit() and p != me]
    for path in paths:
        try:
            if os.stat(path).st_ino == inode:
                return True
        except OSError:
            continue
    return False


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
