"""vmnet's records of what it created, one directory per network namespace.

Layout: STATE_DIR/ns-<inode>/{lock, vms/<vm>.json, bridges/<bridge>.json}.

Store choice: plain JSON files, each replaced atomically (write temp file,
rename), and one flock(2) per namespace held for a whole transaction.  No
fsync: the records describe kernel objects that do not survive a reboot
either, so only a crash of the process matters, and rename(2) is atomic
against that.
Why not SQLite: the records are few and small, must be readable by a person
at 3 a.m. (`cat /run/vmnet/...`), and flock is released by the kernel when a
holder dies, even by SIGKILL, so a crash never leaves a stale lock.  Lock
waits are bounded (the libvirt hook must never block libvirtd forever).

Records are written *before* the kernel objects they describe exist, so a
crash at any point leaves something `gc`/`down` can finish.  A record is
never proof that a link is vmnet's: the kernel-side mark is checked too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from vmnet.errors import ConflictError, InputError, PrivilegeError, VmnetError
from vmnet.state.files import (
    DEFAULT_STATE_DIR,
    FORMAT,
    check_trusted_dir,
    dumps,
    fname,
    is_stale,
    key_of,
    proc_start_time,
    same_file,
    stored_cookie,
    write_file,
)

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DEFAULT_STATE_DIR", "FORMAT", "check_trusted_dir", "proc_start_time"]


@dataclass(frozen=True)
class Proc:
    """A process identity that survives pid reuse: pid + start time (clock ticks)."""

    pid: int
    start: int

    @classmethod
    def me(cls) -> Proc:
        return cls.of(os.getpid()) or cls(os.getpid(), 0)

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        start = proc_start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start


@dataclass
class NicRecord:
    index: int
    tap: str
    bridge: str
    network: str
    mac: str
    tap_mac: str
    mtu: int | None
    queues: int
    vnet_hdr: bool
    owner: int | None
    group: int | None
    created: bool = True


@dataclass
class VmRecord:
    vm: str
    mode: str  # "up" | "run" | "hook"
    phase: str  # "applying" | "ready" | "removing"
    writer: Proc
    nics: list[NicRecord]
    holder: Proc | None = None  # the QEMU of a `run`
    domain_uuid: str | None = None
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        # Hand-built: dataclasses.asdict deep-copies and costs more than the
        # write itself in a thousand-VM bulk run.
        return {"format": FORMAT, "vm": self.vm, "mode": self.mode, "phase": self.phase,
                "writer": {"pid": self.writer.pid, "start": self.writer.start},
                "nics": [dict(n.__dict__) for n in self.nics],
                "holder": None if self.holder is None else
                {"pid": self.holder.pid, "start": self.holder.start},
                "domain_uuid": self.domain_uuid, "created_at": self.created_at}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VmRecord:
        holder = d.get("holder")
        return cls(
            vm=str(d["vm"]), mode=str(d["mode"]), phase=str(d["phase"]),
            writer=Proc(**d["writer"]),
            nics=[NicRecord(**n) for n in d["nics"]],
            holder=Proc(**holder) if holder else None,
            domain_uuid=d.get("domain_uuid"),
            created_at=float(d.get("created_at", 0)),
        )


@dataclass
class BridgeRecord:
    bridge: str
    network: str
    created: bool  # vmnet created the bridge itself
    uplink: str | None = None
    uplink_attached: bool = False  # vmnet enslaved the uplink
    uplink_was_down: bool = False
    address: str | None = None
    writer: Proc | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = FORMAT
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BridgeRecord:
        w = d.get("writer")
        return cls(bridge=str(d["bridge"]), network=str(d["network"]),
                   created=bool(d["created"]), uplink=d.get("uplink"),
                   uplink_attached=bool(d.get("uplink_attached")),
                   uplink_was_down=bool(d.get("uplink_was_down")),
                   address=d.get("address"), writer=Proc(**w) if w else None)


class StateStore:
    """Records for one network namespace."""

    def __init__(self, root: str, ns_inode: int, ns_cookie: int | None = None) -> None:
        self.root = root
        self.dir = os.path.join(root, f"ns-{ns_inode}")
        self.cookie = ns_cookie
        self._stamped = False
        self._lock_fd: int | None = None
        self._dirs_made = False

    # -- namespace identity (vmnet.state.files.stored_cookie) -----------------
    def _stored_cookie(self) -> int | None:
        return stored_cookie(self.dir)

    def stale(self) -> bool:
        """True when the records belong to a dead namespace whose inode was reused."""
        return is_stale(self.cookie, self._stored_cookie())

    def _claim(self) -> None:
        """Under the lock: set a dead namespace's records aside (ours are stamped on write)."""
        if self.cookie is None:
            return
        stored = self._stored_cookie()
        if stored is None or stored == self.cookie:
            return
        for sub in ("vms", "bridges"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(os.path.join(self.dir, sub),
                          os.path.join(self.dir, f"stale-{stored}-{sub}"))
        os.unlink(os.path.join(self.dir, "cookie"))
        self._stamped = False
        self._dirs_made = False
        self._ensure_dirs()

    def _stamp(self) -> None:
        if self._stamped or self.cookie is None:
            return
        if self._stored_cookie() != self.cookie:
            self._write_file(os.path.join(self.dir, "cookie"), f"{self.cookie}\n".encode())
        self._stamped = True

    # -- locking -----------------------------------------------------------
    def _ensure_dirs(self) -> None:
        if self._dirs_made:
            return
        for d in (self.root, self.dir, os.path.join(self.dir, "vms"),
                  os.path.join(self.dir, "bridges")):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            except FileNotFoundError:
                if d == self.root:
                    raise VmnetError(f"cannot create state directory {d}: its parent does "
                                     "not exist",
                                     hint="check --state-dir / $VMNET_STATE_DIR") from None
                raise  # a lock holder's cleanup_dir removed the level above: locked() retries
            except PermissionError:
                raise PrivilegeError(f"cannot create state directory {d}",
                                     hint="vmnet must run as root (or set --state-dir)") \
                    from None
            except OSError as e:  # a missing parent, a file in the way, a read-only fs
                raise VmnetError(f"cannot create state directory {d}: {e.strerror}",
                                 hint="check --state-dir / $VMNET_STATE_DIR") from None
            check_trusted_dir(d, top=d == self.root)
        self._dirs_made = True

    @contextlib.contextmanager
    def locked(self, timeout: float = 30.0) -> Iterator[StateStore]:
        """Hold the namespace lock; wait at most `timeout` seconds for it."""
        if self._lock_fd is not None:  # re-entrant within one process
            yield self
            return
        if not timeout >= 0:  # NaN (`--lock-timeout nan`) would never time out
            raise InputError(f"--lock-timeout: {timeout} is not a number of seconds >= 0")
        path = os.path.join(self.dir, "lock")
        deadline = time.monotonic() + timeout
        while True:
            # A holder may remove the directories and the lock file (cleanup_dir,
            # once no record is left) while we make or open them, or while we wait
            # on the lock: a flock on an unlinked file would exclude no one.  So
            # check after locking, and start again if they went away.
            self._dirs_made = False
            try:
                self._ensure_dirs()
                fd = self._open_lock(path)
            except FileNotFoundError:
                if time.monotonic() >= deadline:
                    raise VmnetError(f"state directory {self.dir} keeps disappearing") \
                        from None
                continue
            self._flock(fd, path, deadline, timeout)
            if same_file(fd, path):
                break
            os.close(fd)
        self._lock_fd = fd
        try:
            self._claim()
            yield self
        finally:
            self._lock_fd = None
            os.close(fd)  # releases the flock

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
            raise VmnetError(f"cannot open lock file {path}: {e.strerror}",
                             hint="check --state-dir / $VMNET_STATE_DIR") from None

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
    def _write(self, sub: str, key: str, data: dict[str, Any]) -> None:
        self._ensure_dirs()
        self._stamp()
        self._write_file(os.path.join(self.dir, sub, fname(key)),
                         dumps(data))

    @staticmethod
    def _write_file(path: str, data: bytes) -> None:
        write_file(path, data)

    def _read_all(self, sub: str) -> dict[str, dict[str, Any]]:
        d = os.path.join(self.dir, sub)
        if self.stale():
            return {}  # a dead namespace's records: never acted on here
        if not self._dirs_made:  # records are acted on: never read them from a planted dir
            for level in (self.root, self.dir, d):
                with contextlib.suppress(FileNotFoundError):  # none yet, or just removed
                    check_trusted_dir(level, top=level == self.root)
        out: dict[str, dict[str, Any]] = {}
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return out
        for fn in names:
            if not fn.endswith(".json"):
                continue
            data = self._read_file(os.path.join(d, fn))
            if data is not None:
                out[key_of(fn)] = data
        return out

    @staticmethod
    def _read_file(path: str) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"__corrupt__": path}
        return data if isinstance(data, dict) else {"__corrupt__": path}

    def _remove(self, sub: str, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, sub, fname(key)))

    # -- VM records --------------------------------------------------------
    def put_vm(self, rec: VmRecord) -> None:
        self._write("vms", rec.vm, rec.to_json())

    def get_vm(self, vm: str) -> VmRecord | None:
        if self.stale():
            return None
        data = self._read_file(os.path.join(self.dir, "vms", fname(vm)))
        return None if data is None else parse_vm_record(data)

    def vms(self) -> dict[str, VmRecord]:
        out = {}
        for key, data in self._read_all("vms").items():
            rec = parse_vm_record(data)
            if rec is not None:
                out[key] = rec
        return out

    def corrupt(self) -> list[str]:
        """Files that could not be parsed (they are reported, never acted on)."""
        bad = []
        for sub in ("vms", "bridges"):
            for key, data in self._read_all(sub).items():
                if "__corrupt__" in data or (sub == "vms" and parse_vm_record(data) is None) \
                        or (sub == "bridges" and parse_bridge_record(data) is None):
                    bad.append(os.path.join(self.dir, sub, fname(key)))
        return bad

    def remove_corrupt(self, path: str) -> None:
        if os.path.dirname(os.path.dirname(path)) == self.dir:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def drop_vm(self, vm: str) -> None:
        self._remove("vms", vm)

    # -- bridge records ----------------------------------------------------
    def put_bridge(self, rec: BridgeRecord) -> None:
        self._write("bridges", rec.bridge, rec.to_json())

    def get_bridge(self, bridge: str) -> BridgeRecord | None:
        if self.stale():
            return None
        data = self._read_file(os.path.join(self.dir, "bridges", fname(bridge)))
        return None if data is None else parse_bridge_record(data)

    def bridges(self) -> dict[str, BridgeRecord]:
        out = {}
        for key, data in self._read_all("bridges").items():
            rec = parse_bridge_record(data)
            if rec is not None:
                out[key] = rec
        return out

    def drop_bridge(self, bridge: str) -> None:
        self._remove("bridges", bridge)

    def _remove_dead_tmp(self) -> None:
        """`<record>.tmp.<pid>` of a writer killed before its rename: never read, but
        left alone it stays as long as any record does."""
        for sub in ("vms", "bridges"):
            p = os.path.join(self.dir, sub)
            with contextlib.suppress(OSError):
                for fn in os.listdir(p):
                    pid = fn.rpartition(".tmp.")[2]
                    if ".tmp." in fn and pid.isdigit() and int(pid) != os.getpid() \
                            and proc_start_time(int(pid)) is None:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(p, fn))

    def is_empty(self) -> bool:
        return not self._read_all("vms") and not self._read_all("bridges")

    def cleanup_dir(self) -> None:
        """Remove temp files of dead writers; the directory once it holds no records."""
        self._remove_dead_tmp()
        if not self.is_empty():
            return
        for sub in ("vms", "bridges"):
            p = os.path.join(self.dir, sub)
            with contextlib.suppress(FileNotFoundError, OSError):
                for fn in os.listdir(p):
                    if ".tmp." in fn:
                        os.unlink(os.path.join(p, fn))
                os.rmdir(p)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, "cookie"))
        self._stamped = False
        with contextlib.suppress(FileNotFoundError, OSError):
            os.unlink(os.path.join(self.dir, "lock"))
            os.rmdir(self.dir)
        self._dirs_made = False
        self._drop_config_cache()

    def _drop_config_cache(self) -> None:
        """Once no namespace has records, the compiled configs (vmnet.confcache) go too:
        a host with nothing up keeps nothing of vmnet's.  (Racing a writer in another
        namespace costs at most one entry: the hot path then defers to the full path.)"""
        from vmnet.confcache import SUBDIR

        try:
            if any(n.startswith("ns-") for n in os.listdir(self.root)):
                return
            cache = os.path.join(self.root, SUBDIR)
            for fn in os.listdir(cache):
                os.unlink(os.path.join(cache, fn))
            os.rmdir(cache)
        except OSError:
            pass


def _valid_names(*names: object) -> bool:
    from vmnet.model import validate

    try:
        for n in names:
            if n is not None:
                validate.ifname(n, "state")
    except VmnetError:
        return False
    return True


def parse_vm_record(data: dict[str, Any]) -> VmRecord | None:
    """A VmRecord, or None if the file is garbage or names invalid interfaces."""
    try:
        rec = VmRecord.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if rec.mode not in ("up", "run", "hook") or \
            rec.phase not in ("applying", "ready", "removing"):
        return None
    if not all(_valid_names(n.tap, n.bridge) for n in rec.nics):
        return None
    return rec


def parse_bridge_record(data: dict[str, Any]) -> BridgeRecord | None:
    try:
        rec = BridgeRecord.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return rec if _valid_names(rec.bridge, rec.uplink) else None
