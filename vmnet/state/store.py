"""vmnet's records of what it created, one directory per network namespace.

Layout::

    STATE_DIR/ns-<inode>/lock              flock(2) held for a whole transaction
    STATE_DIR/ns-<inode>/cookie            which namespace the records describe
    STATE_DIR/ns-<inode>/vms/<vm>.json     one record per VM (vmnet.state.records)
    STATE_DIR/ns-<inode>/bridges/<br>.json one record per bridge vmnet made or used
    STATE_DIR/ns-<inode>/taps/<tap>        -> <vm>   index: which VM claims a tap name
    STATE_DIR/ns-<inode>/ports/<br>/<mac>  -> <vm>   index: which VM claims a MAC on a bridge
                                                     (<mac>: its 12 hex digits)
    STATE_DIR/ns-<inode>/ports/<br>/ip-<a> -> <vm>   ... and an address (nat/isolated)
    STATE_DIR/ns-<inode>/dnsmasq/<br>/               a nat/isolated network's dnsmasq

The index entries are symlinks whose target is the VM's name: one syscall to
make, one to read, so looking up a tap name, a MAC or whether a bridge still
has users costs the same with 1 VM or 1,000 (nothing reads every record).  The
index is never the truth: an entry counts only if the VM's record names that
tap (or MAC on that bridge), so an entry left by a crash is harmless, and
entries are written *before* the record that needs them.

Store choice: plain JSON files, each replaced atomically (temp file, every
byte written, rename), and one flock per namespace held for a whole
transaction.  No fsync: the records describe kernel objects that do not
survive a reboot either.  flock is released by the kernel when a holder dies,
even by SIGKILL, so a crash never leaves a stale lock; waits are bounded.

Records are written *before* the kernel objects they describe exist, so a
crash at any point leaves something `gc`/`down` can finish.  A record is
never proof that a link is vmnet's: the kernel-side mark is checked too.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from vmnet.consts import DEFAULT_LOCK_TIMEOUT, DEFAULT_STATE_DIR
from vmnet.errors import ConflictError, InputError, PrivilegeError, StateError
from vmnet.state.files import (
    check_trusted_dir,
    dumps,
    fname,
    is_stale,
    key_of,
    loads,
    proc_start_time,
    read_file,
    same_file,
    stored_cookie,
    write_file,
)
from vmnet.state.records import (
    BridgeRecord,
    Corrupt,
    NicRecord,
    Proc,
    UnknownFormat,
    VmRecord,
    bridge_from_json,
    vm_from_json,
)

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from contextlib import AbstractContextManager

__all__ = ["DEFAULT_STATE_DIR", "BridgeRecord", "NicRecord", "Proc", "StateStore",
           "UnknownFormat", "VmRecord", "check_trusted_dir", "proc_start_time"]

_SUBDIRS = ("vms", "bridges", "taps", "ports")


def _key(name: str) -> str:
    return fname(name)[: -len(".json")]


_IP_PREFIX = "ip-"  # ports/<br>/ip-<a.b.c.d> -> <vm>: which VM claims an address there


def _mac_key(mac: str) -> str:
    """A MAC as an index entry's name: its 12 hex digits (colons would need encoding)."""
    return mac.replace(":", "")


class _Locked:
    """The context manager StateStore.locked returns (contextlib costs an import)."""

    __slots__ = ("fd", "store", "timeout")

    def __init__(self, store: StateStore, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self.fd: int | None = None

    def __enter__(self) -> StateStore:
        if self.store._lock_fd is None:
            self.fd = self.store._acquire(self.timeout)
            self.store._lock_fd = self.fd
            self.store._claim()
            self.store._fresh = True
        return self.store

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            self.store._fresh = False
            self.store._lock_fd = None
            os.close(self.fd)  # releases the flock
            self.fd = None


class StateStore:
    """Records for one network namespace."""

    def __init__(self, root: str, ns_inode: int, ns_cookie: int | None = None) -> None:
        self.root = root
        self.dir = os.path.join(root, f"ns-{ns_inode}")
        self.cookie = ns_cookie
        self._stamped = False
        self._lock_fd: int | None = None
        self._dirs_made = False
        self._trusted: set[str] = set()
        self._fresh = False  # under the lock, after _claim: these records are this namespace's

    # -- namespace identity (vmnet.state.files.stored_cookie) ---------------
    def stale(self) -> bool:
        """True when the records belong to a dead namespace whose inode was reused.

        Under the lock the answer cannot change (_claim set a dead namespace's
        records aside), so it is asked once per lock."""
        if self._lock_fd is not None and self._fresh:
            return False
        return is_stale(self.cookie, stored_cookie(self.dir))

    def _claim(self) -> None:
        """Under the lock: set a dead namespace's records aside (ours are stamped on write)."""
        if self.cookie is None:
            return
        stored = stored_cookie(self.dir)
        if stored is None or stored == self.cookie:
            return
        for sub in _SUBDIRS:
            try:  # noqa: SIM105 - contextlib costs an import on this path
                os.rename(os.path.join(self.dir, sub),
                          os.path.join(self.dir, f"stale-{stored}-{sub}"))
            except FileNotFoundError:
                pass
        os.unlink(os.path.join(self.dir, "cookie"))
        self._stamped = False
        self._dirs_made = False
        self._trusted.clear()
        self._ensure_dirs()

    def _stamp(self) -> None:
        if self._stamped or self.cookie is None:
            return
        if stored_cookie(self.dir) != self.cookie:
            write_file(os.path.join(self.dir, "cookie"), f"{self.cookie}\n".encode())
        self._stamped = True

    # -- directories and locking ---------------------------------------------
    def _mkdir(self, d: str, *, top: bool = False) -> None:
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            if top:
                parent = os.path.dirname(os.path.abspath(d))
                raise StateError(f"cannot create state directory {d}: its parent {parent} "
                                 "does not exist",
                                 hint="check --state-dir / $VMNET_STATE_DIR") from None
            raise  # a lock holder's cleanup_dir removed the level above: locked() retries
        except PermissionError:
            raise PrivilegeError(f"cannot create state directory {d}",
                                 hint="vmnet must run as root (or set --state-dir)") from None
        except OSError as e:  # a file in the way, a read-only or full file system
            raise StateError(f"cannot create state directory {d}: {e.strerror}",
                             hint="check --state-dir / $VMNET_STATE_DIR") from None
        check_trusted_dir(d, top=top)
        self._trusted.add(d)

    def _ensure_dirs(self) -> None:
        if self._dirs_made:
            return
        self._mkdir(self.root, top=True)
        self._mkdir(self.dir)
        for sub in _SUBDIRS:
            self._mkdir(os.path.join(self.dir, sub))
        self._dirs_made = True

    def _check_read(self, d: str) -> None:
        """Records are acted on: never read them from a directory someone else planted."""
        if d in self._trusted:
            return
        levels = [self.root, self.dir]
        rel = os.path.relpath(d, self.dir)
        if rel != ".":
            cur = self.dir
            for part in rel.split(os.sep):
                cur = os.path.join(cur, part)
                levels.append(cur)
        for level in levels:
            if level in self._trusted:
                continue
            try:
                check_trusted_dir(level, top=level == self.root)
            except FileNotFoundError:
                return  # none yet, or just removed: nothing to read there
            self._trusted.add(level)

    def locked(self, timeout: float = DEFAULT_LOCK_TIMEOUT) -> AbstractContextManager[StateStore]:
        """Hold the namespace lock; wait at most `timeout` seconds for it (re-entrant)."""
        if not timeout >= 0:  # NaN would never time out
            raise InputError(f"--lock-timeout: {timeout} is not a number of seconds >= 0")
        return _Locked(self, timeout)

    def _acquire(self, timeout: float) -> int:
        path = os.path.join(self.dir, "lock")
        deadline = time.monotonic() + timeout
        while True:
            # A holder may remove the directories and the lock file (cleanup_dir,
            # once no record is left) while we make or open them, or while we wait
            # on the lock: a flock on an unlinked file would exclude no one.  So
            # check after locking, and start again if they went away.
            self._dirs_made = False
            self._trusted.clear()
            try:
                self._ensure_dirs()
                fd = self._open_lock(path)
            except FileNotFoundError:
                if time.monotonic() >= deadline:
                    raise StateError(f"state directory {self.dir} keeps disappearing") \
                        from None
                continue
            self._flock(fd, path, deadline, timeout)
            if same_file(fd, path):
                return fd
            os.close(fd)

    @staticmethod
    def _open_lock(path: str) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise
        except PermissionError:
            raise PrivilegeError(f"cannot open lock file {path}",
                                 hint="vmnet must run as root") from None
        except OSError as e:
            # A full file system cannot create the lock file, but an existing one opens.
            raise StateError(f"cannot open lock file {path}: {e.strerror}",
                             hint="check --state-dir / $VMNET_STATE_DIR", errno=e.errno) \
                from None

    @staticmethod
    def _flock(fd: int, path: str, deadline: float, timeout: float) -> None:
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise ConflictError(
                        f"timed out after {timeout:g}s waiting for vmnet's lock {path}",
                        hint="another vmnet command is running in this namespace") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    # -- files -------------------------------------------------------------
    def _path(self, sub: str, key: str) -> str:
        return os.path.join(self.dir, sub, fname(key))

    def _write(self, sub: str, key: str, data: dict[str, object]) -> None:
        self._ensure_dirs()
        self._stamp()
        write_file(self._path(sub, key), dumps(data))

    def _read(self, path: str) -> object | None:
        """A record file's JSON; None if absent; Corrupt if it is not JSON."""
        try:
            return loads(read_file(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise Corrupt(str(e)) from None

    def _remove(self, path: str) -> None:
        try:  # noqa: SIM105 - contextlib costs an import on this path
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _list(self, sub: str) -> list[str]:
        d = os.path.join(self.dir, sub)
        if self.stale():
            return []  # a dead namespace's records: never acted on here
        self._check_read(d)
        try:
            return [fn for fn in os.listdir(d) if fn.endswith(".json")]
        except FileNotFoundError:
            return []

    # -- VM records --------------------------------------------------------
    def get_vm(self, vm: str) -> VmRecord | None:
        """The VM's record, None if there is none or it is corrupt (gc reports those).

        Raises UnknownFormat for a record a newer vmnet wrote."""
        if self.stale():
            return None
        self._check_read(os.path.join(self.dir, "vms"))
        path = self._path("vms", vm)
        try:
            data = self._read(path)
            return None if data is None else vm_from_json(data, path)
        except Corrupt:
            return None

    def put_vm(self, rec: VmRecord, *, index: bool = True) -> None:
        """Write the record; its index entries first (an entry without a record is void).

        index=False: the caller wrote this record's entries already, in the same
        transaction (a ready mark after the write-ahead record)."""
        self._ensure_dirs()
        for n in rec.nics if index else ():
            self._link(os.path.join(self.dir, "taps", _key(n.tap)), rec.vm)
            ports = os.path.join(self.dir, "ports", _key(n.bridge))
            if ports not in self._trusted:
                self._mkdir(ports)
            self._link(os.path.join(ports, _mac_key(n.mac)), rec.vm)
            if n.ip is not None:
                self._link(os.path.join(ports, _IP_PREFIX + n.ip), rec.vm)
        self._write("vms", rec.vm, rec.to_json())

    def drop_vm(self, vm: str, rec: VmRecord | None = None) -> None:
        """Remove the record, then the index entries that point at it."""
        self._remove(self._path("vms", vm))
        if rec is not None:
            for n in rec.nics:
                self._unlink_if(os.path.join(self.dir, "taps", _key(n.tap)), vm)
                ports = os.path.join(self.dir, "ports", _key(n.bridge))
                self._unlink_if(os.path.join(ports, _mac_key(n.mac)), vm)
                if n.ip is not None:
                    self._unlink_if(os.path.join(ports, _IP_PREFIX + n.ip), vm)
                try:
                    os.rmdir(ports)
                    self._trusted.discard(ports)
                except OSError:
                    pass  # other VMs' MACs are still there

    def vms(self) -> dict[str, VmRecord]:
        """Every readable VM record (status, list, gc, `down --all`: these read them all)."""
        out = {}
        d = os.path.join(self.dir, "vms")
        for fn in self._list("vms"):
            try:
                data = self._read(os.path.join(d, fn))
                if data is not None:
                    rec = vm_from_json(data, os.path.join(d, fn))
                    out[rec.vm] = rec
            except (Corrupt, UnknownFormat):
                continue
        return out

    def problems(self) -> tuple[list[str], list[UnknownFormat]]:
        """(corrupt record files, records of an unknown format) in this namespace."""
        corrupt: list[str] = []
        unknown: list[UnknownFormat] = []
        for sub, decode in (("vms", vm_from_json), ("bridges", bridge_from_json)):
            d = os.path.join(self.dir, sub)
            for fn in self._list(sub):
                path = os.path.join(d, fn)
                try:
                    data = self._read(path)
                    if data is not None:
                        rec = decode(data, path)
                        if key_of(fn) != (rec.vm if isinstance(rec, VmRecord) else rec.bridge):
                            raise Corrupt("file name and record disagree")
                except Corrupt:
                    corrupt.append(path)
                except UnknownFormat as e:
                    unknown.append(e)
        return corrupt, unknown

    def remove_corrupt(self, path: str) -> None:
        if os.path.dirname(os.path.dirname(path)) == self.dir:
            self._remove(path)

    # -- the index -------------------------------------------------------------
    def _link(self, path: str, vm: str) -> None:
        try:
            os.symlink(vm, path)
            return
        except FileExistsError:
            pass
        except OSError as e:
            raise StateError(f"cannot write vmnet's index entry {path}: "
                             f"{errno.errorcode.get(e.errno or 0, e.errno)}",
                             errno=e.errno) from None
        try:
            if os.readlink(path) == vm:
                return
        except OSError:
            pass
        # An entry of another VM: its claim was found void by the planner (or the
        # caller is taking the name over); replace it atomically.
        tmp = f"{path}.tmp.{os.getpid()}"
        self._remove(tmp)
        try:
            os.symlink(vm, tmp)
            os.replace(tmp, path)
        except OSError as e:
            self._remove(tmp)
            raise StateError(f"cannot write vmnet's index entry {path}: "
                             f"{errno.errorcode.get(e.errno or 0, e.errno)}",
                             errno=e.errno) from None

    def _unlink_if(self, path: str, vm: str) -> None:
        try:
            if os.readlink(path) == vm:
                os.unlink(path)
        except OSError:
            pass

    def _entry(self, path: str) -> str | None:
        if self.stale():
            return None
        try:
            return os.readlink(path)
        except OSError:
            return None

    def tap_owner(self, tap: str) -> str | None:
        """The VM whose record claims this tap name, if any (one readlink, one record)."""
        vm = self._entry(os.path.join(self.dir, "taps", _key(tap)))
        if vm is None:
            return None
        rec = self.get_vm(vm)
        return vm if rec is not None and any(n.tap == tap for n in rec.nics) else None

    def mac_owner(self, bridge: str, mac: str) -> str | None:
        """The VM whose record claims `mac` on `bridge`, if any."""
        vm = self._entry(os.path.join(self.dir, "ports", _key(bridge), _mac_key(mac)))
        if vm is None:
            return None
        rec = self.get_vm(vm)
        return vm if rec is not None and any(
            n.bridge == bridge and n.mac == mac for n in rec.nics) else None

    def ip_owner(self, bridge: str, ip: str) -> str | None:
        """The VM whose record gives a NIC on `bridge` address `ip`, if any."""
        vm = self._entry(os.path.join(self.dir, "ports", _key(bridge), _IP_PREFIX + ip))
        if vm is None:
            return None
        rec = self.get_vm(vm)
        return vm if rec is not None and any(
            n.bridge == bridge and n.ip == ip for n in rec.nics) else None

    def bridge_users(self, bridge: str, exclude: Iterable[str] = ()) -> str | None:
        """A VM (not in `exclude`) whose record has a NIC on `bridge`, or None.

        Scans the bridge's index entries only until it meets a valid one."""
        skip = set(exclude)
        d = os.path.join(self.dir, "ports", _key(bridge))
        if self.stale():
            return None
        self._check_read(os.path.join(self.dir, "ports"))
        try:
            it = os.scandir(d)
        except OSError:
            return None
        with it:
            for entry in it:
                if ".tmp." in entry.name:
                    continue
                try:
                    vm = os.readlink(entry.path)
                except OSError:
                    continue
                if vm in skip:
                    continue
                try:
                    rec = self.get_vm(vm)
                except UnknownFormat:
                    return vm  # a newer vmnet's VM: treat as a user
                if rec is not None and any(n.bridge == bridge for n in rec.nics):
                    return vm
        return None

    # -- transaction journals ---------------------------------------------------
    def begin(self, vms: list[str], writer: Proc) -> str:
        """Write-ahead note of the VMs one `up` transaction is bringing up.

        gc rolls back every VM named in the journal of a dead writer, including
        those whose records it had already marked ready: a bulk `up` killed while
        marking its records ready comes back whole or not at all."""
        self._ensure_dirs()
        self._stamp()
        path = os.path.join(self.dir, f"txn-{writer.pid}-{writer.start}.json")
        write_file(path, dumps({"format": 2, "op": "up", "writer": writer.to_json(),
                                "vms": vms}))
        return path

    def end(self, path: str) -> None:
        self._remove(path)

    def journals(self) -> list[tuple[str, Proc, list[str]]]:
        """(path, writer, VMs) of every transaction journal (for gc)."""
        out: list[tuple[str, Proc, list[str]]] = []
        if self.stale():
            return out
        try:
            names = os.listdir(self.dir)
        except OSError:
            return out
        for fn in sorted(names):
            if not (fn.startswith("txn-") and fn.endswith(".json")):
                continue
            path = os.path.join(self.dir, fn)
            try:
                d = self._read(path)
                if not isinstance(d, dict):
                    raise Corrupt("not an object")
                w = d.get("writer")
                vms = d.get("vms")
                if not isinstance(w, dict) or not isinstance(vms, list) or \
                        not all(isinstance(v, str) for v in vms):
                    raise Corrupt("bad journal")
                out.append((path, Proc(int(w["pid"]), int(w["start"])), list(vms)))
            except (Corrupt, KeyError, TypeError, ValueError):
                out.append((path, Proc(0, 0), []))
        return out

    def prune_index(self) -> list[str]:
        """Remove index entries no record stands behind (left by a killed writer);
        returns their paths.  Reads every entry: for gc, not for the single-VM path."""
        removed: list[str] = []

        def void(owner: Callable[[str, str], str | None], a: str, b: str) -> bool:
            try:
                return owner(a, b) is None
            except UnknownFormat:
                return False  # a newer vmnet's VM: its entries are not ours to judge

        def tap(a: str, _b: str) -> str | None:
            return self.tap_owner(a)

        taps = os.path.join(self.dir, "taps")
        for fn in _listdir(taps):
            path = os.path.join(taps, fn)
            if ".tmp." in fn or void(tap, key_of(fn + ".json"), ""):
                self._remove(path)
                removed.append(path)
        ports = os.path.join(self.dir, "ports")
        for bdir in _listdir(ports):
            bridge = key_of(bdir + ".json")
            for fn in _listdir(os.path.join(ports, bdir)):
                path = os.path.join(ports, bdir, fn)
                mac = ":".join(fn[i:i + 2] for i in range(0, len(fn), 2))
                owner: Callable[[str, str], str | None] = self.mac_owner
                if fn.startswith(_IP_PREFIX):
                    owner, mac = self.ip_owner, fn[len(_IP_PREFIX):]
                if ".tmp." in fn or void(owner, bridge, mac):
                    self._remove(path)
                    removed.append(path)
            try:  # noqa: SIM105
                os.rmdir(os.path.join(ports, bdir))
            except OSError:
                pass
        return removed

    # -- bridge records ----------------------------------------------------
    def put_bridge(self, rec: BridgeRecord) -> None:
        self._write("bridges", rec.bridge, rec.to_json())

    def get_bridge(self, bridge: str) -> BridgeRecord | None:
        if self.stale():
            return None
        self._check_read(os.path.join(self.dir, "bridges"))
        path = self._path("bridges", bridge)
        try:
            data = self._read(path)
            return None if data is None else bridge_from_json(data, path)
        except Corrupt:
            return None

    def bridges(self) -> dict[str, BridgeRecord]:
        out = {}
        d = os.path.join(self.dir, "bridges")
        for fn in self._list("bridges"):
            try:
                data = self._read(os.path.join(d, fn))
                if data is not None:
                    rec = bridge_from_json(data, os.path.join(d, fn))
                    out[rec.bridge] = rec
            except (Corrupt, UnknownFormat):
                continue
        return out

    def drop_bridge(self, bridge: str) -> None:
        self._remove(self._path("bridges", bridge))

    # -- tidying -----------------------------------------------------------
    def _remove_dead_tmp(self) -> None:
        """`<file>.tmp.<pid>` of a writer killed before its rename: never read, but
        left alone it stays as long as any record does."""
        for sub in ("", *_SUBDIRS):
            p = os.path.join(self.dir, sub) if sub else self.dir
            try:
                names = os.listdir(p)
            except OSError:
                continue
            for fn in names:
                pid = fn.rpartition(".tmp.")[2]
                if ".tmp." in fn and pid.isdigit() and int(pid) != os.getpid() \
                        and proc_start_time(int(pid)) is None:
                    self._remove(os.path.join(p, fn))

    def is_empty(self) -> bool:
        try:
            if any(fn.startswith("txn-") for fn in os.listdir(self.dir)):
                return False
        except OSError:
            pass
        for sub in ("vms", "bridges"):
            try:
                if os.listdir(os.path.join(self.dir, sub)):
                    return False
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return True

    def cleanup_dir(self, *, tidy: bool = True) -> None:
        """Remove temp files of dead writers; the directory once it holds no records.

        tidy=False: only the latter, for a caller that wrote nothing (the ifup/ifdown
        scripts): the temp-file sweep lists every record directory, which a VM start
        should not pay for next to 1,000 VMs; the writers' own cleanup (up, down, gc)
        sweeps them."""
        if tidy:
            self._remove_dead_tmp()
        if not self.is_empty():
            return
        _rmtree_quietly(os.path.join(self.dir, "ports"))
        for sub in _SUBDIRS:
            _rmtree_quietly(os.path.join(self.dir, sub))
        self._remove(os.path.join(self.dir, "cookie"))
        self._remove(os.path.join(self.dir, "watch.json"))  # vmnetd's watcher's notes
        self._stamped = False
        try:
            os.unlink(os.path.join(self.dir, "lock"))
            os.rmdir(self.dir)
        except OSError:
            pass
        self._dirs_made = False
        self._trusted.clear()
        try:
            if any(n.startswith("ns-") for n in os.listdir(self.root)):
                return
        except OSError:
            return
        from vmnet.config import cache

        cache.drop_all(self.root)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _rmtree_quietly(path: str) -> None:
    """Remove one of vmnet's index/record directories (two levels at most), no symlinks
    followed: the entries are symlinks or temp files, unlinked, never traversed."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                for sub in os.scandir(e.path):
                    os.unlink(sub.path)
                os.rmdir(e.path)
            else:
                os.unlink(e.path)
        except OSError:
            pass
    try:  # noqa: SIM105 - contextlib costs an import on this path
        os.rmdir(path)
    except OSError:
        pass

