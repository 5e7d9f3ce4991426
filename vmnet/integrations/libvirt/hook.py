"""The libvirt qemu hook: a shim into vmnet's up/down for domains that name vmnet VMs.

libvirtd runs it (as `/etc/libvirt/hooks/qemu.d/vmnet`, written by `vmnet
hook install`) as root, in its own namespaces, with a minimal environment:

    vmnet [--state-dir=DIR] [--config=PATH] [--lock-timeout=S] DOMAIN OP SUBOP EXTRA

with the domain's XML on stdin.  `prepare begin` (before libvirt opens the
taps) brings up every vmnet VM the domain's metadata names; `release end`
tears down the records that belong to this domain (by UUID) and nothing
else.  Every other operation exits 0 at once.

Rules libvirt imposes: never call back into libvirtd (it waits for us: a
deadlock), write nothing on stdout (for some operations libvirt reads it as
replacement XML), leave no child behind, and do not block forever (libvirtd
waits without a timeout, so lock waits are bounded).  A non-zero exit at
`prepare` aborts the start and libvirt shows our one stderr line.

The process entry point is vmnet.daemon.libvirt_hook (vmnetd first); this is
the hook's logic, which vmnetd runs (vmnet.daemon.doors) or that entry runs
in-process.  Import-light all the same: builtins only at import; the XML reader
(pyexpat), the config and vmnet.engine.ops are imported only when there is work.
"""

from __future__ import annotations

import sys

from vmnet.consts import DEFAULT_STATE_DIR, HOOK_LOCK_TIMEOUT, MAX_XML_BYTES
from vmnet.daemon.libvirt_hook import PREPARE, RELEASE, STARTED, read_bounded, say
from vmnet.daemon.libvirt_hook import main as main

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO

    from vmnet.integrations.libvirt.domainxml import DomainInfo

DEFAULT_LOCK_TIMEOUT = HOOK_LOCK_TIMEOUT


class Call:
    """One invocation: vmnet's settings baked in by `hook install`, libvirt's arguments.

    (A plain class: dataclasses cost ~5 ms to import, and this runs for every event.)
    """

    __slots__ = ("config", "domain", "lock_timeout", "op", "state_dir", "subop")

    def __init__(self, state_dir: str = DEFAULT_STATE_DIR, config: str | None = None,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT, domain: str = "", op: str = "",
                 subop: str = "") -> None:
        self.state_dir, self.config, self.lock_timeout = state_dir, config, lock_timeout
        self.domain, self.op, self.subop = domain, op, subop


def parse_args(argv: Sequence[str]) -> Call:
    from vmnet.errors import InputError

    opts: dict[str, str] = {}
    pos: list[str] = []
    for arg in argv:
        if arg.startswith("--") and "=" in arg and not pos:
            key, _, value = arg[2:].partition("=")
            if key not in ("state-dir", "config", "lock-timeout"):
                raise InputError(f"unknown option --{key}")
            opts[key] = value
        else:
            pos.append(arg)
    if len(pos) < 3:
        raise InputError("expected the arguments libvirt passes: DOMAIN OP SUBOP EXTRA")
    from vmnet.model import validate

    timeout = DEFAULT_LOCK_TIMEOUT if "lock-timeout" not in opts else \
        validate.duration(opts["lock-timeout"], "--lock-timeout", 0.0, 300.0)
    return Call(state_dir=opts.get("state-dir") or DEFAULT_STATE_DIR,
                config=opts.get("config") or None, lock_timeout=timeout,
                domain=pos[0], op=pos[1], subop=pos[2])


def _drain(stream: IO[bytes]) -> None:
    """Swallow stdin (bounded) so libvirt's write of the XML never blocks or fails."""
    try:
        for _ in range(MAX_XML_BYTES // 65536 + 1):
            if not stream.read(65536):
                return
    except (OSError, ValueError):
        pass


def prepare(call: Call, info: DomainInfo) -> list[str]:
    """Bring up every vmnet VM the domain names; all-or-nothing.  Returns VM names."""
    from vmnet.config import load_config, resolve_vm
    from vmnet.engine import ops
    from vmnet.engine.context import Context
    from vmnet.errors import InputError, VmnetError
    from vmnet.integrations.libvirt.domainxml import stale_interfaces

    if not info.uuid:
        raise InputError(f"domain {info.name!r}: the XML has no <uuid>")
    cfg = load_config(call.config, env={}, cache_dir=call.state_dir)
    vms = []
    for entry in info.vms:
        try:
            vm = resolve_vm(cfg, entry.name, entry.overrides(), env={})
        except VmnetError as e:
            e.message = f"domain {info.name!r}: vmnet VM {entry.name!r}: {e.message}"
            raise
        stale = stale_interfaces(info, [(n.tap, n.mac, n.network.bridge) for n in vm.nics])
        if stale:
            raise InputError(f"domain {info.name!r}: its XML does not match vmnet's config for "
                             f"VM {entry.name!r}: {'; '.join(stale)}",
                             hint=f"re-render it with `vmnet libvirt-xml {entry.name} "
                                  "--domain FILE`")
        vms.append(vm)
    # All or nothing, in one transaction: a refusal or a failure puts every record
    # (e.g. one adopted from a plain `vmnet up`) and link back as it was.
    ctx = Context(state_dir=call.state_dir, lock_timeout=call.lock_timeout).use_config(cfg)
    try:
        ops.up_many(ctx, vms, mode="hook", domain_uuid=info.uuid, refuse_held=True)
    finally:
        ctx.close()
    from vmnet.config import cache

    cache.save(call.state_dir, cfg)
    done = [vm.name for vm in vms]
    return done


def domain_records(state_dir: str, domain_uuid: str) -> list[str]:
    """VMs whose records belong to this domain (read without the lock: down re-checks)."""
    from vmnet.kernel.netns import current_cookie, current_inode
    from vmnet.state.store import StateStore

    store = StateStore(state_dir, current_inode(), current_cookie())
    import os

    if not os.path.isdir(store.dir):
        return []
    return sorted(name for name, rec in store.vms().items() if rec.domain_uuid == domain_uuid)


def started(call: Call, data: bytes) -> list[str]:
    """The domain's QEMU runs: record it as the holder of the domain's VMs, so that when
    it dies they are reaped (vmnetd's watcher, `vmnet gc`) even with libvirtd down.
    Never fails the domain's start: anything wrong here is left for `release`."""
    from vmnet.errors import VmnetError

    try:
        from vmnet.integrations.libvirt.domainxml import domain_uuid, parse_domain

        uuid = domain_uuid(parse_domain(data, "domain XML on stdin"))
        if not uuid or not domain_records(call.state_dir, uuid):
            return []
        from vmnet.engine.context import Context
        from vmnet.integrations.libvirt.probe import qemu_with_uuid
        from vmnet.state.records import Proc

        pid = qemu_with_uuid(uuid)
        holder = None if pid is None else Proc.of(pid)
        if holder is None:
            return []
        store = Context(state_dir=call.state_dir, lock_timeout=call.lock_timeout).store()
        done = []
        with store.locked(call.lock_timeout):
            for name in domain_records(call.state_dir, uuid):
                rec = store.get_vm(name)
                if rec is not None and rec.domain_uuid == uuid and rec.holder != holder:
                    rec.holder = holder
                    store.put_vm(rec, index=False)
                    done.append(name)
        return done
    except VmnetError:
        return []


def release(call: Call, name: str, uuid: str | None) -> list[str]:
    """Tear down this domain's VMs: only records carrying its UUID.

    Names come from the records, not the metadata, so VMs hot-plugged without
    metadata are released too, and a domain that names another domain's VM
    (its prepare failed) cannot touch it.
    """
    from vmnet.errors import VmnetError

    if not uuid:
        return []
    names = domain_records(call.state_dir, uuid)
    if not names:
        return []
    from vmnet.engine import ops
    from vmnet.engine.context import Context

    ctx = Context(state_dir=call.state_dir, lock_timeout=call.lock_timeout)
    errors: list[VmnetError] = []
    try:
        for vm in names:
            try:
                ops.down(ctx, vm, domain_uuid=uuid)
            except VmnetError as e:
                errors.append(e)
    finally:
        ctx.close()
    if errors:
        first = errors[0]
        first.message = f"domain {name!r}: {first.message}" + (
            f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        raise first
    return names


def run(argv: Sequence[str], stdin: IO[bytes]) -> int:
    """The hook's logic; raises VmnetError for anything a person should read."""
    call = parse_args(argv)
    if (call.op, call.subop) not in (PREPARE, STARTED, RELEASE):
        _drain(stdin)
        return 0
    data = read_bounded(stdin)
    what = "domain XML on stdin"
    if (call.op, call.subop) == STARTED:
        started(call, data)
        return 0
    if (call.op, call.subop) == PREPARE:
        from vmnet.integrations.libvirt.domainxml import read_domain

        info = read_domain(data, what)
        if info.vms:
            prepare(call, info)
    else:
        # Release needs only the UUID: garbage in the metadata must not keep
        # a domain's taps alive.
        from vmnet.integrations.libvirt.domainxml import domain_uuid, parse_domain

        root = parse_domain(data, what)
        release(call, (root.findtext("name") or call.domain).strip(), domain_uuid(root))
    return 0


def handle(args: Sequence[str], stdin: IO[bytes]) -> int:
    """The hook for one call, errors as their one line on stderr; the exit status."""
    from vmnet.errors import VmnetError

    try:
        return run(args, stdin)
    except VmnetError as e:
        say(f"vmnet: error: {e.one_line()}")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: still one line, never a traceback in libvirt's error
        say(f"vmnet: internal error: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
