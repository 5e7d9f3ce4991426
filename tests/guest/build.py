"""Build (once) the tiny Linux guest the QEMU tests boot.

The guest is Debian's cloud kernel (downloaded with ``apt-get download`` and
unpacked with ``dpkg-deb -x``; never installed) plus an initramfs holding a
static busybox, the virtio-net modules, ``init.sh`` (as ``/init``) and
``udhcpc.sh`` (as ``/bin/vmnet-udhcpc``, udhcpc's event script) from this
directory.

The result is cached under ``$VMNET_GUEST_CACHE`` (default
``~/.cache/vmnet-test-guest``) in a directory named after the kernel package,
its version and a hash of everything that goes into the initramfs, so editing
``init.sh`` or ``udhcpc.sh`` rebuilds.  Concurrent callers (several pytest
processes) are serialised with a lock file and every build is published by an
atomic rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gzip
import hashlib
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MODULES", "GuestBuildError", "GuestImage", "cache_dir", "ensure_guest"]

META_PACKAGE = "linux-image-cloud-amd64"
INIT_SCRIPT = Path(__file__).with_name("init.sh")
# udhcpc's event script (init.sh runs "udhcpc -s /bin/vmnet-udhcpc" for vmnet.dhcp=1).
UDHCPC_SCRIPT = Path(__file__).with_name("udhcpc.sh")
RA_SOURCE = Path(__file__).with_name("ra.c")  # vmnet.spoof=ra: a rogue router (gcc -static)
NO_RA_SENDER = "no-ra-sender"  # beside the image: why it was built without one
# Load order matters: the .deb has no modules.dep and busybox insmod
# resolves nothing by itself.
MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
)
# Bump when the layout of the initramfs changes in a way the hash misses.
FORMAT = 1
INSTALL_HINT = "install the test dependencies with: sudo scripts/install-deps --test"


class GuestBuildError(RuntimeError):
    """The guest could not be built (missing tool or package, apt failure)."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path

    @property
    def no_ra_sender(self) -> str | None:
        """Why the image has no router advertisement sender (vmnet.spoof=ra), or None."""
        why = self.kernel.with_name(NO_RA_SENDER)
        return why.read_text().strip() if why.exists() else None


def cache_dir() -> Path:
    env = os.environ.get("VMNET_GUEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vmnet-test-guest"


def ensure_guest() -> GuestImage:
    """Return the cached guest, building it first if needed."""
    return _ensure_guest(cache_dir())


@functools.cache
def _ensure_guest(root: Path) -> GuestImage:
    busybox = _static_busybox()
    _require_tool("apt-get", "apt")
    _require_tool("dpkg-deb", "dpkg")
    package, version = _kernel_package()
    key = f"{package}_{version}_{_content_hash()}".replace("/", "_").replace(":", "_")
    final = root / key
    image = GuestImage(kernel=final / "vmlinuz", initrd=final / "initrd.img")
    if _complete(image):
        return image
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if _complete(image):  # another process built it while we waited
            return image
        for stale in root.glob(".tmp-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            out = work / "out"
            out.mkdir()
            _build(package, busybox, work, out)
            if final.exists():  # incomplete leftover
                shutil.rmtree(final)
            out.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not _complete(image):
        raise GuestBuildError(f"guest build produced no image in {final}")
    return image


def _complete(image: GuestImage) -> bool:
    return image.kernel.is_file() and image.initrd.is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _content_hash() -> str:
    h = hashlib.sha256()
    h.update(f"format={FORMAT}\n".encode())
    h.update(("modules=" + ",".join(MODULES) + "\n").encode())
    for script in (INIT_SCRIPT, UDHCPC_SCRIPT, RA_SOURCE):
        data = script.read_bytes()
        h.update(f"{script.name}={len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()[:12]


def _run(*argv: str, cwd: Path | None = None) -> str:
    try:
        res = subprocess.run(list(argv), cwd=cwd, text=True, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{argv[0]} not found; {INSTALL_HINT}") from exc
    if res.returncode != 0:
        raise GuestBuildError(
            f"{' '.join(argv)} failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}"
        )
    return res.stdout


def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise GuestBuildError(f"{name} not found (Debian package {package}); {INSTALL_HINT}")
    return path


def _static_busybox() -> Path:
    """The busybox-static binary (a dynamic busybox cannot run in the guest)."""
    candidates = [Path("/bin/busybox"), Path("/usr/bin/busybox")]
    found = shutil.which("busybox")
    if found:
        candidates.insert(0, Path(found))
    for path in candidates:
        if path.is_file() and _is_static_elf(path):
            return path
    raise GuestBuildError(f"no statically linked busybox (package busybox-static); {INSTALL_HINT}")


def _is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP segment."""
    with path.open("rb") as fh:
        head = fh.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    pt_interp = 3
    return all(
        struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum)
    )


def _kernel_package() -> tuple[str, str]:
    """(name, version) of the kernel package the cloud meta-package depends on."""
    try:
        deps = _run("apt-cache", "depends", META_PACKAGE)
    except GuestBuildError:
        # Empty package lists (fresh container): fetch them once and retry.
        _run("apt-get", "update", "-qq")
        deps = _run("apt-cache", "depends", META_PACKAGE)
    names = [
        line.split(":", 1)[1].strip()
        for line in deps.splitlines()
        if line.strip().startswith("Depends:") and "linux-image-" in line
    ]
    if not names:
        raise GuestBuildError(f"apt-cache depends {META_PACKAGE} names no kernel:\n{deps}")
    package = names[0]
    show = _run("apt-cache", "show", "--no-all-versions", package)
    for line in show.splitlines():
        if line.startswith("Version:"):
            return package, line.split(":", 1)[1].strip()
    raise GuestBuildError(f"apt-cache show {package} gives no version")


def _build(package: str, busybox: Path, work: Path, out: Path) -> None:
    """Download and unpack the kernel, assemble the initramfs into ``out``."""
    dl = work / "deb"
    dl.mkdir()
    _run("apt-get", "download", "-q", package, cwd=dl)
    debs = sorted(dl.glob("*.deb"))
    if len(debs) != 1:
        raise GuestBuildError(f"apt-get download {package} left {debs}")
    tree = work / "tree"
    _run("dpkg-deb", "-x", str(debs[0]), str(tree))

    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise GuestBuildError(f"{debs[0].name} holds no /boot/vmlinuz-*")
    shutil.copyfile(kernels[0], out / "vmlinuz")

    root = work / "initramfs"
    for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "www", "lib/modules"):
        (root / d).mkdir(parents=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    shutil.copyfile(INIT_SCRIPT, root / "init")
    (root / "init").chmod(0o755)
    shutil.copyfile(UDHCPC_SCRIPT, root / "bin" / "vmnet-udhcpc")
    (root / "bin" / "vmnet-udhcpc").chmod(0o755)
    # The rogue router advertisement sender, where a static C build is possible (gcc and
    # libc6-dev, which install-deps --test brings); without it the guest lacks
    # vmnet.spoof=ra and the tests that need it skip, saying why (NO_RA_SENDER).
    try:
        _run("gcc", "-static", "-Os", "-s", "-o", str(root / "bin" / "vmnet-ra"),
             str(RA_SOURCE))
    except GuestBuildError as e:
        (out / NO_RA_SENDER).write_text(f"the guest has no router advertisement sender: "
                                        f"{str(e)[:300]}; {INSTALL_HINT}\n")
    with contextlib.suppress(PermissionError):
        # The kernel gives init /dev/console as stdio when it exists in the
        # initramfs; init.sh re-opens it after mounting devtmpfs anyway.
        os.mknod(root / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))

    moddir = tree / "lib" / "modules"
    for name in MODULES:
        _copy_module(moddir, name, root / "lib" / "modules" / f"{name}.ko")
    (root / "lib" / "modules" / "vmnet.order").write_text("\n".join(MODULES) + "\n")

    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    cpio = _cpio(busybox, root, files)
    (out / "initrd.img").write_bytes(gzip.compress(cpio, compresslevel=6, mtime=0))


def _cpio(busybox: Path, root: Path, files: list[str]) -> bytes:
    res = subprocess.run(
        [str(busybox), "cpio", "-o", "-H", "newc"],
        cwd=root,
        input=("\n".join(files) + "\n").encode(),
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        raise GuestBuildError(f"busybox cpio failed: {res.stderr.decode(errors='replace')}")
    return res.stdout


def _copy_module(moddir: Path, name: str, dest: Path) -> None:
    """Find ``name`` (.ko, .ko.xz or .ko.zst) in the unpacked tree; store it uncompressed."""
    for path in moddir.rglob(f"{name}.ko*"):
        if path.name == f"{name}.ko":
            shutil.copyfile(path, dest)
            return
        if path.name == f"{name}.ko.xz":
            dest.write_bytes(lzma.decompress(path.read_bytes()))
            return
        if path.name == f"{name}.ko.zst":
            zstd = _require_tool("zstd", "zstd")
            with dest.open("wb") as fh:
                subprocess.run([zstd, "-dc", str(path)], stdout=fh, check=True)
            return
    raise GuestBuildError(f"kernel module {name} not found under {moddir}")
