"""Install and remove vmnet's libvirt hook (`/etc/libvirt/hooks/qemu.d/vmnet`).

libvirt (6.5 and later; checked against 9.0) runs every executable in
`hooks/qemu.d/` after the main `hooks/qemu` script, so vmnet never needs to
touch a `qemu` hook someone else wrote.  The file vmnet writes is a small
Python launcher (vmnet.cli.launchers): it names the interpreter by absolute path
(libvirtd gives hooks a minimal PATH), starts it with -IS and the
installation's import path written out (the hook runs on every VM start),
and carries vmnet's settings (state directory, config file, lock timeout) as
Python literals, so the hook acts exactly as the `vmnet` that installed it.
A marker line identifies it: vmnet replaces or removes only a file carrying
that marker.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from dataclasses import dataclass

from vmnet.errors import ConflictError, InputError, NotFoundError, PrivilegeError

DEFAULT_HOOKS_DIR = "/etc/libvirt/hooks"
HOOK_SUBDIR = "qemu.d"
HOOK_NAME = "vmnet"
MARKER = "# vmnet-libvirt-hook: written by `vmnet hook install`; `vmnet hook uninstall` removes it"
RELOAD_HINT = ("libvirtd reads its hooks when it starts: send it SIGHUP "
               "(kill -HUP $(pidof libvirtd)) or restart it (systemctl restart libvirtd) "
               "before starting domains that use vmnet")


@dataclass(frozen=True)
class HookSettings:
    """What the installed hook bakes in."""

    python: str
    state_dir: str
    config: str | None
    lock_timeout: float


@dataclass(frozen=True)
class InstallResult:
    path: str
    action: str  # "installed" | "updated" | "unchanged"


def hook_path(hooks_dir: str = DEFAULT_HOOKS_DIR) -> str:
    return os.path.join(hooks_dir, HOOK_SUBDIR, HOOK_NAME)


def hook_script(s: HookSettings, paths: list[str]) -> str:
    """The hook file's text: a launcher of the hook (vmnet.daemon.libvirt_hook), settings
    baked in.

    `paths` is the interpreter's import path beyond `-IS` (vmnet.cli.launchers).
    """
    if not os.path.isabs(s.python) or any(c.isspace() for c in s.python):
        raise InputError(f"interpreter path {s.python!r} must be absolute and without "
                         "whitespace (it goes on the hook's #! line)")
    args = [f"--state-dir={s.state_dir}"]
    if s.config:
        args.append(f"--config={s.config}")
    args.append(f"--lock-timeout={s.lock_timeout:g}")
    return "\n".join([
        f"#!{s.python} -IS",
        MARKER,
        "# libvirtd runs this for every qemu domain event; vmnet acts only at",
        "# 'prepare begin' and 'release end' of domains whose metadata names a vmnet VM.",
        "import sys",
        f"sys.path += {paths!r}",
        "from vmnet.daemon.libvirt_hook import main",
        f"sys.exit(main({args!r} + sys.argv[1:]))",
        "",
    ])


def is_ours(path: str) -> bool:
    """A regular file carrying vmnet's marker (never follows a symlink)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return MARKER.encode() in head


def check_importable(python: str) -> None:
    """The interpreter must import vmnet.integrations.libvirt.hook in isolated mode, as
    libvirtd will run it."""
    try:
        res = subprocess.run([python, "-I", "-c", "import vmnet.integrations.libvirt.hook"],
                             capture_output=True,
                             text=True, timeout=30, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                             check=False)
    except OSError as e:
        raise NotFoundError(f"cannot run {python}: {e.strerror}") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        raise NotFoundError(f"{python} -I cannot import vmnet.integrations.libvirt.hook ({last})",
                            hint="install vmnet into that interpreter's environment "
                                 "(pip install), not only on PYTHONPATH")


def install(settings: HookSettings, hooks_dir: str = DEFAULT_HOOKS_DIR, *,
            verify: bool = True) -> InstallResult:
    """Write (or update) vmnet's hook; refuse to overwrite a file vmnet did not write."""
    path = hook_path(hooks_dir)
    if not os.path.isdir(hooks_dir):
        raise NotFoundError(f"libvirt's hooks directory {hooks_dir} does not exist",
                            hint="is libvirt installed? (or give --hooks-dir)")
    exists = os.path.lexists(path)
    if exists and not is_ours(path):
        raise ConflictError(f"{path} exists and vmnet did not write it; left alone",
                            hint="remove or rename it yourself if it is not needed")
    if verify:
        check_importable(settings.python)
    from vmnet.cli.launchers import import_path

    try:
        paths = import_path(settings.python)
    except (OSError, subprocess.CalledProcessError) as e:
        raise NotFoundError(f"cannot run {settings.python}: {e}") from None
    text = hook_script(settings, paths)
    if exists:
        with open(path) as f:
            if f.read() == text:
                return InstallResult(path, "unchanged")
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{HOOK_NAME}.tmp.{os.getpid()}")
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o755)
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, 0o755)  # regardless of umask: libvirt runs only executables
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except PermissionError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise PrivilegeError(f"cannot write {path}", hint="run as root") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return InstallResult(path, "updated" if exists else "installed")


def uninstall(hooks_dir: str = DEFAULT_HOOKS_DIR) -> str | None:
    """Remove vmnet's hook; returns its path, or None if there was none."""
    path = hook_path(hooks_dir)
    if not os.path.lexists(path):
        return None
    if not is_ours(path):
        raise ConflictError(f"{path} was not written by vmnet; left alone")
    try:
        os.unlink(path)
    except PermissionError:
        raise PrivilegeError(f"cannot remove {path}", hint="run as root") from None
    return path


def default_python() -> str:
    """The interpreter running vmnet now, by its (venv-preserving) absolute path."""
    return os.path.abspath(sys.executable)
