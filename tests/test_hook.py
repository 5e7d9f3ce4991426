"""The libvirt hook as libvirtd runs it: a process, XML on stdin, real taps in a namespace.

libvirtd calls `HOOK DOMAIN OP SUBOP -` as root with the domain XML on stdin
and reads our exit status and stderr.  These tests do the same (the kernel
ones inside a throwaway namespace), and check `vmnet hook install/uninstall`.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import leftovers
from tests.nsutil import Netns
from tests.tapholder import hold_tap
from tests.vmnetcli import vmnet
from vmnet.config import Overrides, parse_config, resolve_vm
from vmnet.integrations.libvirt import hookinstall
from vmnet.integrations.libvirt.domainxml import override_fields
from vmnet.render.libvirt import domain_with_vm

BOTH_WAYS = True  # every test in-process and through vmnetd (tests/conftest.py)

UUID_A = "0b7e1c9a-3f4d-4e5a-8b6c-7d8e9f0a1b2c"
UUID_B = "1c8f2d0b-4a5e-4f6b-9c7d-8e9f0a1b2c3d"
OPS = [("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end"),
       ("release", "end"), ("reconnect", "begin"), ("migrate", "begin"),
       ("restore", "begin"), ("attach", "begin")]

CONFIG = """\
[networks.lan]
bridge = "br-hook"
address = "10.99.0.1/24"

[vms.vm1]
[[vms.vm1.nics]]
network = "lan"
[[vms.vm1.nics]]
network = "lan"
queues = 2

[vms.vm2]
[[vms.vm2.nics]]
network = "lan"

[vms.broken]
user = "no-such-user-vmnet"
"""

BASE = """\
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices/>
</domain>
"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<domain><name>&lol4;</name></domain>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<domain><name>&x;</name></domain>
"""
HOSTILE = {
    "billion-laughs": BILLION_LAUGHS,
    "external-entity": EXTERNAL_ENTITY,
    "huge": "<domain><name>x</name><description>" + "a" * (5 << 20) + "</description></domain>",
    "malformed": "<domain><name>x</name>",
    "binary": "\x00\x01\x02garbage",
    "empty": "",
    "not-a-domain": "<network><name>x</name></network>",
    "bad-uuid": "<domain><name>x</name><uuid>'; rm -rf /</uuid>"
                "<metadata><v:vmnet xmlns:v='urn:vmnet:libvirt:1'><v:vm name='vm1'/></v:vmnet>"
                "</metadata></domain>",
    "bad-metadata": "<domain><name>x</name><uuid>" + UUID_A + "</uuid>"
                    "<metadata><v:vmnet xmlns:v='urn:vmnet:libvirt:1'><v:vm name='vm1'>"
                    "<v:colour>red</v:colour></v:vm></v:vmnet></metadata></domain>",
}


@pytest.fixture
def cfg_path(tmp_path: Path) -> str:
    p = tmp_path / "vmnet.toml"
    p.write_text(CONFIG)
    return str(p)


@pytest.fixture
def state(state_dir: str) -> str:
    return state_dir


def domain_xml(name: str, uuid: str, vms: list[tuple[str, Overrides]], cfg_path: str) -> str:
    """A domain rendered by vmnet naming `vms` (the first through domain_with_vm)."""
    cfg = parse_config(Path(cfg_path).read_text(), cfg_path)
    xml = BASE.format(name=name, uuid=uuid)
    if not vms:
        return xml
    (first, ov), *rest = vms
    xml = domain_with_vm(xml, resolve_vm(cfg, first, ov, env={}), override_fields(ov))
    for vm, _ov in rest:  # more VMs: as hot-plug would leave them in the metadata
        entry = f"<vmnet:vm name='{vm}'/>"
        xml = xml.replace("</vmnet:vmnet>", entry + "</vmnet:vmnet>")
    return xml


def run_hook(ns: Netns | None, state: str, cfg_path: str | None, domain: str, op: str,
             subop: str, stdin: str | bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    """Run the hook exactly as the installed file does (isolated interpreter, -m)."""
    argv = [sys.executable, "-I", "-m", "vmnet.integrations.libvirt.hook",
            f"--state-dir={state}", *extra]
    if cfg_path:
        argv.append(f"--config={cfg_path}")
    argv += [domain, op, subop, "-"]
    if ns is not None:
        argv = ["ip", "netns", "exec", ns.name, *argv]
    data = stdin.encode() if isinstance(stdin, str) else stdin
    # libvirtd runs hooks with a minimal environment.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    return subprocess.run(argv, input=data, capture_output=True, env=env, timeout=60)


def one_line_error(res: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    assert res.returncode == 1, res
    assert res.stdout == b""
    err = res.stderr.decode()
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("vmnet: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def records(state: str, ns: Netns) -> dict[str, dict[str, Any]]:
    d = Path(state) / f"ns-{ns.inode}" / "vms"
    if not d.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in d.glob("*.json")}


def vmnet_links(ns: Netns) -> dict[str, dict[str, Any]]:
    return {n: lk for n, lk in ns.links().items() if n != "lo"}


# -- no kernel needed ---------------------------------------------------------
@pytest.mark.parametrize(("op", "subop"), [o for o in OPS if o not in
                                           (("prepare", "begin"), ("release", "end"))],
                         ids=lambda v: str(v))
def test_other_operations_exit_zero_at_once(op: str, subop: str, state: str,
                                             cfg_path: str) -> None:
    xml = domain_xml("d1", UUID_A, [("vm1", Overrides())], cfg_path)
    t = time.monotonic()
    res = run_hook(None, state, cfg_path, "d1", op, subop, xml)
    took = time.monotonic() - t
    assert (res.returncode, res.stdout, res.stderr) == (0, b"", b"")
    assert not leftovers(state)  # nothing written
    assert took < 2.0


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
@pytest.mark.parametrize(("op", "subop"), [("prepare", "begin"), ("release", "end")],
                         ids=["prepare", "release"])
def test_hostile_xml_is_a_clean_one_line_error(case: str, op: str, subop: str, state: str,
                                               cfg_path: str) -> None:
    res = run_hook(None, state, cfg_path, "x", op, subop, HOSTILE[case])
    if op == "release" and case == "bad-metadata":
        # Release needs only the UUID: bad metadata must not keep taps alive.
        assert (res.returncode, res.stdout, res.stderr) == (0, b"", b"")
    else:
        one_line_error(res)
    assert not leftovers(state)  # nothing written


def test_stdin_limit_is_bounded() -> None:
    import io

    from vmnet.errors import InputError
    from vmnet.integrations.libvirt import hook

    assert hook.read_bounded(io.BytesIO(b"x" * 100), limit=100) == b"x" * 100
    with pytest.raises(InputError, match="larger than"):
        hook.read_bounded(io.BytesIO(b"x" * 101), limit=100)


def test_domain_without_vmnet_metadata_is_ignored(state: str, cfg_path: str) -> None:
    for op, subop in OPS:
        res = run_hook(None, state, cfg_path, "plain", op, subop,
                       BASE.format(name="plain", uuid=UUID_A))
        assert (res.returncode, res.stdout, res.stderr) == (0, b"", b"")
    assert not leftovers(state)  # nothing written


IMPORTS = """
import io, sys
from vmnet.integrations.libvirt import hook


rc = hook.run(sys.argv[1:], io.BytesIO(sys.stdin.buffer.read()))
heavy = sorted(m for m in sys.modules
               if m.split('.')[0] in ('click', 'jinja2', 'pyroute2', 'libvirt')
               or m in ('vmnet.engine.ops', 'vmnet.cli.main'))
sys.stderr.write(f"{rc} {heavy}\\n")
"""


def test_hook_path_imports_no_click_jinja2_or_libvirt(state: str, cfg_path: str) -> None:
    xml = BASE.format(name="plain", uuid=UUID_A)
    res = subprocess.run([sys.executable, "-I", "-c", IMPORTS, f"--state-dir={state}",
                          "plain", "prepare", "begin", "-"], input=xml.encode(),
                         capture_output=True, check=True)
    assert res.stderr.decode().strip() == "0 []"  # not even vmnet.engine.ops for a foreign domain


def test_bad_arguments(state: str) -> None:
    res = run_hook(None, state, None, "d1", "prepare", "begin", "", "--bogus=1")
    one_line_error(res, "unknown option --bogus")
    res = subprocess.run([sys.executable, "-I", "-m", "vmnet.integrations.libvirt.hook"],
                         capture_output=True,
                         input=b"")
    one_line_error(res, "DOMAIN OP SUBOP")


# -- with the kernel: a throwaway namespace -----------------------------------------
@pytest.mark.kernel
def test_prepare_brings_up_release_tears_down(ns: Netns, state: str, cfg_path: str) -> None:
    xml = domain_xml("d1", UUID_A, [("vm1", Overrides())], cfg_path)
    t = time.monotonic()
    res = run_hook(ns, state, cfg_path, "d1", "prepare", "begin", xml)
    took = time.monotonic() - t
    assert (res.returncode, res.stdout, res.stderr) == (0, b"", b""), res
    links = ns.links()
    br = links["br-hook"]
    for tap, mq in (("vm1-0", False), ("vm1-1", True)):
        lk = links[tap]
        assert lk["master"] == "br-hook"
        info = lk["linkinfo"]["info_data"]
        assert info["type"] == "tap" and info["pi"] is False
        assert info["multi_queue"] is mq and info["persist"] is True
        assert info["user"] in (0, "root")  # no user named: the hook (root) owns them
        assert lk["ifalias"] == f"vmnet:vm1:{tap[-1]}"
    assert br["linkinfo"]["info_kind"] == "bridge"
    recs = records(state, ns)
    assert list(recs) == ["vm1"]
    assert recs["vm1"]["mode"] == "hook" and recs["vm1"]["domain_uuid"] == UUID_A
    assert recs["vm1"]["phase"] == "ready"
    # prepare again (a retried start) changes nothing
    assert run_hook(ns, state, cfg_path, "d1", "prepare", "begin", xml).returncode == 0
    # the lifecycle operations in between do nothing
    for op, subop in [("start", "begin"), ("started", "begin"), ("stopped", "end")]:
        assert run_hook(ns, state, cfg_path, "d1", op, subop, xml).returncode == 0
    assert set(vmnet_links(ns)) == {"br-hook", "vm1-0", "vm1-1"}
    res = run_hook(ns, state, cfg_path, "d1", "release", "end", xml)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"", b""), res
    assert vmnet_links(ns) == {}
    assert records(state, ns) == {}
    assert not (Path(state) / f"ns-{ns.inode}").exists()
    print(f"\nhook prepare (2 taps + bridge): {took * 1000:.0f} ms")


@pytest.mark.kernel
def test_broken_vm_config_fails_prepare_with_vmnets_message(ns: Netns, state: str,
                                                           cfg_path: str) -> None:
    cfg = parse_config(Path(cfg_path).read_text(), cfg_path)
    ok = resolve_vm(cfg, "vm2", Overrides(), env={})
    xml = domain_with_vm(BASE.format(name="d1", uuid=UUID_A), ok, ())
    xml = xml.replace('name="vm2"', 'name="broken"')
    res = run_hook(ns, state, cfg_path, "d1", "prepare", "begin", xml)
    one_line_error(res, "domain 'd1': vmnet VM 'broken'", "unknown user 'no-such-user-vmnet'")
    assert vmnet_links(ns) == {}
    assert not leftovers(state) or records(state, ns) == {}


@pytest.mark.kernel
def test_missing_config_file_fails_prepare(ns: Netns, state: str, cfg_path: str,
                                           tmp_path: Path) -> None:
    xml = domain_xml("d1", UUID_A, [("vm1", Overrides())], cfg_path)
    res = run_hook(ns, state, str(tmp_path / "gone.toml"), "d1", "prepare", "begin", xml)
    one_line_error(res, "gone.toml does not exist")
    assert vmnet_links(ns) == {}


@pytest.mark.kernel
def test_stale_domain_xml_is_refused(ns: Netns, state: str, cfg_path: str) -> None:
    xml = domain_xml("d1", UUID_A, [("vm1", Overrides())], cfg_path)
    stale = xml.replace('dev="vm1-1"', 'dev="other-1"')
    res = run_hook(ns, state, cfg_path, "d1", "prepare", "begin", stale)
    one_line_error(res, "does not match vmnet's config", "other-1", "re-render")
    assert vmnet_links(ns) == {}


@pytest.mark.kernel
def test_two_domains_naming_one_vm_cannot_tear_each_other_down(ns: Netns, state: str,
                                                               cfg_path: str) -> None:
    a = domain_xml("dA", UUID_A, [("vm1", Overrides())], cfg_path)
    b = domain_xml("dB", UUID_B, [("vm1", Overrides())], cfg_path)
    assert run_hook(ns, state, cfg_path, "dA", "prepare", "begin", a).returncode == 0
    before = vmnet_links(ns)
    res = run_hook(ns, state, cfg_path, "dB", "prepare", "begin", b)
    one_line_error(res, "belongs to libvirt domain " + UUID_A)
    # libvirt runs release for the domain whose start failed: it must not touch A's taps.
    res = run_hook(ns, state, cfg_path, "dB", "release", "end", b)
    assert (res.returncode, res.stderr) == (0, b"")
    assert set(vmnet_links(ns)) == set(before)
    assert records(state, ns)["vm1"]["domain_uuid"] == UUID_A
    assert run_hook(ns, state, cfg_path, "dA", "release", "end", a).returncode == 0
    assert vmnet_links(ns) == {}


@pytest.mark.kernel
def test_prepare_refuses_a_held_tap(ns: Netns, state: str, cfg_path: str) -> None:
    # `vmnet up` made the taps and some QEMU holds one: a domain may not take them.
    vmnet(ns, state, "up", "vm2", config=cfg_path, check=True)
    xml = domain_xml("d1", UUID_A, [("vm2", Overrides())], cfg_path)
    with hold_tap(ns, "vm2-0") as holder:
        res = run_hook(ns, state, cfg_path, "d1", "prepare", "begin", xml)
        one_line_error(res, "'vm2' is in use", f"vm2-0 held by pid {holder.pid}")
    assert records(state, ns)["vm2"]["mode"] == "up"
    assert records(state, ns)["vm2"]["domain_uuid"] is None
    vmnet(ns, state, "down", "vm2", config=cfg_path, check=True)
    assert vmnet_links(ns) == {}


@pytest.mark.kernel
def test_prepare_is_all_or_nothing(ns: Netns, state: str, cfg_path: str) -> None:
    # vm2's tap name is taken by a foreign interface: vm1, brought up first, is rolled back.
    ns.ip("tuntap", "add", "vm2-0", "mode", "tap")
    xml = domain_xml("d1", UUID_A, [("vm1", Overrides()), ("vm2", Overrides())], cfg_path)
    res = run_hook(ns, state, cfg_path, "d1", "prepare", "begin", xml)
    one_line_error(res, "'vm2-0' already exists and vmnet did not create it")
    assert set(vmnet_links(ns)) == {"vm2-0"}
    assert records(state, ns) == {}


@pytest.mark.kernel
def test_release_takes_down_every_record_of_the_domain(ns: Netns, state: str,
                                                       cfg_path: str) -> None:
    xml = domain_xml("d1", UUID_A, [("vm1", Overrides()), ("vm2", Overrides())], cfg_path)
    assert run_hook(ns, state, cfg_path, "d1", "prepare", "begin", xml).returncode == 0
    assert set(records(state, ns)) == {"vm1", "vm2"}
    # Even with its metadata gone (hot-plugged VMs), the UUID finds the records.
    res = run_hook(ns, state, cfg_path, "d1", "release", "end",
                   BASE.format(name="d1", uuid=UUID_A))
    assert (res.returncode, res.stderr) == (0, b"")
    assert records(state, ns) == {} and vmnet_links(ns) == {}


@pytest.mark.kernel
def test_lock_waits_are_bounded(ns: Netns, state: str, cfg_path: str) -> None:
    xml = domain_xml("d1", UUID_A, [("vm1", Overrides())], cfg_path)
    lockdir = Path(state) / f"ns-{ns.inode}"
    lockdir.mkdir(parents=True)
    with open(lockdir / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        t = time.monotonic()
        res = run_hook(ns, state, cfg_path, "d1", "prepare", "begin", xml,
                       "--lock-timeout=0.5")
        took = time.monotonic() - t
    one_line_error(res, "timed out after 0.5s waiting for vmnet's lock")
    assert took < 5
    assert vmnet_links(ns) == {}


# -- install / uninstall ------------------------------------------------------------
def settings(tmp_path: Path) -> hookinstall.HookSettings:
    return hookinstall.HookSettings(python=sys.executable, state_dir=str(tmp_path / "st"),
                                    config=str(tmp_path / "c.toml"), lock_timeout=10)


def test_install_writes_an_executable_hook_with_settings(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    res = hookinstall.install(settings(tmp_path), str(hooks))
    path = hooks / "qemu.d" / "vmnet"
    assert res == hookinstall.InstallResult(str(path), "installed")
    assert path.stat().st_mode & 0o777 == 0o755
    text = path.read_text()
    assert text.startswith(f"#!{sys.executable} -IS\n") and hookinstall.MARKER in text
    assert "from vmnet.daemon.libvirt_hook import main" in text
    assert f"--state-dir={tmp_path / 'st'}" in text and f"--config={tmp_path / 'c.toml'}" in text
    assert hookinstall.install(settings(tmp_path), str(hooks)).action == "unchanged"
    # The installed file runs, with no PATH at all, and ignores other operations.
    res2 = subprocess.run([str(path), "d", "started", "begin", "-"], input=b"<domain/>",
                          capture_output=True, env={})
    assert (res2.returncode, res2.stdout, res2.stderr) == (0, b"", b"")
    assert not (tmp_path / "st").exists()
    assert hookinstall.uninstall(str(hooks)) == str(path)
    assert not path.exists()
    assert hookinstall.uninstall(str(hooks)) is None


def test_install_never_overwrites_anothers_hook(tmp_path: Path) -> None:
    from vmnet.errors import ConflictError

    hooks = tmp_path / "hooks"
    (hooks / "qemu.d").mkdir(parents=True)
    theirs = hooks / "qemu.d" / "vmnet"
    theirs.write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(ConflictError, match="vmnet did not write it"):
        hookinstall.install(settings(tmp_path), str(hooks))
    with pytest.raises(ConflictError, match="not written by vmnet"):
        hookinstall.uninstall(str(hooks))
    assert theirs.read_text() == "#!/bin/sh\necho mine\n"
    # A symlink is never "ours", even to a file carrying the marker.
    theirs.unlink()
    ours = tmp_path / "elsewhere"
    ours.write_text(hookinstall.MARKER)
    theirs.symlink_to(ours)
    with pytest.raises(ConflictError):
        hookinstall.install(settings(tmp_path), str(hooks))
    assert theirs.is_symlink()
    # The main `qemu` hook is someone else's business entirely.
    theirs.unlink()
    (hooks / "qemu").write_text("#!/bin/sh\n")
    hookinstall.install(settings(tmp_path), str(hooks))
    assert (hooks / "qemu").read_text() == "#!/bin/sh\n"


def test_install_refuses_an_interpreter_without_vmnet(tmp_path: Path) -> None:
    from vmnet.errors import NotFoundError

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    bad = hookinstall.HookSettings(python="/usr/bin/python3", state_dir="/run/vmnet",
                                   config=None, lock_timeout=10)
    if subprocess.run(["/usr/bin/python3", "-I", "-c", "import vmnet.integrations.libvirt.hook"],
                      capture_output=True).returncode == 0:
        pytest.skip("the system python can import vmnet")
    with pytest.raises(NotFoundError, match=r"cannot import vmnet\.integrations\.libvirt\.hook"):
        hookinstall.install(bad, str(hooks))
    assert not (hooks / "qemu.d" / "vmnet").exists()


def test_cli_install_and_uninstall(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    state = str(tmp_path / "st")
    res = vmnet(None, state, "hook", "install", "--hooks-dir", str(hooks), check=True)
    assert f"installed {hooks}/qemu.d/vmnet" in res.stdout
    assert "SIGHUP" in res.stdout
    assert f"--state-dir={state}" in (hooks / "qemu.d" / "vmnet").read_text()
    res = vmnet(None, state, "hook", "uninstall", "--hooks-dir", str(hooks), check=True)
    assert res.stdout.startswith("removed ")
    res = vmnet(None, state, "hook", "install", "--hooks-dir", str(tmp_path / "nope"))
    assert res.returncode == 1 and res.stderr.startswith("vmnet: error: libvirt's hooks dir")
    assert res.stderr.count("\n") == 1


@pytest.mark.kernel
def test_cli_install_refuses_netns(ns: Netns, tmp_path: Path) -> None:
    res = vmnet(ns, str(tmp_path / "st"), "hook", "install", "--hooks-dir", str(tmp_path))
    assert res.returncode == 2 and "--netns does not apply" in res.stderr
    assert not (tmp_path / "qemu.d").exists()


@pytest.mark.kernel
def test_failed_prepare_gives_back_an_adopted_record(ns: Netns, state: str,
                                                     cfg_path: str) -> None:
    vmnet(ns, state, "up", "vm1", config=cfg_path, check=True)
    before = records(state, ns)["vm1"]
    ns.ip("tuntap", "add", "vm2-0", "mode", "tap")  # vm2 cannot come up
    xml = domain_xml("d1", UUID_A, [("vm1", Overrides()), ("vm2", Overrides())], cfg_path)
    one_line_error(run_hook(ns, state, cfg_path, "d1", "prepare", "begin", xml), "vm2-0")
    assert records(state, ns) == {"vm1": before}  # still a plain `up`, no domain
    assert {"vm1-0", "vm1-1", "br-hook"} <= set(vmnet_links(ns))
    vmnet(ns, state, "down", "vm1", config=cfg_path, check=True)
