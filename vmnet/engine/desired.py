"""What a VM should look like: its record, once it is up, with any new flags on top.

The rule (README, "Everyday use"): what a VM was brought up with, flags or
config, is recorded, and is what `status`, `qemu-args`, `libvirt-xml`, `run`
and the ifup script use.  A later `up` with no flags asks for exactly that
again (a no-op, or the repair of a detached tap); a later `up` with flags asks
for the recorded settings changed by those flags, which the planner applies
where that is safe for a running guest and refuses otherwise.

The record becomes a VM specification of the config's own kind and goes
through the one resolution (vmnet.config.resolve_vm), so flags mean the same
on a first `up` and on a later one.
"""

from __future__ import annotations

from vmnet.config import Config, NicSpec, Overrides, VmSpec, resolve_vm
from vmnet.errors import InputError
from vmnet.model import Network

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Mapping

    from vmnet.engine.plan import BridgeRecords
    from vmnet.model import Vm
    from vmnet.state.records import VmRecord

# NIC settings the rendered options and the taps depend on (what qemu-args describes).
RENDERED = ("tap", "bridge", "mac", "queues", "vnet_hdr", "model")


def as_config(cfg: Config, rec: VmRecord, bridges: BridgeRecords) -> Config:
    """`cfg` with VM `rec.vm` specified exactly as its record says it was brought up."""
    networks = dict(cfg.networks)
    nics = []
    for n in sorted(rec.nics, key=lambda n: n.index):
        net = networks.get(n.network)
        if n.ovn and (net is None or net.ovn is None):  # a network gone from the config
            from vmnet.kinds.ovn import recorded

            got = recorded(n)
            assert got is not None
            net = Network(name=n.network, bridge=n.bridge, kind="ovn", ovn=got[0])
        elif net is None or net.bridge != n.bridge:  # e.g. `up --bridge`: named after it
            net = next((x for x in networks.values() if x.bridge == n.bridge),
                       Network(name=n.bridge, bridge=n.bridge))
        b = bridges.get(n.bridge)
        if b is not None and b.uplink_attached and b.uplink and net.uplink != b.uplink:
            net = net.with_uplink(b.uplink)
        networks[net.name] = net
        nics.append(NicSpec(network=net.name, mac=n.mac, queues=n.queues, mtu=n.mtu,
                            tap=n.tap, vnet_hdr=n.vnet_hdr, model=n.model,
                            ip=n.ip if net.l3 or net.ovn else None,
                            port=str(n.ovn["port"]) if n.ovn else None, **n.policy_spec()))
    owner, group = rec.nics[0].owner, rec.nics[0].group
    spec = VmSpec(user=None if owner is None else str(owner),
                  group=None if group is None else str(group), nics=tuple(nics))
    return cfg.with_vm(rec.vm, spec, networks)


def desired(cfg: Config, name: str, ov: Overrides, rec: VmRecord | None,
            bridges: BridgeRecords, env: Mapping[str, str] | None = None) -> Vm:
    """The VM `up` should make: from its record if it has one, else from the config."""
    if rec is None:
        return resolve_vm(cfg, name, ov, env=env)
    return resolve_vm(as_config(cfg, rec, bridges), name, ov, env=env)


def as_recorded(cfg: Config, name: str, ov: Overrides, rec: VmRecord | None,
                bridges: BridgeRecords, env: Mapping[str, str] | None = None) -> Vm:
    """The VM to render or run: the recorded one.  Flags that would describe other taps
    than the ones `up` made are refused, with how to change them."""
    vm = desired(cfg, name, ov, rec, bridges, env)
    if rec is None:
        return vm
    by_tap = {n.tap: n for n in rec.nics}
    diffs = []
    for nic in vm.nics:
        old = by_tap.get(nic.tap)
        if old is None:
            diffs.append(f"a NIC {nic.index} ({nic.tap}) it does not have")
            continue
        now = {"tap": nic.tap, "bridge": nic.network.bridge, "mac": nic.mac,
               "queues": nic.queues, "vnet_hdr": nic.vnet_hdr, "model": nic.model}
        diffs += [f"{k} {_show(now[k])} on {nic.tap} (it is up with "
                  f"{_show(getattr(old, k))})" for k in RENDERED if getattr(old, k) != now[k]]
    if diffs:
        raise InputError(f"VM {name!r} is up; these flags describe {'; '.join(diffs[:3])}",
                         hint=f"change it with `vmnet up {name}` and the same flags, or "
                              "drop them here")
    return vm


def _show(value: object) -> str:
    return "on" if value is True else "off" if value is False else str(value)
