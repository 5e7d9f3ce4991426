"""The host changes between `up` and `down`: vmnet re-checks before every release.

vmnet never deletes, detaches or downs what has since started to carry the
host's traffic; "carries host traffic" is one definition (vmnet.engine.observe):
any address but IPv6 link-local, any route or nexthop in any table that uses
the interface (multipath legs included), any policy rule naming it.
"""

from __future__ import annotations

import pytest

from tests.nsutil import Netns
from tests.vmnetcli import vmnet

BOTH_WAYS = True  # every test in-process and through vmnetd (tests/conftest.py)


pytestmark = pytest.mark.kernel


def _uplink(ns: Netns, name: str = "upl") -> None:
    ns.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")


@pytest.mark.parametrize(("setup", "why"), [
    (lambda ns: ns.ip("addr", "add", "169.254.9.9/16", "scope", "link", "dev", "upl"),
     "address 169.254.9.9/16"),
    (lambda ns: (ns.ip("link", "set", "upl", "up"),
                 ns.ip("route", "add", "default", "dev", "upl", "table", "100")),
     "route default table 100"),
    (lambda ns: ns.ip("rule", "add", "iif", "upl", "table", "100"), "policy rule"),
    (lambda ns: ns.ip("rule", "add", "oif", "upl", "table", "100"), "policy rule"),
    (lambda ns: (ns.ip("link", "add", "up2", "type", "veth", "peer", "name", "up2p"),
                 ns.ip("link", "set", "upl", "up"), ns.ip("link", "set", "up2", "up"),
                 ns.ip("route", "add", "198.51.100.0/24", "nexthop", "dev", "upl",
                       "nexthop", "dev", "up2")),
     "route 198.51.100.0/24"),
    (lambda ns: (ns.ip("link", "set", "upl", "up"), ns.ip("link", "set", "uplp", "up"),
                 ns.ip("nexthop", "add", "id", "7", "dev", "upl")),
     "nexthop id 7"),
], ids=["scope-link-address", "default-route-table-100", "rule-iif", "rule-oif",
        "multipath-leg", "nexthop-object"])
def test_an_uplink_that_carries_host_traffic_is_refused(ns: Netns, state_dir: str,
                                                        setup: object, why: str) -> None:
    _uplink(ns)
    setup(ns)  # type: ignore[operator]
    before = ns.links()
    r = vmnet(ns, state_dir, "up", "vm1", "--bridge", "br1", "--uplink", "upl")
    assert r.returncode == 1 and "carries the host's traffic" in r.stderr and why in r.stderr, \
        r.stderr
    assert ns.links().keys() == before.keys()


def test_ipv6_link_local_alone_is_not_host_traffic(ns: Netns, state_dir: str) -> None:
    _uplink(ns)
    ns.ip("link", "set", "upl", "up")  # gains fe80::/64 and its kernel routes
    vmnet(ns, state_dir, "up", "vm1", "--bridge", "br1", "--uplink", "upl", check=True)
    assert ns.links()["upl"]["master"] == "br1"


def test_down_keeps_a_bridge_the_admin_gave_an_address_and_a_route(ns: Netns,
                                                                   state_dir: str) -> None:
    """The issue's example: after `up`, the admin puts 192.0.2.10/24 and a default route on
    vmnet's bridge and an address on the uplink; `down` keeps the bridge with both, detaches
    the uplink but leaves it up, and says so."""
    _uplink(ns)
    vmnet(ns, state_dir, "up", "vm1", "--bridge", "br1", "--uplink", "upl", check=True)
    ns.ip("addr", "add", "192.0.2.10/24", "dev", "br1")
    ns.ip("route", "add", "default", "via", "192.0.2.1", "dev", "br1")
    ns.ip("addr", "add", "198.51.100.7/24", "dev", "upl")
    table = vmnet(ns, state_dir, "status", check=True).stdout
    assert "bridge br1: carries the host's traffic vmnet did not add (address " \
        "192.0.2.10/24, route default)" in table and "will keep it" in table
    r = vmnet(ns, state_dir, "down", "vm1", check=True)
    assert "bridge br1: kept" in r.stderr and "address 192.0.2.10/24" in r.stderr
    assert "uplink upl: detached but left up" in r.stderr
    links = ns.links()
    assert "br1" in links and "vm1-0" not in links
    assert links["upl"].get("master") is None and "UP" in links["upl"]["flags"]
    assert "192.0.2.10" in ns.ip("addr", "show", "br1").stdout
    assert "default via 192.0.2.1 dev br1" in ns.ip("route").stdout
    # The bridge is the admin's now: gc and a later down leave it alone.
    vmnet(ns, state_dir, "gc", check=True)
    assert "br1" in ns.links()


def test_down_deletes_a_bridge_that_carries_only_its_own_address(ns: Netns,
                                                                 state_dir: str,
                                                                 tmp_path: object) -> None:
    import os

    cfg = os.path.join(str(tmp_path), "c.toml")
    with open(cfg, "w") as f:
        f.write('[networks.n]\nbridge = "br2"\naddress = "10.20.0.1/24"\n'
                '[defaults]\nnetwork = "n"\n')
    vmnet(ns, state_dir, "up", "vm1", config=cfg, check=True)
    r = vmnet(ns, state_dir, "down", "vm1", config=cfg, check=True)
    assert "bridge br2 released" in r.stdout and "br2" not in ns.links()


@pytest.mark.in_process  # VMNET_FAULT wraps the in-process engine
def test_gc_says_everything_it_removes_dry_run_or_not(ns: Netns, state_dir: str) -> None:
    """A crashed `up` (killed after its steps): gc --dry-run and gc name the tap, the
    uplink detach and the bridge deletion, as commands, and do exactly that."""
    _uplink(ns)
    r = vmnet(ns, state_dir, "up", "vm1", "--bridge", "br1", "--uplink", "upl",
              env={"VMNET_FAULT": "up:applied"})
    assert r.returncode == -9
    dry = vmnet(ns, state_dir, "gc", "--dry-run", check=True).stdout
    n = ns.name
    for words in ("would clear vm1: rolled back", "removed vm1-0",
                  f"ip -n {n} link set upl nomaster down", f"ip -n {n} link del br1"):
        assert words in dry, dry
    assert "br1" in ns.links()
    real = vmnet(ns, state_dir, "gc", check=True).stdout
    assert real.replace("cleared vm1", "would clear vm1", 1).splitlines()[0] == \
        dry.splitlines()[0]
    links = ns.links()
    assert "br1" not in links and "vm1-0" not in links and links["upl"].get("master") is None


def test_an_uplink_vmnet_brought_up_goes_down_again_after_its_bridge_was_recreated(
        ns: Netns, state_dir: str) -> None:
    """The admin deletes vmnet's bridge (the uplink stays up, freed) and makes it again;
    `up` re-attaches the uplink; `down` still puts it back down, as vmnet found it."""
    _uplink(ns)
    vmnet(ns, state_dir, "up", "vm1", "--bridge", "br1", "--uplink", "upl", check=True)
    ns.ip("link", "del", "br1")
    ns.ip("link", "add", "br1", "type", "bridge")
    assert "UP" in ns.links()["upl"]["flags"]
    vmnet(ns, state_dir, "up", "vm1", "--bridge", "br1", "--uplink", "upl", check=True)
    assert ns.links()["upl"]["master"] == "br1"
    vmnet(ns, state_dir, "down", "vm1", check=True)
    upl = ns.links()["upl"]
    assert upl.get("master") is None and "UP" not in upl["flags"]
    assert "br1" in ns.links()  # the re-created bridge is the admin's: never deleted


def test_a_renamed_tap_is_reported_as_renamed(ns: Netns, state_dir: str) -> None:
    """Someone renames vmnet's tap: status says `renamed to X`, `up` refuses with how to
    mend it (instead of making a second tap with the same mark), `down` leaves it alone
    and says so."""
    import json

    vmnet(ns, state_dir, "up", "vm1", check=True)
    ns.ip("link", "set", "vm1-0", "name", "oops0")
    st = json.loads(vmnet(ns, state_dir, "status", "--json", "vm1", check=True).stdout)
    assert st["vms"][0]["nics"][0]["state"] == "renamed to oops0"
    r = vmnet(ns, state_dir, "up", "vm1")
    assert r.returncode == 1 and "was renamed to 'oops0'" in r.stderr
    assert "ip link set oops0 name vm1-0" in r.stderr and "vm1-0" not in ns.links()
    ns.ip("link", "set", "oops0", "nomaster")  # off the bridge: found by its mark alone
    r = vmnet(ns, state_dir, "up", "vm1")
    assert r.returncode == 1 and "was renamed to 'oops0'" in r.stderr
    r = vmnet(ns, state_dir, "down", "vm1", check=True)
    assert "vm1-0: renamed to oops0 by someone; left alone" in r.stderr
    assert "oops0" in ns.links()


@pytest.mark.parametrize(("change", "state", "bridge_after"), [
    (lambda ns: (ns.ip("link", "add", "bradm", "type", "bridge"),
                 ns.ip("link", "set", "vm1-0", "master", "bradm")), "detached", False),
    (lambda ns: ns.ip("link", "set", "vm1-0", "down"), "down", False),
    (lambda ns: ns.ip("link", "set", "vm1-0", "mtu", "1300"), "ok", False),
    (lambda ns: ns.ip("link", "set", "vm1-0", "nomaster"), "detached", False),
    (lambda ns: ns.ip("rule", "add", "iif", "br1", "table", "100"), "ok", True),
], ids=["re-mastered", "set-down", "mtu", "nomaster", "rule-on-bridge"])
def test_every_kind_of_drift_status_shows_and_down_stays_safe(
        ns: Netns, state_dir: str, change: object, state: str, bridge_after: bool) -> None:
    """After each change an admin can make between `up` and `down`, `status` shows it and
    `down` removes only vmnet's tap, keeping a bridge that carries the host's traffic."""
    import json

    vmnet(ns, state_dir, "up", "vm1", "--bridge", "br1", check=True)
    change(ns)  # type: ignore[operator]
    st = json.loads(vmnet(ns, state_dir, "status", "--json", check=True).stdout)
    assert st["vms"][0]["nics"][0]["state"] == state
    r = vmnet(ns, state_dir, "down", "vm1", check=True)
    assert "vm1-0" not in ns.links(), r.stderr
    assert ("br1" in ns.links()) == bridge_after, r.stdout + r.stderr
    vmnet(ns, state_dir, "gc", check=True)
    assert ("br1" in ns.links()) == bridge_after
