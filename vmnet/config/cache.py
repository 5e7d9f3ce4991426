"""The parsed form of a config file, kept while the file's bytes stay the same.

tomllib costs ~17 ms to import (it pulls in `re`): more than the whole rest of a
VM start.  So once vmnet.config has parsed and validated a file, it stores the
result (`Config.to_plain()`: the parser's own output as builtin values, marshal
encoded) under the state directory, named by a hash of the file's bytes:

    STATE_DIR/parsed-config/<sha256 of the file>

The next command with the same bytes reads that instead of parsing again and
rebuilds the same Config through the same classes (whose constructors validate
again); an edited file has another hash, so a stale entry is never read.
Entries are written only into a directory only root (or vmnet's uid) can write,
and read only from one (vmnet.state.files.check_trusted_dir); they go when the
last namespace's records do, so a host with nothing up keeps nothing of vmnet's.
"""

from __future__ import annotations

import marshal
import os

from vmnet.errors import VmnetError
from vmnet.model.names import sha256
from vmnet.state.files import check_trusted_dir, write_file

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.config import Config

VERSION = 6
SUBDIR = "parsed-config"
KEEP = 8  # entries kept (the newest): a host's config changes rarely


def digest(raw: bytes) -> str:
    """The name of a config file's parsed form: a hash of its bytes and our format."""
    return str(sha256(b"vmnet-parsed-config/%d\0" % VERSION + raw).hexdigest())


# Parses this process made or read, by digest: a long-lived process (vmnetd) reads and
# hashes the file on every request, so an edit is seen at once, and parses it only
# when its bytes changed.  Configs are never changed once made.
_MEMORY: dict[str, Config] = {}
MEMORY_KEEP = 4


def recall(name: str, path: str) -> Config | None:
    got = _MEMORY.get(name)
    return got if got is not None and got.path == path else None


def remember(cfg: Config) -> Config:
    if cfg.digest is not None:
        if len(_MEMORY) >= MEMORY_KEEP:
            _MEMORY.pop(next(iter(_MEMORY)))
        _MEMORY[cfg.digest] = cfg
    return cfg


def load(state_root: str, name: str) -> Config | None:
    """The Config stored under `name`, None if there is none (or it is unusable)."""
    from vmnet.config import Config

    d = os.path.join(state_root, SUBDIR)
    path = os.path.join(d, name)
    try:
        check_trusted_dir(state_root, top=True)
        check_trusted_dir(d)
        with open(path, "rb") as f:
            data = f.read()
    except (OSError, VmnetError):
        return None
    try:
        version, plain = marshal.loads(data)
        if version != VERSION:
            raise ValueError(f"version {version}")
        return Config.from_plain(plain, name)
    except (VmnetError, ValueError, EOFError, TypeError, KeyError):
        # Unusable (an older vmnet's, or damaged): the caller parses the file, and
        # save() writes a good entry in its place.
        try:  # noqa: SIM105 - contextlib costs an import on this path
            os.unlink(path)
        except OSError:
            pass
        return None


def save(state_root: str, cfg: Config) -> None:
    """Store `cfg`'s parsed form if it is not there yet.  Best effort and silent:
    without it the next command parses the file again."""
    if cfg.digest is None:
        return
    d = os.path.join(state_root, SUBDIR)
    path = os.path.join(d, cfg.digest)
    try:
        check_trusted_dir(state_root, top=True)
        if os.path.exists(path):
            return
        # Only where vmnet already keeps records: a refused first command, a dry run or
        # a host with nothing up leaves the state directory exactly as it was.
        if not _has_records(state_root):
            return
        if not os.path.isdir(d):
            os.mkdir(d, 0o700)
        check_trusted_dir(d)
        write_file(path, marshal.dumps((VERSION, cfg.to_plain())))  # type: ignore[arg-type]
        entries = sorted((e for e in os.scandir(d) if ".tmp." not in e.name),
                         key=lambda e: e.stat().st_mtime_ns, reverse=True)
        for old in entries[KEEP:]:
            os.unlink(old.path)
    except (OSError, VmnetError, ValueError):
        pass


def _has_records(state_root: str) -> bool:
    for n in os.listdir(state_root):
        if n.startswith("ns-"):
            try:
                if os.listdir(os.path.join(state_root, n, "vms")):
                    return True
            except OSError:
                continue
    return False


def drop_all(state_root: str) -> None:
    """Remove every stored parse (called when no namespace has records left)."""
    d = os.path.join(state_root, SUBDIR)
    try:
        for fn in os.listdir(d):
            os.unlink(os.path.join(d, fn))
        os.rmdir(d)
    except OSError:
        pass
