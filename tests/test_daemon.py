"""vmnetd as root uses it: every door goes through it when it listens, runs in-process
when it does not, and a SIGKILL at any point loses nothing.  Socket activation without
systemd, and the shipped units checked by systemd-analyze where it exists.

(Users without root: tests/test_daemon_users.py; guests: tests/test_daemon_guest.py;
abuse and the wire: tests/test_daemon_abuse.py, tests/test_daemon_wire.py.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vmnet
from tests.daemon import Vmnetd, needs_root, vmnetd, wait_listening
from tests.nsutil import Netns
from tests.vmnetcli import empty_config, host_snapshot
from tests.vmnetcli import vmnet as cli

pytestmark = pytest.mark.kernel
UNITS = Path(vmnet.__file__).parent / "systemd"


def records(ns: Netns, state_dir: str) -> dict[str, dict[str, object]]:
    d = Path(state_dir) / f"ns-{ns.inode}" / "vms"
    return {p.stem: json.loads(p.read_text()) for p in d.glob("*.json")} if d.exists() else {}


def writer_pid(ns: Netns, state_dir: str, vm: str) -> int:
    rec = records(ns, state_dir)[vm]
    return int(rec["writer"]["pid"])  # type: ignore[index]


def test_cli_scripts_and_hook_go_through_the_daemon(ns: Netns, state_dir: str,
                                                    tmp_path: Path) -> None:
    """With vmnetd listening, the record of each door's work is written by the daemon's
    process; the output and exit status are what the door prints in-process."""
    from tests.test_hook import domain_xml, run_hook  # the hook suite's own helpers
    from vmnet.config import Overrides

    cfg = tmp_path / "vmnet.toml"
    cfg.write_text('[networks.lab]\nbridge = "brd"\n[vms.hv]\n[[vms.hv.nics]]\n'
                   'network = "lab"\n')
    inproc = cli(ns, state_dir, "up", "vm1", "--bridge", "brd", config=str(cfg), check=True)
    cli(ns, state_dir, "down", "vm1", config=str(cfg), check=True)
    with vmnetd(state_dir, config=str(cfg)) as d:
        served = cli(ns, state_dir, "up", "vm1", "--bridge", "brd", config=str(cfg),
                     check=True)
        assert served.stdout == inproc.stdout and served.stderr == inproc.stderr
        assert writer_pid(ns, state_dir, "vm1") == d.pid
        bad = cli(ns, state_dir, "up", "vm1", "--mtu", "12", config=str(cfg))
        assert bad.returncode == 2 and bad.stderr.startswith("vmnet: error: --mtu")
        # the ifup script: QEMU made tap hv-0 (as it does with script=)
        ns.ip("tuntap", "add", "dev", "hv-0", "mode", "tap")
        env = {"VMNET_STATE_DIR": state_dir, "VMNET_CONFIG": str(cfg)}
        r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c",
                            "from vmnet.integrations.qemu.scripts import main_ifup; main_ifup()",
                            "hv-0"], capture_output=True, text=True,
                           env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        assert ns.link("hv-0")["master"] == "brd"  # type: ignore[index]
        ns.ip("link", "del", "hv-0")
        # the hook, from libvirtd's namespace: its namespace goes with the request
        xml = domain_xml("d1", "11111111-2222-3333-4444-555555555555",
                         [("hk", Overrides(bridge="brd"))], str(cfg))
        res = run_hook(ns, state_dir, str(cfg), "d1", "prepare", "begin", xml)
        assert res.returncode == 0, res.stderr
        assert writer_pid(ns, state_dir, "hk") == d.pid
        assert "hk-0" in ns.links()
        assert res.stderr == b"" and res.stdout == b""
        res = run_hook(ns, state_dir, str(cfg), "d1", "release", "end", xml)
        assert res.returncode == 0 and "hk-0" not in ns.links()
        cli(ns, state_dir, "down", "vm1", config=str(cfg), check=True)
        assert "brd" not in ns.links()
    # no daemon: a dead one's socket file is left, and nobody listens: in-process again
    Path(state_dir, "vmnetd.sock").unlink(missing_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.path.join(state_dir, "vmnetd.sock"))
    stale.close()
    again = cli(ns, state_dir, "up", "vm1", "--bridge", "brd", config=str(cfg), check=True)
    assert again.stdout == inproc.stdout
    assert writer_pid(ns, state_dir, "vm1") != d.pid
    cli(ns, state_dir, "down", "vm1", config=str(cfg), check=True)


def test_socket_activation_without_systemd(ns: Netns, state_dir: str) -> None:
    """LISTEN_PID/LISTEN_FDS and the socket on fd 3, as systemd passes it."""
    path = os.path.join(state_dir, "vmnetd.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o666)
    listener.listen(16)
    fd = listener.fileno()
    # what systemd does: the socket on fd 3, LISTEN_PID = the pid that then execs vmnetd
    launch = (f"import os, sys; os.dup2({fd}, 3); os.close({fd}); "
              "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
              f"os.execv(sys.executable, [sys.executable, '-m', 'vmnet.daemon.main', "
              f"'--foreground', '--state-dir', {state_dir!r}, '--config', {empty_config()!r}])")
    inode = os.stat(path).st_ino
    d = Vmnetd.__new__(Vmnetd)
    d.state_dir, d.socket = state_dir, path
    d.proc = subprocess.Popen([sys.executable, "-c", launch], pass_fds=(fd,),
                              stderr=subprocess.PIPE, text=True)
    listener.close()  # the daemon has it now
    try:
        wait_listening(path, d.proc)
        r = cli(ns, state_dir, "up", "vm1", check=True)
        assert "vm1-0" in r.stdout and writer_pid(ns, state_dir, "vm1") == d.pid
        cli(ns, state_dir, "down", "vm1", check=True)
    finally:
        log = d.stop()
    assert d.proc.returncode == 0 and "Traceback" not in log
    # it served systemd's socket (never bound its own) and leaves it to systemd
    assert os.stat(path).st_ino == inode


@needs_root
def test_a_second_daemon_on_the_same_state_dir_is_refused(state_dir: str) -> None:
    with vmnetd(state_dir):
        r = subprocess.run([sys.executable, "-m", "vmnet.daemon.main", "--foreground",
                            "--state-dir", state_dir], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 1
        assert r.stderr.startswith(f"vmnetd: error: another vmnetd already serves {state_dir}")


@needs_root
def test_vmnetd_without_root_says_so(state_dir: str) -> None:
    r = subprocess.run(["setpriv", "--reuid", "4321", "--regid", "4321", "--clear-groups",
                        sys.executable, "-m", "vmnet.daemon.main", "--foreground",
                        "--state-dir", state_dir], capture_output=True, text=True, timeout=30)
    assert r.returncode == 4 and r.stderr.startswith("vmnetd: error: vmnetd runs as root")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_units_verify(tmp_path: Path) -> None:
    """The shipped units, with ExecStart pointing at this installation's vmnetd."""
    exe = Path(sys.executable).parent / "vmnetd"
    assert exe.exists()
    for name in ("vmnetd.socket", "vmnetd.service"):
        text = (UNITS / name).read_text().replace("/usr/local/bin/vmnetd", str(exe))
        (tmp_path / name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(tmp_path / "vmnetd.socket"), str(tmp_path / "vmnetd.service")],
                       capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines()
             if ("vmnetd" in ln and "Failed to" not in ln) or "error" in ln.lower()]
    assert r.returncode == 0 and not lines, r.stdout + r.stderr
    assert "SocketMode=0666" in (UNITS / "vmnetd.socket").read_text()
    assert "ListenStream=/run/vmnet/vmnetd.sock" in (UNITS / "vmnetd.socket").read_text()


def test_sigkill_mid_request_loses_nothing(ns: Netns, state_dir: str) -> None:
    """vmnetd SIGKILLed while a 200-VM `up` runs in it: the client gets one line (and no
    second run of the request); a new vmnetd finishes or rolls back from the records, and
    `down --all` leaves the namespace as it was."""
    before = host_snapshot(ns, state_dir)
    names = [f"k{i}" for i in range(int(os.environ.get("VMNET_DAEMON_KILL_VMS", "200")))]
    rng = random.Random(int(os.environ.get("VMNET_CRASH_SEED", "7")))
    kills = int(os.environ.get("VMNET_DAEMON_KILLS", "3"))
    died = 0
    for _ in range(kills):
        d = Vmnetd(state_dir)
        try:
            argv = [sys.executable, "-m", "vmnet", "--state-dir", state_dir, "--config",
                    empty_config(), "--netns", ns.name, "up", *names]
            client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
            journal = Path(state_dir) / f"ns-{ns.inode}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                    journal.is_dir() and any(n.startswith("txn-") for n in os.listdir(journal))):
                time.sleep(0.001)  # the daemon began the transaction
            time.sleep(rng.uniform(0, 0.05))
            d.kill(signal.SIGKILL)
            _, err = client.communicate(timeout=60)
        finally:
            d.kill()
        if client.returncode != 0:
            died += 1
            assert client.returncode == 1
            assert err.strip().count("\n") == 0, err
            assert err.startswith("vmnet: error: vmnetd closed the connection before it "
                                  "answered"), err
        os.unlink(os.path.join(state_dir, "vmnetd.sock"))
        with vmnetd(state_dir):
            r = cli(ns, state_dir, "up", *names, check=True)
            assert "vm" not in r.stderr
            st = cli(ns, state_dir, "list", "--json", check=True)
            assert {v["vm"] for v in json.loads(st.stdout)["vms"]} == set(names)
            cli(ns, state_dir, "down", "--all", check=True)
    assert died >= 1  # at least one kill landed mid-request
    cli(ns, state_dir, "gc", check=True)
    assert host_snapshot(ns, state_dir) == before


def test_fds_handed_out_survive_the_daemon(ns: Netns, state_dir: str, tmp_path: Path) -> None:
    """A `vmnet run` whose QEMU holds the daemon's fds: SIGKILL the daemon, the tap keeps
    working; when QEMU exits the tap goes with it, and the client says what to do."""
    holder = tmp_path / "holder"
    holder.write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                      "fds = [int(p.split('=')[1].split(':')[0]) for a in sys.argv\n"
                      "       for p in a.split(',') if p.startswith('fd')]\n"
                      "print('HOLDING', fds, flush=True)\n"
                      "sys.stdin.read()\n"
                      "os.write(fds[0], b'\\xff' * 6 + b'\\x02' + b'\\0' * 5 + b'\\x08\\x06' "
                      "+ b'\\0' * 46)\n"
                      "print('WROTE', flush=True)\n")
    holder.chmod(0o755)
    d = Vmnetd(state_dir)
    try:
        argv = [sys.executable, "-m", "vmnet", "--state-dir", state_dir, "--config",
                empty_config(), "--netns", ns.name, "run", "r1", "--no-vnet-hdr", "--",
                str(holder)]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().startswith("HOLDING")
        assert records(ns, state_dir)["r1"]["holder"] is not None
        d.kill(signal.SIGKILL)
        tap = ns.link("r1-0")
        assert tap is not None and "NO-CARRIER" not in tap["flags"]
        p.stdin.write("go\n")
        p.stdin.close()
        assert p.stdout.readline().startswith("WROTE")
        assert p.wait(30) == 0
        err = p.stderr.read() if p.stderr else ""
        assert "vmnetd went away" in err and "`vmnet down r1` clears the record" in err
    finally:
        d.kill()
    assert "r1-0" not in ns.links()  # persist was cleared: the tap went with its last fd
    os.unlink(os.path.join(state_dir, "vmnetd.sock"))
    r = cli(ns, state_dir, "gc", check=True)
    assert "cleared r1" in r.stdout


CLIENT_DOOR = """
import posix, sys
sys.path.insert(0, {root!r})
door = sys.argv[1]
sys.argv = [door, *sys.argv[2:]]
def _exit(code):  # a served door ends with posix._exit: here, so that we can look after
    raise SystemExit(code)
posix._exit = _exit
try:
    if door == "vmnet":
        from vmnet.daemon.client import main
        main()
    elif door == "ifup":
        from vmnet.integrations.qemu.scripts import main_ifup
        main_ifup()
    else:
        from vmnet.daemon.libvirt_hook import main
        sys.exit(main())
except SystemExit as e:
    code = e.code
heavy = ("os", "typing", "__future__", "re", "json", "vmnet.model", "vmnet.config",
         "vmnet.engine.ops", "vmnet.state.store", "vmnet.kernel.linux", "vmnet.cli.args",
         "vmnet.cli.main", "vmnet.errors", "vmnet.integrations.qemu.ifup",
         "vmnet.integrations.libvirt.hook")
sys.stderr.write(f"EXIT {{code}} HEAVY {{sorted(m for m in heavy if m in sys.modules)}}\\n")
"""


def test_the_doors_are_small_clients_of_the_daemon(ns: Netns, state_dir: str,
                                                   tmp_path: Path) -> None:
    """Through vmnetd, `vmnet up`, the ifup script and the hook load none of the engine,
    the model or even `os` (a millisecond): python -IS, the wire, a socket."""
    from tests.test_hook import domain_xml
    from vmnet.config import Overrides

    root = str(Path(__file__).resolve().parent.parent)
    cfg = tmp_path / "vmnet.toml"
    cfg.write_text('[networks.lab]\nbridge = "brc"\n')
    code = CLIENT_DOOR.format(root=root)
    env = {"PATH": os.environ["PATH"], "VMNET_STATE_DIR": state_dir,
           "VMNET_CONFIG": str(cfg)}
    xml = domain_xml("d2", "21111111-2222-3333-4444-555555555555",
                     [("hc", Overrides(bridge="brc"))], str(cfg))
    with vmnetd(state_dir, config=str(cfg)):
        for door, args, stdin in (
                ("vmnet", ["--netns", ns.name, "up", "c1", "--bridge", "brc"], None),
                ("ifup", ["c1-0"], None),
                ("vmnet", ["--netns", ns.name, "status", "c1"], None),
                ("hook", [f"--state-dir={state_dir}", f"--config={cfg}", "d2", "prepare",
                          "begin", "-"], xml)):
            prefix = ["ip", "netns", "exec", ns.name] if door != "vmnet" else []
            r = subprocess.run([*prefix, sys.executable, "-IS", "-c", code, door, *args],
                               input=stdin, capture_output=True, text=True, env=env,
                               timeout=60)
            assert r.stderr.splitlines()[-1] == "EXIT 0 HEAVY []", (door, r.stderr)
        assert ns.link("c1-0")["master"] == "brc"  # type: ignore[index]
        assert "hc-0" in ns.links()
        cli(ns, state_dir, "down", "c1", "hc", check=True)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"], ["up", "--help"]],
                         ids=["help", "h", "version", "up-help"])
def test_help_and_version_exit_zero(args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "vmnet", *args], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and r.stdout and not r.stderr, r.stderr


def test_a_hung_daemon_is_one_line_not_a_hang(tmp_path: Path) -> None:
    """A socket that takes connections and never answers (a hung vmnetd): the client gives
    up after its timeout with one line, instead of hanging every command."""
    from vmnet.daemon import client
    from vmnet.errors import DaemonLost

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "vmnetd.sock"))
    listener.listen(4)  # accepted by the kernel's backlog, never by anyone
    try:
        s = client.connect(str(tmp_path))
        assert s is not None
        client.send(s, client.request("vmnet", ["status"], {}))
        t = time.monotonic()
        with pytest.raises(DaemonLost, match=r"said nothing for 0\.5 s"):
            client.receive(s, timeout=0.5)
        assert time.monotonic() - t < 3
        s.close()
    finally:
        listener.close()
