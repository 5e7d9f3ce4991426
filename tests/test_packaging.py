"""The wheel carries the templates: rendering works from an installed copy, not only a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                        str(ROOT)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot build the wheel here (needs the build backend from PyPI): "
                    f"{r.stderr.strip().splitlines()[-1:]}")
    [whl] = out.glob("vmnet-*.whl")
    return whl


def test_wheel_contains_templates_and_renders_from_them(wheel: Path, tmp_path: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(p.name for p in (ROOT / "templates").glob("*.j2"))
    assert templates
    for t in templates:
        assert f"vmnet/templates/{t}" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import sys; from vmnet.render import libvirt as L; "
            "from vmnet.config import parse_config, resolve_vm, Overrides; "
            "vm = resolve_vm(parse_config(''), 'vm1', Overrides(user='0'), env={}); "
            "print(L.template_dirs()); print(L.interfaces_xml(vm))")
    # -I: no checkout on sys.path, no user site; only the extracted wheel (and the venv).
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                        f"{str(site)!r}); {code}"], capture_output=True, text=True,
                       cwd=tmp_path, check=True)
    dirs, _, xml = r.stdout.partition("\n")
    assert str(site / "vmnet" / "templates") in dirs and str(ROOT) not in dirs
    assert "<target dev='vm1-0' managed='no'/>" in xml


def test_wheel_ships_vmnetd_its_units_and_the_bridge_helper(wheel: Path) -> None:
    zf = zipfile.ZipFile(wheel)
    names = zf.namelist()
    for unit in ("vmnetd.service", "vmnetd.socket"):
        assert f"vmnet/systemd/{unit}" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zf.read(entry).decode()
    assert "vmnetd = vmnet.daemon.main:main" in text
    assert "vmnet-bridge-helper = vmnet.integrations.qemu.helper:main" in text
