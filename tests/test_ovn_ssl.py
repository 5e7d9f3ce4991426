"""An ovn network's northbound database over ssl: (key, certificate and CA), live.

A northbound ovsdb-server of the test's own listens on pssl: in a throwaway namespace
with a server certificate from a CA made here (openssl); vmnet's OVSDB seam, in a
process of its own in that namespace (python-ovs's SSL settings are process-wide),
reads the switches through it with a client certificate from the same CA, and is
refused, with the address named, with a certificate from another CA.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nsutil import Netns, netns
from tests.ovnworld import ovn_missing, ovsdbapp_missing, wait_until
from tests.world import stop_process

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(ovn_missing() is not None, reason=str(ovn_missing())),
              pytest.mark.skipif(ovsdbapp_missing() is not None,
                                 reason=str(ovsdbapp_missing())),
              pytest.mark.skipif(shutil.which("openssl") is None,
                                 reason="openssl missing (apt-get install openssl; "
                                        "scripts/install-deps --test installs it)")]

PORT = 16641
NB_SCHEMA = "/usr/share/ovn/ovn-nb.ovsschema"

PROBE = r"""
import sys
from vmnet.kinds import ovn
from vmnet.kinds.ovsdb import OvnError
from vmnet.model import Ovn
key, cert, ca, switch = sys.argv[1:5]
net = Ovn(switch, nb="ssl:127.0.0.1:%d" % int(sys.argv[5]), ssl_key=key, ssl_cert=cert,
          ssl_ca=ca)
try:
    print("EXISTS", ovn.switch_exists(net))
except OvnError as e:
    print("ERROR", e.message)
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name}-ca", "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.crt", cwd=d)


def _signed(d: Path, ca: str, name: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}-ca.crt", "-CAkey",
             f"{ca}-ca.key", "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", cwd=d)


@pytest.fixture
def ssl_nb() -> Iterator[tuple[Netns, Path]]:
    d = Path(tempfile.mkdtemp(prefix="vmnet-ovnssl-"))
    try:
        _ca(d, "good")
        _ca(d, "other")
        _signed(d, "good", "server")
        _signed(d, "good", "client")
        _signed(d, "other", "stranger")
        subprocess.run(["ovsdb-tool", "create", str(d / "nb.db"), NB_SCHEMA], check=True)
        with netns("ovnssl") as ns:
            sock = d / "nb.sock"
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, "ovsdb-server", str(d / "nb.db"),
                 f"--remote=pssl:{PORT}:127.0.0.1", f"--remote=punix:{sock}",
                 f"--private-key={d / 'server.key'}", f"--certificate={d / 'server.crt'}",
                 f"--ca-cert={d / 'good-ca.crt'}", f"--pidfile={d / 'nb.pid'}",
                 f"--log-file={d / 'nb.log'}", f"--unixctl={d / 'nb.ctl'}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until(sock.exists, 10, "the ssl northbound database's socket")
                subprocess.run(["ovn-nbctl", f"--db=unix:{sock}", "ls-add", "ls-ssl"],
                               check=True, capture_output=True)
                yield ns, d
            finally:
                stop_process(proc)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _probe(ns: Netns, d: Path, who: str, switch: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", PROBE,
                        str(d / f"{who}.key"), str(d / f"{who}.crt"), str(d / "good-ca.crt"),
                        switch, str(PORT)], text=True, capture_output=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return r.stdout.strip()


def test_the_northbound_database_is_reached_over_ssl_with_the_networks_certificates(
        ssl_nb: tuple[Netns, Path]) -> None:
    ns, d = ssl_nb
    assert _probe(ns, d, "client", "ls-ssl") == "EXISTS True"
    assert _probe(ns, d, "client", "ls-missing") == "EXISTS False"
    # a certificate the server's CA did not sign: refused, the address named
    got = _probe(ns, d, "stranger", "ls-ssl")
    assert got.startswith("ERROR ") and f"ssl:127.0.0.1:{PORT}" in got, got
