"""A config file compiled for the hot path (vmnet.hot), which cannot afford tomllib.

tomllib costs ~15 ms to import (it pulls in `re`), three times the whole
budget of `vmnet up VM` on the hot path.  So the full path, whenever it has
parsed and validated a config file, stores what the hot path needs, as
marshal data under the state directory, named by a hash of the file's bytes:

    STATE_DIR/config-cache/<sha256 of the file>

An edited file has another hash, so a stale entry is never read; the hot
path finds no entry and hands the request to the full path, which parses
the new file and writes its entry.  What is stored is the full path's own
resolution (vmnet.config.resolve_vm) of every configured VM's NICs, so the
hot path does not re-implement config semantics.  Users and groups are not
stored: they are looked up when used, as the full path does.
"""

from __future__ import annotations

import marshal
import os

from vmnet._hash import sha256
from vmnet.errors import VmnetError
from vmnet.state.files import check_trusted_dir, write_file

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from typing import Any

    from vmnet.config import Config
    from vmnet.model import Vm

VERSION = 1
SUBDIR = "config-cache"
KEEP = 8  # entries kept (the newest): a host's config changes rarely


def digest(raw: bytes) -> str:
    """The name of a config file's compiled form: a hash of its bytes and our format."""
    return str(sha256(b"vmnet-config-cache/%d\0" % VERSION + raw).hexdigest())


def compile_config(cfg: Config, resolved: dict[str, Vm] | None = None) -> dict[str, Any]:
    """What the hot path needs of `cfg`, as plain data (marshal-able).

    networks: name -> (bridge, uplink, mtu); vms: name -> (user, group, nics)
    with nics as (index, tap, mac, queues, mtu, vnet_hdr, model, network), or
    None for a VM the full path cannot resolve whatever the user database says.
    `resolved`: VMs the caller resolved from `cfg` without overrides (a bulk `up`),
    so they are not resolved twice (their NICs do not depend on the owner).
    """
    from vmnet.config import Overrides, resolve_vm

    vms: dict[str, Any] = {}
    for name, spec in cfg.vms.items():
        vm = (resolved or {}).get(name)
        if vm is None:
            try:
                # Numeric ids always resolve: the NICs do not depend on the owner.
                vm = resolve_vm(cfg, name, Overrides(user="0", group="0"), env={})
            except VmnetError:
                vms[name] = None
                continue
        vms[name] = (spec.user, spec.group,
                     tuple((n.index, n.tap, n.mac, n.queues, n.mtu, n.vnet_hdr, n.model,
                            n.network.name) for n in vm.nics))
    return {"version": VERSION, "default_network": cfg.default_network,
            "networks": {name: (n.bridge, n.uplink, n.mtu) for name, n in cfg.networks.items()},
            "vms": vms}


def _dir(state_root: str) -> str:
    return os.path.join(state_root, SUBDIR)


def save(state_root: str, cfg: Config, resolved: dict[str, Vm] | None = None) -> None:
    """Store `cfg`'s compiled form if it is not there yet.  Best effort, silent:
    without it the hot path hands requests to the full path."""
    if cfg.digest is None:
        return
    d = _dir(state_root)
    path = os.path.join(d, cfg.digest)
    try:
        check_trusted_dir(state_root, top=True)
        if os.path.exists(path):
            return
        if not os.path.isdir(d):
            os.mkdir(d, 0o700)
        check_trusted_dir(d)
        write_file(path, marshal.dumps(compile_config(cfg, resolved)))
        entries = sorted((e for e in os.scandir(d) if ".tmp." not in e.name),
                         key=lambda e: e.stat().st_mtime_ns, reverse=True)
        for old in entries[KEEP:]:
            os.unlink(old.path)
    except (OSError, VmnetError, ValueError):
        pass


def load(state_root: str, raw: bytes) -> dict[str, Any] | None:
    """The compiled form of a config file's bytes, None if there is none (or it is unusable)."""
    d = _dir(state_root)
    try:
        check_trusted_dir(state_root, top=True)
        check_trusted_dir(d)
        with open(os.path.join(d, digest(raw)), "rb") as f:
            data = marshal.loads(f.read())
    except (OSError, VmnetError, ValueError, EOFError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return None
    return data
