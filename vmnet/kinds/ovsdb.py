"""vmnet's one seam to OVSDB: this chassis' Open vSwitch database and OVN's northbound and
southbound databases, through ovsdbapp (the client os-vif and Neutron use).

Only ovn networks import this module (and with it ovsdbapp).  A connection is made once
per database address and process and kept: a CLI run makes it for its one operation,
vmnetd keeps it warm across requests (the IDL follows the database by itself).  Every
failure to reach a database becomes one OvnError naming the address tried.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time

from vmnet.errors import VmnetError

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any

    from vmnet.model import Ovn

CONNECT_TIMEOUT_MS = 5000
TXN_TIMEOUT = 10  # seconds ovsdbapp waits for a transaction

# What vmnet reads and writes in each database: the IDL monitors only these columns (a
# chassis' Interface rows with every column are ~0.9 KB each, statistics and status
# included, and python-ovs parses them in pure Python; vmnet's ~0.3 KB).  ovsdbapp's
# commands vmnet uses need no other: add-port and del-port (Bridge.ports, Port.name and
# .interfaces, Interface.name; next_cfg/cur_cfg and ofport for vswitchd's completion),
# lsp-add and lsp-del (Logical_Switch.ports).
COLUMNS = {
    "Open_vSwitch": {"Open_vSwitch": ("external_ids", "next_cfg", "cur_cfg"),
                     "Bridge": ("name", "ports", "datapath_type"),
                     "Port": ("name", "interfaces"),
                     "Interface": ("name", "type", "external_ids", "ofport", "error")},
    "OVN_Northbound": {"Logical_Switch": ("name", "ports"),
                       "Logical_Switch_Port": ("name", "addresses", "port_security",
                                               "external_ids", "options", "up")},
    "OVN_Southbound": {"Chassis": ("name",),
                       "Port_Binding": ("logical_port", "chassis")},
}


class OvnError(VmnetError):
    """An OVN/OVS database could not be reached, or refused what vmnet asked."""


# Tables with a row per port: monitored only for the rows a caller asked for (want()),
# so a process that plugs one port does not download and parse every port of the chassis
# (python-ovs from PyPI parses JSON in pure Python: ~2.4 ms per port at 100 ports).
NARROW = {"Open_vSwitch": ("Port", "Interface"), "OVN_Northbound": ("Logical_Switch_Port",),
          "OVN_Southbound": ("Port_Binding",)}
MAX_CLAUSES = 16  # a table asked for more rows than this is monitored whole (bulk, vmnetd)
WANT_TIMEOUT = 10.0

_lock = threading.Lock()
_wanted: dict[int, dict[str, list[Any]]] = {}
_apis: dict[tuple[str, str, int], Any] = {}
_ssl_set: tuple[str | None, str | None, str | None] | None = None


def _schema(address: str, schema: str) -> Any:
    """The database's schema, fetched with a bounded connect (ovsdbapp's own fetch waits
    for a TCP connect as long as the kernel does)."""
    from ovs import jsonrpc, stream

    last = "no address"
    for remote in (r.strip() for r in address.split(",")):
        err, strm = stream.Stream.open_block(stream.Stream.open(remote), CONNECT_TIMEOUT_MS)
        if err:
            last = f"{remote}: {os.strerror(err) if err > 0 else 'cannot connect'}"
            continue
        rpc = jsonrpc.Connection(strm)
        try:
            err, resp = rpc.transact_block(jsonrpc.Message.create_request("get_schema",
                                                                          [schema]))
        finally:
            rpc.close()
        if err:
            last = f"{remote}: {os.strerror(err)}"
            continue
        if resp.error:
            last = f"{remote}: {resp.error}"
            continue
        return resp.result
    hint = _hint(schema)
    if "ssl:" in address:
        hint += "; for ssl:, that the server's CA signed ssl_cert and ssl_ca signed the " \
                "server's certificate"
    raise OvnError(f"the {_label(schema)} database is not reachable at {address} ({last})",
                   hint=hint, errno=errno.ECONNREFUSED)


def _label(schema: str) -> str:
    return {"Open_vSwitch": "Open vSwitch", "OVN_Northbound": "OVN northbound",
            "OVN_Southbound": "OVN southbound"}.get(schema, schema)


def _hint(schema: str) -> str:
    if schema == "Open_vSwitch":
        return ("start ovsdb-server and ovs-vswitchd on this host, or set the network's "
                "ovs_db to their socket")
    if schema == "OVN_Northbound":
        return "check the network's northbound address, and that ovn-central runs there"
    return "check ovn-remote in this chassis' Open vSwitch external_ids"


def set_ssl(net: Ovn) -> None:
    """The private key, certificate and CA for ssl: remotes (process-wide in python-ovs:
    every ssl network of one process must name the same files)."""
    global _ssl_set
    want = (net.ssl_key, net.ssl_cert, net.ssl_ca)
    if want == (None, None, None) or want == _ssl_set:
        return
    if _ssl_set is not None:
        raise OvnError("two ovn networks name different SSL keys or certificates",
                       hint="use one key, certificate and CA for every ssl: northbound "
                            "address")
    for path in want:
        if path is None or not os.access(path, os.R_OK):
            raise OvnError(f"SSL file {path!r} cannot be read",
                           hint="check ssl_key, ssl_cert and ssl_ca of the network")
    from ovs import stream

    stream.Stream.ssl_set_private_key_file(net.ssl_key)
    stream.Stream.ssl_set_certificate_file(net.ssl_cert)
    stream.Stream.ssl_set_ca_cert_file(net.ssl_ca)
    _ssl_set = want


def api(address: str, schema: str) -> Any:
    """The ovsdbapp API of the database at `address` (connected once per network
    namespace, then kept: a tcp: connection lives in the namespace it was made in)."""
    from vmnet.kernel.netns import current_inode

    key = (address, schema, current_inode())
    with _lock:
        got = _apis.get(key)
        if got is not None:
            return got
        _quiet()
        from ovsdbapp.backend.ovs_idl import connection, idlutils

        helper = idlutils.create_schema_helper(_schema(address, schema))
        for table, columns in COLUMNS[schema].items():
            helper.register_columns(table, list(columns))
        idl = connection.OvsdbIdl(address, helper)
        for table in NARROW[schema]:
            idl.cond_change(table, [False])  # (sent with the first monitor request)
        conn = connection.Connection(idl, TXN_TIMEOUT)
        impl = _impl(schema)
        # ovsdbapp keeps a connection per API class: one class per database address.
        cls = type(f"{impl.__name__}_{len(_apis)}", (impl,), {"_ovsdb_connection": None})
        try:
            got = cls(conn)
        except Exception as e:  # ovsdbapp: OvsdbConnectionUnavailable, TimeoutException
            raise OvnError(f"the {_label(schema)} database at {address} did not answer: {e}",
                           hint=_hint(schema)) from None
        _apis[key] = got
        return got


def _quiet() -> None:
    """ovsdbapp and python-ovs log connection failures with tracebacks; vmnet says what
    failed in its own one line (vmnet.log does not use the logging module)."""
    import logging

    for name in ("ovsdbapp", "ovs"):
        lg = logging.getLogger(name)
        if not lg.handlers:
            lg.addHandler(logging.NullHandler())
        lg.propagate = False


def _impl(schema: str) -> Any:
    if schema == "Open_vSwitch":
        from ovsdbapp.schema.open_vswitch.impl_idl import OvsdbIdl

        return OvsdbIdl
    if schema == "OVN_Northbound":
        from ovsdbapp.schema.ovn_northbound.impl_idl import OvnNbApiIdlImpl

        return OvnNbApiIdlImpl
    from ovsdbapp.schema.ovn_southbound.impl_idl import OvnSbApiIdlImpl

    return OvnSbApiIdlImpl


def ovs(net: Ovn) -> Any:
    return api(net.ovs, "Open_vSwitch")


def nb(net: Ovn) -> Any:
    set_ssl(net)
    return api(net.nb, "OVN_Northbound")


def sb(address: str) -> Any:
    return api(address, "OVN_Southbound")


def want(a: Any, table: str, *clauses: list[Any]) -> None:
    """Have the IDL monitor the rows of a narrow `table` matching any of `clauses` (OVSDB
    conditions such as ["name", "==", "tap0"]) from now on, and wait until the server has
    sent them.  Rows asked for once stay monitored for the connection's life."""
    if table not in NARROW.get(a.schema, ()):
        return
    conn = a.ovsdb_connection
    idl = conn.idl
    with conn.lock:
        have = _wanted.setdefault(id(a), {}).setdefault(table, [])
        new = [c for c in clauses if c not in have]
        if not new or have == [True]:
            return
        have += new
        if len(have) > MAX_CLAUSES:
            have[:] = [True]
        cond = list(have)
        idl.cond_change(table, cond)
        state = idl.tables[table].condition_state
    conn.txns.alert_notify()  # wake the connection's thread: it sends the change
    deadline = time.monotonic() + WANT_TIMEOUT
    # (cond_change's returned seqno is one too high in python-ovs 4.0 when nothing else is
    # pending; the table's own condition state says when the server has acked it)
    while True:
        with conn.lock:
            if state.acked == cond and state.requested is None and state.new is None:
                return
        if time.monotonic() > deadline:
            raise OvnError(f"the {_label(a.schema)} database did not answer a monitor "
                           f"condition change within {WANT_TIMEOUT:g} s",
                           hint=_hint(a.schema))
        time.sleep(0.0005)


def lookup(a: Any, table: str, name: str) -> Any:
    """The row of `table` named `name` (an index lookup), or None."""
    from ovsdbapp.backend.ovs_idl import idlutils

    with a.ovsdb_connection.lock:
        try:
            return a.lookup(table, name)
        except idlutils.RowNotFound:
            return None


def rows(a: Any, table: str) -> list[Any]:
    """The IDL's rows of a table, as of now (under the connection's lock)."""
    with a.ovsdb_connection.lock:
        return list(a.tables[table].rows.values())


@contextlib.contextmanager
def transaction(a: Any, what: str) -> Iterator[Any]:
    """One ovsdbapp transaction; its failure is an OvnError saying what was being done."""
    try:
        with a.transaction(check_error=True) as txn:
            yield txn
    except OvnError:
        raise
    except Exception as e:
        raise OvnError(f"{what}: {e}", hint="the database refused the change; see "
                                            "ovsdb-server's log") from None


def run(a: Any, what: str, commands: Sequence[Any]) -> None:
    with transaction(a, what) as txn:
        for c in commands:
            txn.add(c)
