"""A private libvirtd for tests, inside a test's network namespace.

`libvirtd(ns_name)` starts virtlogd and the monolithic libvirtd inside an
existing network namespace *and* a private mount namespace in which:

* `/run` is a private directory (``<tmp>/run``) with every entry of the host's
  `/run` bound back into it, so libvirt's `/run/libvirt` (sockets, domain
  status, pid files) is ours and nothing is created in the host's `/run`;
* `/etc/libvirt` is a private copy with an empty `hooks/`, no predefined
  networks and a test `qemu.conf`;
* `/var/lib/libvirt`, `/var/log/libvirt` are private directories;
  `/var/cache/libvirt` is a directory shared by the harnesses of one Python
  process, so the qemu capability probe (several seconds) is paid once;
* `/dev/kvm`, if present, is covered by an empty file mounted read-only.
  libvirt then decides KVM is unusable (``access(W_OK)`` fails with EROFS even
  for root) and does not re-probe qemu on every start (see HOST.md).

The mount namespace comes from ``ip netns exec``, which also remounts `/sys`
for the network namespace and marks `/` as a slave: our mounts never
propagate to the host and vanish with the last process in the namespace.
A holder process (`sleep infinity`) keeps the namespace alive; the daemons are
started in it with ``nsenter`` as direct children of the test process.

Because a bound directory is the same inode on both sides, libvirtd's socket
at `/run/libvirt/libvirt-sock` inside is reachable from the test process at
``<tmp>/run/libvirt/libvirt-sock``; `Libvirtd.uri` names it with
``?socket=``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT = 60.0  # the first qemu capability probe alone takes 4-8 s
VIRSH_TIMEOUT = 60.0

QEMU_CONF = """\
# Written by tests/libvirtd.py: qemu runs as root in libvirtd's own mount
# namespace, no security driver, no cgroups, nothing chowned or remembered.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
"""

LIBVIRTD_CONF = """\
# Written by tests/libvirtd.py.
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
log_level = 3
log_filters = "1:util.hook 2:daemon.libvirtd 2:qemu.qemu_process"
log_outputs = "1:file:{log}"
"""

VIRTLOGD_CONF = """\
# Written by tests/libvirtd.py.
log_level = 3
log_outputs = "3:file:{log}"
"""


class LibvirtdError(RuntimeError):
    """libvirtd did not start, or a virsh command failed."""


class VirshError(LibvirtdError):
    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        super().__init__(
            f"virsh {shlex.join(args)} exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )


_cache_dir: Path | None = None


def _shared_cache_dir() -> Path:
    """One `/var/cache/libvirt` per Python process, removed at exit."""
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = Path(tempfile.mkdtemp(prefix="vmnet-libvirt-cache-"))
        atexit.register(shutil.rmtree, _cache_dir, True)
    return _cache_dir


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"({path}: {e.strerror})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


# What a libvirtd of the host may have left in /run: never bound into ours.
LIBVIRT_RUN_ENTRIES = frozenset({"libvirt", "libvirtd.pid", "virtlogd.pid", "virtlockd.pid",
                                 "virtqemud.pid"})


def _mount_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def _pids_in_mount_ns(ns: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if _mount_ns(int(entry)) == ns:
                pids.append(int(entry))
    return pids


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL; always reap."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Libvirtd:
    """A running private libvirtd; made by `libvirtd()`, not directly."""

    def __init__(self, ns_name: str, tmp: Path) -> None:
        self.ns_name = ns_name
        self.tmp = tmp
        self.run_dir = tmp / "run"                  # /run inside
        self.etc_dir = tmp / "etc"                  # /etc/libvirt inside
        self.lib_dir = tmp / "lib"                  # /var/lib/libvirt inside
        self.log_dir = tmp / "log"                  # /var/log/libvirt inside
        self.hooks_dir = self.etc_dir / "hooks"     # /etc/libvirt/hooks inside
        self.log_path = tmp / "libvirtd.log"
        self.virtlogd_log_path = tmp / "virtlogd.log"
        self.socket = self.run_dir / "libvirt" / "libvirt-sock"
        self.uri = f"qemu:///system?socket={self.socket}"
        self._holder: subprocess.Popen[bytes] | None = None
        self._mount_ns: str | None = None
        self._virtlogd: subprocess.Popen[bytes] | None = None
        self._libvirtd: subprocess.Popen[bytes] | None = None

    # -- what tests use ---------------------------------------------------

    @property
    def mount_ns_pid(self) -> int:
        """A pid in the private mount (and network) namespace, for `nsenter -t PID -m -n`."""
        assert self._holder is not None
        return self._holder.pid

    @property
    def pid(self) -> int:
        """libvirtd's pid."""
        assert self._libvirtd is not None
        return self._libvirtd.pid

    @property
    def virtlogd_pid(self) -> int:
        assert self._virtlogd is not None
        return self._virtlogd.pid

    def virsh(self, *args: str, check: bool = True,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `virsh -c URI ARGS...` from the test process."""
        result = subprocess.run(
            ["virsh", "-q", "-c", self.uri, *args], text=True, capture_output=True,
            input=input, timeout=VIRSH_TIMEOUT,
        )
        if check and result.returncode != 0:
            raise VirshError(list(args), result)
        return result

    def nsenter(self, *argv: str, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in libvirtd's mount and network namespaces."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.mount_ns_pid), "-m", "-n", "--", *argv],
            text=True, capture_output=True, input=input,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, argv, result.stdout, result.stderr)
        return result

    def write_hook(self, relpath: str, content: str) -> Path:
        """Write an executable hook file under the private hooks dir.

        libvirtd notices a new `qemu` (or first `qemu.d/*`) hook only at start
        or after `reload_hooks()`.
        """
        path = self.hooks_dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o755)
        return path

    def reload_hooks(self, timeout: float = 10.0) -> None:
        """SIGHUP libvirtd and wait until it has rescanned the hooks dir.

        libvirtd rescans in a reload thread; the last driver it checks is
        bhyve, so its "hook script" debug line marks the end of the scan.
        """
        offset = self.log_path.stat().st_size
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                new = f.read().decode(errors="replace")
            if "Reloading configuration on SIGHUP" in new and "hooks/bhyve" in new:
                return
            time.sleep(0.02)
        raise LibvirtdError(f"libvirtd did not reload within {timeout} s\n{_tail(self.log_path)}")

    def domain_log_path(self, name: str) -> Path:
        """Where qemu's stdout/stderr for domain NAME goes (via virtlogd)."""
        return self.log_dir / "qemu" / f"{name}.log"

    def restart(self) -> None:
        """Stop libvirtd (running domains survive) and start it again."""
        assert self._libvirtd is not None
        _stop(self._libvirtd)
        self._start_libvirtd()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """libvirtd stopped (running domains survive) for the block; started again after."""
        assert self._libvirtd is not None
        _stop(self._libvirtd)
        try:
            yield
        finally:
            self._start_libvirtd()

    # -- set-up and tear-down ---------------------------------------------

    def _prepare(self, hooks: dict[str, str]) -> None:
        for d in (self.run_dir, self.lib_dir, self.log_dir, self.tmp / "hostrun"):
            d.mkdir()
        # /run: a private directory with the host's entries bound back in, except
        # libvirt's own: a host where libvirtd ran before keeps /run/libvirt (stale
        # sockets, pid files), and ours must start from an empty one.
        for entry in os.scandir("/run"):
            if entry.name in LIBVIRT_RUN_ENTRIES:
                continue
            target = self.run_dir / entry.name
            if entry.is_symlink():
                target.symlink_to(os.readlink(entry.path))
            elif entry.is_dir():
                target.mkdir()
            else:
                target.touch()
        # /etc/libvirt: a copy, minus hooks and predefined domains/networks
        # (an autostarted "default" network would start dnsmasq).
        shutil.copytree("/etc/libvirt", self.etc_dir, symlinks=True)
        for sub in ("hooks", "qemu", "lxc", "storage", "secrets"):
            shutil.rmtree(self.etc_dir / sub, ignore_errors=True)
        self.hooks_dir.mkdir()
        (self.etc_dir / "qemu.conf").write_text(QEMU_CONF)
        (self.etc_dir / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(log=self.log_path))
        (self.etc_dir / "virtlogd.conf").write_text(
            VIRTLOGD_CONF.format(log=self.virtlogd_log_path))
        (self.tmp / "kvm").touch()
        for relpath, content in hooks.items():
            self.write_hook(relpath, content)

    def _holder_script(self) -> str:
        q = shlex.quote
        hostrun = self.tmp / "hostrun"
        # LIBMOUNT_UTAB: otherwise mount(8) creates /run/mount on the host.
        lines = ["set -eu", f"export LIBMOUNT_UTAB={q(str(self.tmp / 'utab'))}",
                 f"mount --rbind /run {q(str(hostrun))}",
                 f"mount --bind {q(str(self.run_dir))} /run"]
        for entry in sorted(os.listdir(self.run_dir)):
            if entry not in LIBVIRT_RUN_ENTRIES and not (self.run_dir / entry).is_symlink():
                lines.append(f"mount --rbind {q(str(hostrun / entry))} {q('/run/' + entry)}")
        lines += [
            f"umount -l {q(str(hostrun))}",
            f"mount --bind {q(str(self.etc_dir))} /etc/libvirt",
            f"mount --bind {q(str(self.lib_dir))} /var/lib/libvirt",
            f"mount --bind {q(str(self.log_dir))} /var/log/libvirt",
            f"mount --bind {q(str(_shared_cache_dir()))} /var/cache/libvirt",
        ]
        if os.path.exists("/dev/kvm"):
            lines += [f"mount --bind {q(str(self.tmp / 'kvm'))} /dev/kvm",
                      "mount -o remount,bind,ro /dev/kvm"]
        lines += [f": > {q(str(self.tmp / 'ready'))}", "exec sleep infinity"]
        return "\n".join(lines)

    def _start(self) -> None:
        for path in ("/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt",
                     "/var/cache/libvirt"):
            if not os.path.isdir(path):
                raise LibvirtdError(f"{path} is missing (is libvirt-daemon-system installed?)")
        with (self.tmp / "holder.log").open("wb") as out:
            self._holder = subprocess.Popen(
                ["ip", "netns", "exec", self.ns_name, "sh", "-c", self._holder_script()],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        ready = self.tmp / "ready"
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self._holder.poll() is not None or time.monotonic() > deadline:
                raise LibvirtdError(
                    f"could not set up the mount namespace in {self.ns_name}:\n"
                    f"{_tail(self.tmp / 'holder.log')}")
            time.sleep(0.01)
        self._mount_ns = _mount_ns(self._holder.pid)

        with self.virtlogd_log_path.open("ab") as out:
            self._virtlogd = subprocess.Popen(
                self._nsenter_argv("virtlogd", "-f", "/etc/libvirt/virtlogd.conf",
                                   "-p", str(self.tmp / "virtlogd.pid")),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self._start_libvirtd()

    def _nsenter_argv(self, *argv: str) -> list[str]:
        # nsenter execs the command itself (no fork without -p/-F): the
        # Popen pid is the daemon's pid.
        return ["nsenter", "-t", str(self.mount_ns_pid), "-m", "-n", "--", *argv]

    def _start_libvirtd(self, timeout: float = START_TIMEOUT) -> None:
        with self.log_path.open("ab") as out:
            self._libvirtd = subprocess.Popen(
                self._nsenter_argv("libvirtd", "-f", "/etc/libvirt/libvirtd.conf",
                                   "-p", str(self.tmp / "libvirtd.pid")),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while True:
            if self._libvirtd.poll() is not None:
                raise LibvirtdError(
                    f"libvirtd exited with {self._libvirtd.returncode} in {self.ns_name}; "
                    f"tail of its log:\n{_tail(self.log_path)}")
            if self.socket.exists() and self.virsh("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LibvirtdError(
                    f"libvirtd did not answer within {timeout} s in {self.ns_name}; "
                    f"tail of its log:\n{_tail(self.log_path)}")
            time.sleep(0.05)

    def _destroy_domains(self) -> None:
        if self._libvirtd is None or self._libvirtd.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            listed = self.virsh("list", "--name", check=False)
            for name in listed.stdout.split():
                self.virsh("destroy", name, check=False)

    def _close(self) -> None:
        """Tear everything down; safe after any partial start."""
        self._destroy_domains()
        for proc in (self._libvirtd, self._virtlogd):
            if proc is not None:
                _stop(proc)
        if self._mount_ns is not None:
            # Whatever is left in our mount namespace (qemu, a hook's child,
            # a probe) was started by these daemons: kill it by pid.
            assert self._holder is not None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                left = [p for p in _pids_in_mount_ns(self._mount_ns) if p != self._holder.pid]
                if not left:
                    break
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()
        # The mounts died with the namespace; on the host side these are
        # plain directories.
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def libvirtd(ns_name: str, *, hooks: dict[str, str] | None = None) -> Iterator[Libvirtd]:
    """Run virtlogd + libvirtd in network namespace NS_NAME until the block ends.

    HOOKS maps paths relative to the private hooks dir (`qemu`,
    `qemu.d/50-x`) to file contents; they are written executable before
    libvirtd starts.  Every domain, daemon, process and mount made here is
    gone when the block exits, also when it raises.
    """
    d = Libvirtd(ns_name, Path(tempfile.mkdtemp(prefix="vmnet-libvirtd-")))
    try:
        d._prepare(hooks or {})
        d._start()
        try:
            yield d
        except Exception:
            # The log goes with the temp dir: show its tail with the failure.
            sys.stderr.write(f"--- tail of {d.log_path} ---\n{_tail(d.log_path)}\n")
            raise
    finally:
        d._close()
