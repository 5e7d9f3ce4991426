"""vmnet's commands as small launchers that start Python with -IS.

pip's console scripts start Python with `site` (it reads every .pth file of
the environment, ~1-2 ms) and then import `re` to tidy argv[0] (~4 ms with
enum).  Starting a VM costs about 15 ms in all, so the
installed commands are instead:

    #!/opt/vmnet/bin/python3 -IS
    import sys
    sys.path += [...the installation's own import path...]
    from vmnet.cli.entry import main
    sys.exit(main())

-I ignores PYTHON* variables and the user's site directory (right for a tool
run as root), -S skips `site`; the import path is the one a normal start of
the same interpreter has, written out once, at install time.

    python -m vmnet.cli.launchers BINDIR     # what scripts/install runs
"""

from __future__ import annotations

import os
import subprocess
import sys

COMMANDS = {
    "vmnet": ("vmnet.daemon.client", "main"),
    "vmnet-qemu-ifup": ("vmnet.integrations.qemu.scripts", "main_ifup"),
    "vmnet-qemu-ifdown": ("vmnet.integrations.qemu.scripts", "main_ifdown"),
    "vmnet-libvirt-hook": ("vmnet.daemon.libvirt_hook", "main"),
    "vmnetd": ("vmnet.daemon.main", "main"),
    "vmnet-bridge-helper": ("vmnet.integrations.qemu.helper", "main"),
}
MARKER = "# vmnet launcher"


def import_path(python: str) -> list[str]:
    """What a normal start of `python` adds to the import path beyond `python -IS`."""
    code = "import sys; print('\\n'.join(sys.path))"
    full = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    bare = set(subprocess.run([python, "-IS", "-c", code], capture_output=True, text=True,
                              check=True).stdout.splitlines())
    return [p for p in full if p and p not in bare]


def launcher(python: str, paths: list[str], module: str, func: str) -> str:
    """The text of one launcher (stdlib first on the path: its lookups are the many)."""
    return (f"#!{python} -IS\n{MARKER}: python -IS with this installation's import path\n"
            f"import sys\nsys.path += {paths!r}\nfrom {module} import {func}\n"
            f"sys.exit({func}())\n")


def write(bindir: str, python: str | None = None) -> list[str]:
    """Write every command's launcher into `bindir`; returns their paths.

    Replaces what is there (pip's console script, or a symlink to it, as
    older installs made) atomically.
    """
    python = os.path.abspath(python or sys.executable)
    paths = import_path(python)
    out = []
    for name, (module, func) in COMMANDS.items():
        path = os.path.join(bindir, name)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(launcher(python, paths, module, func))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)  # atomic: a VM starting meanwhile runs the old or the new
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m vmnet.cli.launchers BINDIR\n")
        return 2
    for path in write(args[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
