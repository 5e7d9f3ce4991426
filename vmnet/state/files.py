"""The file layer under vmnet's records: paths, atomic writes, trusted directories, JSON.

Only builtin modules: `json` would import `re` through its decoder (~6 ms), so
records go through json's C encoder and scanner directly.
"""

from __future__ import annotations

import _json
import errno
import os
import stat

from vmnet.consts import DEFAULT_STATE_DIR
from vmnet.errors import StateError, VmnetError

__all__ = ["DEFAULT_STATE_DIR"]

# json.dumps(obj, sort_keys=True), byte for byte: the C encoder json uses, without
# importing json (whose decoder imports re).
def _unencodable(o: object) -> object:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


_encode = _json.make_encoder(None, _unencodable, _json.encode_basestring_ascii, None, ": ",
                             ", ", True, False, True)


def dumps(obj: object) -> bytes:
    """JSON text of a record, exactly as json.dumps(obj, sort_keys=True) writes it."""
    return "".join(_encode(obj, 0)).encode()


class _ScanContext:
    """What json's C scanner reads from a JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None


_scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]


def loads(data: bytes) -> object:
    """Parse a record file's JSON; ValueError if it is not exactly one JSON value.

    Stricter than json.loads (no NaN/Infinity, no leading BOM): vmnet never
    writes those.
    """
    try:
        text = data.decode().strip()
        obj, end = _scan(text, 0)
    except (UnicodeDecodeError, StopIteration, TypeError, RecursionError, SystemError) as e:
        # (SystemError: the C scanner on some truncated input, CPython 3.11)
        raise ValueError(f"not JSON: {e!r}") from None
    except ValueError:
        raise
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return obj


def proc_status(pid: int) -> dict[str, list[str]]:
    """/proc/PID/status as fields and their words ({} if the process is gone): the one
    reader of who a process is (Uid, Gid, Groups, PPid) for vmnetd and its helper."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: v.split() for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return {}


def proc_uid(pid: int) -> int | None:
    """A process's real uid, None if it is gone."""
    uid = proc_status(pid).get("Uid")
    return int(uid[0]) if uid else None


def proc_parent(pid: int) -> int | None:
    ppid = proc_status(pid).get("PPid")
    return int(ppid[0]) if ppid else None


def proc_start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2:].split()
    try:
        if rest[0] in (b"Z", b"X"):
            return None  # dead, not yet reaped by its parent: it holds nothing any more
        return int(rest[19])
    except (IndexError, ValueError):
        return None


_FNAME_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_DROP_SAFE = str.maketrans("", "", _FNAME_SAFE)


def fname(key: str) -> str:
    # Percent-encode everything but [A-Za-z0-9_.-] (urllib.parse costs an import).
    if key and not key.translate(_DROP_SAFE) and key not in (".", ".."):
        return key + ".json"  # the usual name: nothing to encode (one C-level pass)
    out = []
    for b in key.encode():
        c = chr(b)
        out.append(c if c.isascii() and (c.isalnum() or c in "_.-") else f"%{b:02X}")
    name = "".join(out)
    return (name if name not in (".", "..") else name.replace(".", "%2E")) + ".json"


def key_of(fname: str) -> str:
    raw = fname[: -len(".json")]
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == "%" and i + 3 <= len(raw):
            try:
                out += bytes.fromhex(raw[i + 1:i + 3])
                i += 3
                continue
            except ValueError:
                pass  # not an escape we made: keep it as it is
        out += raw[i].encode()
        i += 1
    return out.decode(errors="replace")


def stored_cookie(ns_dir: str) -> int | None:
    """The namespace cookie stored beside a namespace's records, None if there is none.

    The directory is keyed by the namespace's inode, which the kernel reuses
    once a namespace is gone; the cookie tells whether the records describe
    this namespace or a dead one with the same inode.
    """
    try:
        return int(read_file(os.path.join(ns_dir, "cookie")).strip() or 0)
    except (OSError, ValueError):
        return None


def read_file(path: str, limit: int = 1 << 20) -> bytes:
    """A small file's bytes with three syscalls (open() adds fstat, ioctl and lseeks)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_stale(cookie: int | None, stored: int | None) -> bool:
    """Records stamped with another namespace's cookie (a dead one's, inode reused)."""
    return cookie is not None and stored is not None and stored != cookie


def write_file(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` atomically: a temp file beside it, every byte written, then rename(2).

    A short write (a full disk gives one before ENOSPC) or any error removes the
    temp file and raises StateError naming the directory and the errno, so the
    caller fails before the kernel change the record would describe: a truncated
    record is never renamed into place.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[n:]
    except OSError as e:
        os.close(fd)
        _unlink_quietly(tmp)
        raise _write_error(path, e) from None
    os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise _write_error(path, e) from None


def _unlink_quietly(path: str) -> None:
    try:  # noqa: SIM105 - contextlib costs an import here
        os.unlink(path)
    except OSError:
        pass


def _write_error(path: str, e: OSError) -> StateError:
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    hint = "free space there" if e.errno in (errno.ENOSPC, errno.EDQUOT) else \
        "check --state-dir / $VMNET_STATE_DIR"
    return StateError(f"cannot write vmnet's record {os.path.basename(path)} in "
                      f"{os.path.dirname(path)}: {name} ({e.strerror})", hint=hint,
                      errno=e.errno)


def same_file(fd: int, path: str) -> bool:
    """Is `fd` still the file at `path` (not unlinked or replaced since it was opened)?"""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def check_trusted_dir(path: str, *, top: bool = False) -> None:
    """Refuse a state directory someone else could write: vmnet acts on its records.

    vmnet's own levels must be real directories, owned by root (or by vmnet's
    uid) and writable by no one else; the top (--state-dir) may be a shared,
    sticky one like /tmp, and may be reached through a symlink.
    """
    try:
        st = os.stat(path) if top else os.lstat(path)
    except FileNotFoundError:
        raise  # removed meanwhile by a lock holder (cleanup_dir): the caller decides
    except OSError as e:
        raise VmnetError(f"cannot check state directory {path}: {e.strerror}") from None
    mode = st.st_mode
    why = None
    if not stat.S_ISDIR(mode):
        why = "is a symlink" if stat.S_ISLNK(mode) else "is not a directory"
    elif st.st_uid not in (0, os.geteuid()):
        why = f"is owned by uid {st.st_uid}"
    elif mode & 0o022 and not (top and mode & stat.S_ISVTX):
        why = f"is writable by others (mode {stat.S_IMODE(mode):04o})"
    if why:
        raise VmnetError(f"state directory {path} {why}; vmnet will not trust its records",
                         hint="give a --state-dir that only root can write (vmnet creates "
                              "it if missing, e.g. /run/vmnet)")
