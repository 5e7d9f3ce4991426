"""Hostile and broken input at every door: CLI, config file, qemu ifup/ifdown, libvirt hook.

Each case: a non-zero exit, exactly one error line, no traceback, the
culprit named, and the host (links, addresses, vmnet's state files) exactly
as before.  The cases here add to tests/test_bad_input.py (imported for its
checker and counted in the figures, not run twice).

Then hook XML built to hurt a parser: entity expansion (billion laughs,
quadratic blow-up), external entities and parameter entities pointing at a
secret file, a FIFO and a listening socket, XInclude, a huge document, an
endless stdin and deep nesting.  Each is refused (or ignored) without
expanding or fetching anything: no secret in the output, no connection, no
read of the FIFO, the hook's peak memory small and its time short.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests import figures
from tests.nsutil import Netns
from tests.test_bad_input import CASES as BAD_INPUT_CLI
from tests.test_bad_input import CONFIGS as BAD_INPUT_CONFIGS
from tests.test_bad_input import check_clean_failure
from tests.test_crash import SYNC_LINKWATCH, snapshot_diff
from tests.vmnetcli import host_snapshot, vmnet

pytestmark = pytest.mark.kernel

UUID = "3d5e7f90-1a2b-4c3d-8e4f-5a6b7c8d9e0f"
LONG = "x" * 16
BIN = Path(sys.executable).parent
META = "<metadata><v:vmnet xmlns:v='urn:vmnet:libvirt:1'>{}</v:vmnet></metadata>"

# -- the CLI (new cases; test_bad_input.CASES has the basic ones) ---------------------------
CLI: list[tuple[str, list[str], str]] = [
    ("bridge-empty", ["up", "vm1", "--bridge", ""], "''"),
    ("bridge-dot", ["up", "vm1", "--bridge", "."], "'.'"),
    ("bridge-percent", ["up", "vm1", "--bridge", "br%d"], "br%d"),
    ("bridge-control-char", ["up", "vm1", "--bridge", "br\x01"], "br\\x01"),
    ("bridge-newline", ["up", "vm1", "--bridge", "br\nx"], "br\\nx"),
    ("bridge-nbsp-byte", ["up", "vm1", "--bridge", "b\u00e0"], "0xa0"),
    ("bridge-is-loopback", ["up", "vm1", "--bridge", "lo"], "'lo'"),
    ("uplink-tab", ["up", "vm1", "--uplink", "eth\t0"], "eth\\t0"),
    ("uplink-loopback", ["up", "vm1", "--uplink", "lo"], "lo"),
    ("vm-newline", ["up", "vm\n1"], "vm\\n1"),
    ("vm-nul-like", ["up", "vm\x7f"], "vm\\x7f"),
    ("vm-dot", ["up", "."], "'.'"),
    ("user-uid-too-big", ["up", "vm1", "--user", "4294967295"], "out of range"),
    ("user-negative", ["up", "vm1", "--user", "-1"], "'-1'"),
    ("group-negative", ["up", "vm1", "--group", "-5"], "'-5'"),
    ("mac-broadcast", ["up", "vm1", "--mac", "ff:ff:ff:ff:ff:ff"], "multicast"),
    ("mac-zero", ["up", "vm1", "--mac", "00:00:00:00:00:00"], "00:00:00:00:00:00"),
    ("mac-dashes", ["up", "vm1", "--mac", "52-54-00-00-00-01"], "52-54-00-00-00-01"),
    ("mac-trailing-space", ["up", "vm1", "--mac", "52:54:00:00:00:01 "], "52:54:00:00:00:01"),
    ("queues-huge", ["up", "vm1", "--queues", "9" * 30], "--queues"),
    ("nics-33", ["up", "vm1", "--nics", "33"], "--nics"),
    ("mtu-word", ["up", "vm1", "--mtu", "jumbo"], "jumbo"),
    ("model-option-injection", ["up", "vm1", "--model", "e1000,romfile=/etc/shadow"],
     "romfile"),
    ("model-empty", ["up", "vm1", "--model", ""], "--model"),
    ("lock-timeout-nan", ["--lock-timeout", "nan", "up", "vm1"], "nan"),
    ("lock-timeout-negative", ["--lock-timeout", "-1", "up", "vm1"], "-1"),
    ("state-dir-missing-parent", ["--state-dir", "/nonexistent/vmnet", "up", "vm1"],
     "/nonexistent/vmnet"),
    ("state-dir-through-a-file", ["--state-dir", "/etc/passwd/vmnet", "up", "vm1"],
     "/etc/passwd/vmnet"),
    ("netns-traversal", ["--netns", "../../proc/1/ns/net", "up", "vm1"], "../../proc/1/ns/net"),
    ("all-and-names", ["down", "--all", "vm1"], "--all"),
    ("down-vm-too-long", ["down", "v" * 65], "longer than 64"),
    ("qemu-args-bad-mode", ["qemu-args", "vm1", "--mode", "shell"], "shell"),
    ("domain-file-missing", ["libvirt-xml", "vm1", "--domain", "/nonexistent.xml"],
     "/nonexistent.xml"),
    ("domain-file-empty", ["libvirt-xml", "vm1", "--domain", "/dev/null"], "malformed"),
    ("unknown-command", ["explode"], "explode"),
]

# -- the config file ---------------------------------------------------------------------
CONFIGS: list[tuple[str, str | bytes, str]] = [
    ("networks-not-a-table", "networks = 5\n", "[networks]"),
    ("vms-not-a-table", "vms = 'vm1'\n", "[vms]"),
    ("user-boolean", "[vms.vm1]\nuser = true\n", "user"),
    ("group-negative", "[vms.vm1]\ngroup = -1\n", "group"),
    ("nics-not-an-array", "[vms.vm1]\nnics = 'eth0'\n", "nics"),
    ("nic-not-a-table", "[vms.vm1]\nnics = [1]\n", "nics[0]"),
    ("nested-too-deep", "x = " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("not-utf8", b"[vms.vm1]\nuser = '\xff\xfe'\n", "not UTF-8"),
    ("nul-byte", "[vms.vm1]\nuser = \"a\x00b\"\n", "malformed TOML"),
    ("vm-name-slash", "[vms.\"a/b\"]\n", "a/b"),
    ("duplicate-default-bridge", "[networks.n]\nbridge = 'vmnet0'\n", "vmnet0"),
    ("defaults-unknown-network", "[defaults]\nnetwork = 'nope'\n", "nope"),
    ("model-injection", "[vms.vm1]\n[[vms.vm1.nics]]\nmodel = 'e1000,romfile=/x'\n",
     "romfile"),
    ("address-multicast", "[networks.n]\nbridge = 'b'\naddress = '224.0.0.1/4'\n",
     "224.0.0.1"),
    ("mtu-too-big", "[networks.n]\nbridge = 'b'\nmtu = 65522\n", "65522"),
    ("uplink-is-bridge", "[networks.n]\nbridge = 'b'\nuplink = 'b'\n", "'b'"),
    ("mtu-float", "[networks.n]\nbridge = 'b'\nmtu = 1500.0\n", "mtu"),
    ("duplicate-key", "[vms.vm1]\nuser = '1'\nuser = '2'\n", "line 3"),
]

# -- QEMU's ifup/ifdown argument --------------------------------------------------------------
IFUP = str(BIN / "vmnet-qemu-ifup")
IFDOWN = str(BIN / "vmnet-qemu-ifdown")
SCRIPTS: list[tuple[str, str, list[str], str]] = [
    ("ifup-no-argument", IFUP, [], "exactly one argument"),
    ("ifup-two-arguments", IFUP, ["a", "b"], "exactly one argument"),
    ("ifup-empty", IFUP, [""], "non-empty"),
    ("ifup-traversal", IFUP, ["../../etc/passwd"], "../../etc/passwd"),
    ("ifup-too-long", IFUP, [LONG], LONG),
    ("ifup-newline", IFUP, ["tap\n0"], "tap\\n0"),
    ("ifup-shell-chars", IFUP, ["t;reboot"], "t;reboot"),  # a legal name, but no such tap
    ("ifup-option-like", IFUP, ["-h"], "-h"),
    ("ifup-loopback", IFUP, ["lo"], "not a tap"),
    ("ifup-veth", IFUP, ["veth-x"], "not a tap"),
    ("ifup-missing-bridge", IFUP, ["t-orphan"], "does not exist"),
    ("ifdown-slash", IFDOWN, ["a/b"], "a/b"),
    ("ifdown-loopback", IFDOWN, ["lo"], "not a tap"),
    ("ifdown-colon", IFDOWN, ["br0:1"], "br0:1"),
    ("ifdown-no-argument", IFDOWN, [], "exactly one argument"),
]


def vm_meta(inner: str) -> str:
    return META.format(inner)


def domain(body: str, uuid: str | None = UUID) -> str:
    u = f"<uuid>{uuid}</uuid>" if uuid else ""
    return f"<domain type='qemu'><name>hostile</name>{u}{body}<devices/></domain>"


# -- the hook's stdin (prepare begin) ---------------------------------------------------------
HOOK: list[tuple[str, str | bytes, str]] = [
    ("no-uuid", domain(vm_meta("<v:vm name='vm1'/>"), uuid=None), "no <uuid>"),
    ("vm-name-traversal", domain(vm_meta("<v:vm name='../../etc'/>")), "../../etc"),
    ("vm-without-name", domain(vm_meta("<v:vm/>")), "without a name"),
    ("vm-named-twice", domain(vm_meta("<v:vm name='vm1'/><v:vm name='vm1'/>")),
     "named twice"),
    ("unknown-field", domain(vm_meta("<v:vm name='vm1'><v:ram>4</v:ram></v:vm>")),
     "<ram>"),
    ("bridge-slash", domain(vm_meta("<v:vm name='vm1'><v:bridge>br/0</v:bridge></v:vm>")),
     "br/0"),
    ("queues-exponent", domain(vm_meta("<v:vm name='vm1'><v:queues>1e9</v:queues></v:vm>")),
     "1e9"),
    ("nics-huge", domain(vm_meta("<v:vm name='vm1'><v:nics>99999999999</v:nics></v:vm>")),
     "99999999999"),
    ("mac-multicast", domain(vm_meta("<v:vm name='vm1'><v:mac>01:00:5e:00:00:01</v:mac>"
                                     "</v:vm>")), "multicast"),
    ("vnet-hdr-maybe", domain(vm_meta("<v:vm name='vm1'><v:vnet-hdr>maybe</v:vnet-hdr>"
                                      "</v:vm>")), "maybe"),
    ("unknown-user", domain(vm_meta("<v:vm name='vm1'><v:user>no-such-user-vmnet</v:user>"
                                    "</v:vm>")), "no-such-user-vmnet"),
    ("model-injection", domain(vm_meta("<v:vm name='vm1'><v:model>e1000,romfile=/x</v:model>"
                                       "</v:vm>")), "romfile"),
    ("field-twice", domain(vm_meta("<v:vm name='vm1'><v:mtu>1500</v:mtu><v:mtu>9000</v:mtu>"
                                   "</v:vm>")), "twice"),
    ("uuid-injection", domain(vm_meta("<v:vm name='vm1'/>"), uuid="$(reboot)"), "$(reboot)"),
    ("element-in-wrong-namespace", domain(
        "<metadata><v:vmnet xmlns:v='urn:vmnet:libvirt:1'><vm name='vm1'/></v:vmnet>"
        "</metadata>"), "<vm>"),
    ("utf7-declared", b"<?xml version='1.0' encoding='UTF-7'?><domain/>", "malformed"),
    ("unknown-encoding", b"<?xml version='1.0' encoding='x-vmnet'?><domain/>", "x-vmnet"),
    ("truncated", domain(vm_meta("<v:vm name='vm1'/>"))[:-20], "malformed"),
    ("not-a-domain", "<network><name>n</name></network>", "<network>"),
    ("binary", b"\x00\xff\xfe" * 100, "malformed"),
]


# -- the runner ------------------------------------------------------------------------------
@pytest.fixture
def host(ns: Netns, state_dir: str, tmp_path: Path) -> tuple[Netns, str, str]:
    """A namespace with something to lose: an admin's veth pair, an idle vmnet VM on its
    bridge (state files exist) and a tap that is on no bridge."""
    ns.ip("link", "add", "veth-x", "type", "veth", "peer", "name", "veth-y")
    ns.ip("tuntap", "add", "t-orphan", "mode", "tap")
    cfg = tmp_path / "vmnet.toml"
    cfg.write_text("[vms.t-orphan-vm]\n[[vms.t-orphan-vm.nics]]\ntap = 't-orphan'\n"
                   "[networks.gone]\nbridge = 'br-gone'\n"
                   "[defaults]\nnetwork = 'gone'\n")
    cfg.chmod(0o644)
    r = vmnet(ns, state_dir, "up", "keep", "--bridge", "br-keep")
    assert r.returncode == 0, r.stderr
    ns.run(sys.executable, "-c", SYNC_LINKWATCH, *ns.links())  # operstates final now
    return ns, state_dir, str(cfg)


def one_error_line(stderr: str, prefix: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith((prefix, "Error:"))]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize("argv,culprit", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_hostile_cli(host: tuple[Netns, str, str], argv: list[str], culprit: str) -> None:
    ns, state_dir, _cfg = host
    before = host_snapshot(ns, state_dir)
    r = vmnet(ns, state_dir, *argv)
    check_clean_failure(r, culprit)
    assert not snapshot_diff(before, host_snapshot(ns, state_dir))


@pytest.mark.parametrize("text,culprit", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_hostile_config(host: tuple[Netns, str, str], tmp_path: Path, text: str | bytes,
                        culprit: str) -> None:
    ns, state_dir, _cfg = host
    path = tmp_path / "hostile.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    before = host_snapshot(ns, state_dir)
    r = vmnet(ns, state_dir, "up", "vm1", config=str(path))
    check_clean_failure(r, culprit)
    assert host_snapshot(ns, state_dir) == before


@pytest.mark.parametrize("script,argv,culprit", [c[1:] for c in SCRIPTS],
                         ids=[c[0] for c in SCRIPTS])
def test_hostile_ifup_ifdown_argument(host: tuple[Netns, str, str], script: str,
                                      argv: list[str], culprit: str) -> None:
    ns, state_dir, cfg = host
    before = host_snapshot(ns, state_dir)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "VMNET_STATE_DIR": state_dir,
           "VMNET_CONFIG": cfg}
    r = subprocess.run(["ip", "netns", "exec", ns.name, script, *argv], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stdout == ""
    line = one_error_line(r.stderr, os.path.basename(script) + ": error:")
    assert culprit in line, line
    assert host_snapshot(ns, state_dir) == before


def run_hook(ns: Netns | None, state_dir: str, cfg: str | None, data: str | bytes,
             op: str = "prepare", subop: str = "begin"
             ) -> tuple[subprocess.CompletedProcess[bytes], float, int]:
    """The hook as libvirtd runs it; returns (result, seconds, its peak RSS in KiB).

    The child is reaped with wait4(), so the RSS is the hook's own (`ip netns exec`
    execs the interpreter in place), not the maximum over every child of pytest.
    """
    argv = [sys.executable, "-I", "-m", "vmnet.integrations.libvirt.hook",
            f"--state-dir={state_dir}"]
    if cfg:
        argv.append(f"--config={cfg}")
    argv += ["hostile", op, subop, "-"]
    if ns is not None:
        argv = ["ip", "netns", "exec", ns.name, *argv]
    raw = data.encode() if isinstance(data, str) else data
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    t = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    assert p.stdin is not None and p.stdout is not None and p.stderr is not None
    got: dict[str, bytes] = {}

    def feed() -> None:
        assert p.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it refused before reading it all
            p.stdin.write(raw)
        with contextlib.suppress(BrokenPipeError):
            p.stdin.close()

    def drain(name: str, stream: IO[bytes]) -> None:
        got[name] = stream.read()

    threads = [threading.Thread(target=feed),
               threading.Thread(target=drain, args=("out", p.stdout)),
               threading.Thread(target=drain, args=("err", p.stderr))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    _pid, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    took = time.monotonic() - t
    p.stdout.close()
    p.stderr.close()
    return (subprocess.CompletedProcess(argv, p.returncode, got.get("out", b""),
                                        got.get("err", b"")), took, usage.ru_maxrss)


@pytest.mark.parametrize("xml,culprit", [c[1:] for c in HOOK], ids=[c[0] for c in HOOK])
def test_hostile_hook_stdin(host: tuple[Netns, str, str], xml: str | bytes,
                            culprit: str) -> None:
    ns, state_dir, cfg = host
    before = host_snapshot(ns, state_dir)
    r, _took, _rss = run_hook(ns, state_dir, cfg, xml)
    assert r.returncode == 1 and r.stdout == b"", r
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("vmnet: error: "), err
    assert "Traceback" not in err and culprit in err, err
    assert host_snapshot(ns, state_dir) == before


def test_hostile_input_count() -> None:
    here = len(CLI) + len(CONFIGS) + len(SCRIPTS) + len(HOOK)
    reused = len(BAD_INPUT_CLI) + len(BAD_INPUT_CONFIGS)
    figures.report("hostile", "inputs", here=here, in_test_bad_input=reused,
                   total=here + reused, cli=len(CLI), config=len(CONFIGS),
                   ifup_ifdown=len(SCRIPTS), hook_xml=len(HOOK))
    assert here >= 40


# -- XML built to hurt a parser ---------------------------------------------------------------
def laughs(levels: int) -> str:
    ents = ['<!ENTITY l0 "lol">'] + [
        f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, levels)]
    return (f'<?xml version="1.0"?>\n<!DOCTYPE domain [\n {" ".join(ents)}\n]>\n'
            f"<domain><name>&l{levels - 1};</name><uuid>{UUID}</uuid></domain>")


SECRET = "vmnet-secret-7f3c1e"
LISTENER = r"""
import select, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
n = 0
while True:
    r, _, _ = select.select([s, sys.stdin], [], [])
    if s in r:
        s.accept()[0].close()
        n += 1
    if sys.stdin in r and not sys.stdin.read(1):
        break
print(n, flush=True)
"""


@contextlib.contextmanager
def traps(ns: Netns, tmp: Path) -> Iterator[dict[str, str]]:
    """A secret file; a FIFO nobody writes (a parser that opened it would hang: the hook's
    time is bounded below); a listening socket in the test namespace that counts
    connections (in t["connections"] once the block is left)."""
    secret = tmp / "secret.txt"
    secret.write_text(SECRET)
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    listener = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", LISTENER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None and listener.stdin is not None
    port = listener.stdout.readline().strip()
    t = {"secret": f"file://{secret}", "fifo": f"file://{fifo}",
         "http": f"http://127.0.0.1:{port}/x.dtd", "connections": "?"}
    try:
        yield t
    finally:
        listener.stdin.close()
        t["connections"] = listener.stdout.readline().strip()
        listener.wait(10)
        listener.stdout.close()


def hostile_documents(t: dict[str, str]) -> dict[str, tuple[str, str, bool]]:
    """name -> (document, what the error names, whether `release end` refuses it too).

    Release needs only the UUID, so a document that parses (XInclude is just an element
    to ElementTree) is released (nothing to release here) rather than refused."""
    quad = "A" * 20000
    return {
        "billion-laughs": (laughs(10), "DTD", True),
        "quadratic-blowup": (f'<!DOCTYPE d [<!ENTITY a "{quad}">]><domain><name>'
                             + "&a;" * 5000 + "</name></domain>", "DTD", True),
        "external-entity-file": (f'<!DOCTYPE d [<!ENTITY x SYSTEM "{t["secret"]}">]>'
                                 "<domain><name>&x;</name></domain>", "DTD", True),
        "external-entity-fifo": (f'<!DOCTYPE d [<!ENTITY x SYSTEM "{t["fifo"]}">]>'
                                 "<domain><name>&x;</name></domain>", "DTD", True),
        "external-entity-http": (f'<!DOCTYPE d [<!ENTITY x SYSTEM "{t["http"]}">]>'
                                 "<domain><name>&x;</name></domain>", "DTD", True),
        "parameter-entity-http": (f'<!DOCTYPE d [<!ENTITY % p SYSTEM "{t["http"]}"> %p;]>'
                                  "<domain/>", "DTD", True),
        "external-dtd": (f'<!DOCTYPE domain SYSTEM "{t["http"]}"><domain/>', "DTD", True),
        "xinclude-in-metadata": (domain(vm_meta(
            "<v:vm name='vm1'><xi:include xmlns:xi='http://www.w3.org/2001/XInclude' "
            f"href='{t['secret']}' parse='text'/></v:vm>")), "<include>", False),
        "huge-document": ("<domain><description>" + "a" * (5 << 20) + "</description>"
                          "</domain>", "larger than", True),
        "deep-nesting": ("<a>" * 200_000 + "</a>" * 200_000, "<a>", True),
    }


def test_hostile_xml_refused_without_expansion(ns: Netns, state_dir: str,
                                               tmp_path: Path) -> None:
    before = host_snapshot(ns, state_dir)
    _r, _t, base_rss = run_hook(ns, state_dir, None, domain(""))  # the hook's own footprint
    worst_rss, worst_time = 0, 0.0
    with traps(ns, tmp_path) as t:
        docs = hostile_documents(t)
        for name, (doc, culprit, release_refuses) in docs.items():
            for op, subop in (("prepare", "begin"), ("release", "end")):
                r, took, rss = run_hook(ns, state_dir, None, doc, op, subop)
                err = r.stderr.decode()
                assert r.stdout == b"" and "Traceback" not in err, (name, op, r)
                assert SECRET not in err and "lollol" not in err, (name, err)
                assert took < 10, (name, op, took)  # the FIFO was never opened
                if op == "prepare" or release_refuses:
                    assert r.returncode == 1 and err.count("\n") == 1, (name, op, err)
                    assert err.startswith("vmnet: error: ") and culprit in err, (name, err)
                else:
                    assert (r.returncode, err) == (0, ""), (name, op, err)
                worst_rss, worst_time = max(worst_rss, rss), max(worst_time, took)
    assert t["connections"] == "0", t  # no entity, DTD or parameter entity was fetched
    # Expanded, billion laughs is ~3 GB; the 5 MiB document is refused before parsing.
    assert worst_rss < base_rss + 64 * 1024, (base_rss, worst_rss)
    assert host_snapshot(ns, state_dir) == before
    figures.report("hostile", "xml-bombs", documents=len(docs), runs=2 * len(docs),
                   worst_ms=round(worst_time * 1000), base_rss_mib=base_rss // 1024,
                   peak_rss_mib=worst_rss // 1024)


PRODUCER = r"""
import sys
out = sys.stdout.buffer
out.write(b"<domain><description>")
try:
    for _ in range(int(sys.argv[1]) * 16):
        out.write(b"a" * 65536)
except BrokenPipeError:
    pass
"""


def test_endless_stdin_is_bounded(ns: Netns, state_dir: str) -> None:
    """64 MiB on stdin (from another process, so that the fork of this one does not
    count): the hook reads at most its 4 MiB limit and refuses."""
    argv = ["ip", "netns", "exec", ns.name, sys.executable, "-I", "-m",
            "vmnet.integrations.libvirt.hook",
            f"--state-dir={state_dir}", "big", "prepare", "begin", "-"]
    peaks = []
    for mib in (0, 64):
        producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(mib)],
                                    stdout=subprocess.PIPE)
        t = time.monotonic()
        hook = subprocess.Popen(argv, stdin=producer.stdout, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        assert producer.stdout is not None and hook.stderr is not None
        producer.stdout.close()
        err = hook.stderr.read().decode()
        _pid, _status, usage = os.wait4(hook.pid, 0)
        took = time.monotonic() - t
        hook.stderr.close()
        producer.wait(30)
        peaks.append(usage.ru_maxrss)
        if mib:
            assert "larger than 4 MiB" in err and err.count("\n") == 1, err
            assert took < 10
    assert peaks[1] < peaks[0] + 32 * 1024, peaks  # KiB: the 4 MiB read, not 64


def test_weird_but_valid_names_never_reach_a_shell(host: tuple[Netns, str, str],
                                                   tmp_path: Path) -> None:
    """Names full of shell syntax are legal VM names: they work, and nothing runs them."""
    ns, state_dir, _cfg = host
    canary = tmp_path / "pwned"
    names = [f"a;touch${{IFS}}{canary}", f"$(touch {canary})".replace(" ", "\u00a0")[:64],
             f"`touch {canary}`".replace(" ", "_"), "-rf", "'\";|&<>"]
    before = host_snapshot(ns, state_dir)
    for name in names:
        r = vmnet(ns, state_dir, "up", name)
        if r.returncode != 0:  # refused is fine, as long as it is a clean refusal
            check_clean_failure(r, "")
            continue
        assert vmnet(ns, state_dir, "status", "--json", name).returncode == 0
        r = vmnet(ns, state_dir, "down", name)
        assert r.returncode == 0, r.stderr
    assert not canary.exists()
    assert host_snapshot(ns, state_dir) == before


# -- no shell anywhere ------------------------------------------------------------------------
def test_no_command_runs_through_a_shell() -> None:
    """vmnet's source never hands a string to a shell: no os.system/os.popen, no shell=True,
    and every subprocess gets an argv list."""
    import ast

    root = Path(__file__).resolve().parent.parent / "vmnet"
    calls = 0
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            assert name not in ("os.system", "os.popen", "subprocess.getoutput",
                                "subprocess.getstatusoutput"), f"{path}:{node.lineno}"
            for kw in node.keywords:
                assert not (kw.arg == "shell" and ast.unparse(kw.value) != "False"), \
                    f"{path}:{node.lineno}: shell={ast.unparse(kw.value)}"
            if name.startswith("subprocess.") and node.args:
                calls += 1
                assert not isinstance(node.args[0], ast.Constant | ast.JoinedStr), \
                    f"{path}:{node.lineno}: a command string"
    assert calls >= 2  # run.py starts QEMU, hookinstall probes the interpreter


def test_installed_hook_quotes_hostile_paths(tmp_path: Path) -> None:
    """The hook file (libvirtd execs it) carries the settings as literals: settings full
    of shell and Python syntax come back as the same single words, and run nothing."""
    from vmnet.integrations.libvirt import hookinstall

    canary = tmp_path / "pwned"
    state = f"{tmp_path}/st $(touch {canary}) `touch {canary}`;\n'\"x"
    cfg = f"{tmp_path}/c.toml;touch {canary}"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    res = hookinstall.install(hookinstall.HookSettings(
        python=sys.executable, state_dir=state, config=cfg, lock_timeout=5), str(hooks))
    text = Path(res.path).read_text()
    assert "from vmnet.daemon.libvirt_hook import main\n" in text
    text = text.replace("from vmnet.daemon.libvirt_hook import main\n", "import json\n"
                        "def main(argv):\n    print(json.dumps(argv))\n    return 0\n")
    Path(res.path).write_text(text)  # the same settings, but printing the argv
    r = subprocess.run([res.path, "dom", "started", "begin", "-"], capture_output=True,
                       text=True, env={}, timeout=30)
    assert r.returncode == 0, r.stderr
    argv = json.loads(r.stdout)
    assert argv[:2] == [f"--state-dir={state}", f"--config={cfg}"]
    assert argv[-4:] == ["dom", "started", "begin", "-"]
    assert not canary.exists()
