"""Validation of names and values, done once when input becomes a model.

Pure functions: no I/O.  Each raises InputError naming the culprit (`what`
is the flag or config key the value came from).
"""

from __future__ import annotations

from vmnet.errors import InputError

IFNAMSIZ = 16  # kernel buffer, including the terminating NUL
MAX_IFNAME = IFNAMSIZ - 1
MAX_VM_NAME = 64
MAX_QUEUES = 256  # MAX_TAP_QUEUES in drivers/net/tun.c
MAX_NICS = 32  # PCI slots a pc/q35 guest realistically has for NICs
MAX_BRIDGE_PORTS = 1023  # BR_MAX_PORTS (1024) less port 0, which is reserved
MIN_MTU, MAX_MTU = 68, 65521  # IPv4 minimum; tun's maximum (65535 - tun header)
# The kernel clamps the forward delay to 2..30 s when STP is on (br_stp.c).
STP_FORWARD_DELAY = (2, 30)
FORWARD_DELAY_MAX = 30
RESERVED_TAP_PREFIXES = ("vnet", "macvtap", "macvlan")  # libvirt's own names

_HEX = frozenset("0123456789abcdefABCDEF")


def _spaced_or_unprintable(value: str) -> bool:
    """Any whitespace or control character: any(c.isspace() or not c.isprintable()).

    Every whitespace character but the ASCII space is unprintable to Python
    (tests/test_properties.py checks that over all of Unicode), so two C-level
    scans do it (this runs for every tap of a thousand-VM bulk run).
    """
    return " " in value or not value.isprintable()


def ifname(value: object, what: str) -> str:
    """An interface name the kernel accepts and tools can print."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{what}: interface name must be a non-empty string, got {value!r}")
    if len(value.encode()) > MAX_IFNAME:
        raise InputError(f"{what}: interface name {value!r} is longer than {MAX_IFNAME} "
                         "characters (the kernel's limit)")
    if value in (".", "..") or "/" in value or ":" in value or "%" in value or \
            _spaced_or_unprintable(value):
        raise InputError(f"{what}: interface name {value!r} contains '/', ':', '%', "
                         "whitespace or control characters, or is '.'/'..'")
    if b"\xa0" in value.encode():
        # dev_valid_name() tests each byte with the kernel's Latin-1 isspace(), for
        # which 0xA0 (NBSP) is a space: 'à' (c3 a0) and many more get EINVAL.
        raise InputError(f"{what}: interface name {value!r} contains a character whose "
                         "UTF-8 form the kernel takes for whitespace (byte 0xa0)")
    return value


def tap_name(value: object, what: str) -> str:
    name = ifname(value, what)
    for prefix in RESERVED_TAP_PREFIXES:
        if name.startswith(prefix):
            raise InputError(f"{what}: tap name {name!r} starts with {prefix!r}, "
                             "which libvirt uses for its own interfaces")
    return name


def vm_name(value: object, what: str = "VM name") -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{what}: must be a non-empty string, got {value!r}")
    if len(value) > MAX_VM_NAME:
        raise InputError(f"{what}: {value[:20]!r}... is longer than {MAX_VM_NAME} characters")
    if value in (".", "..") or "/" in value or _spaced_or_unprintable(value):
        raise InputError(f"{what}: {value!r} contains '/', whitespace or control "
                         "characters, or is '.'/'..'")
    if value.startswith("-"):
        raise InputError(f"{what}: {value!r} starts with '-', which commands would read as "
                         "an option; give the VM a name that starts with a letter or digit")
    return value


def mac(value: object, what: str) -> str:
    """A unicast Ethernet address, normalised to lower case."""
    if not isinstance(value, str) or len(value) != 17 or value[2::3] != ":::::" or \
            not _HEX.issuperset(value[0::3] + value[1::3]):
        raise InputError(f"{what}: {value!r} is not a MAC address (expected xx:xx:xx:xx:xx:xx)")
    first = int(value[:2], 16)
    if first & 1:
        raise InputError(f"{what}: {value} is a multicast address (low bit of the first "
                         "byte set); a NIC needs a unicast MAC")
    if value.lower() == "00:00:00:00:00:00":
        raise InputError(f"{what}: 00:00:00:00:00:00 is not a usable MAC")
    return value.lower()


def _int(value: object, what: str) -> int:
    """An integer from a config value (int) or a flag/metadata text: ASCII digits only.

    str.isdigit() also accepts '²' (int() then fails) and '١٢٣' (int() reads 123), so
    every numeric input goes through here and only 0-9 are digits.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InputError(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, str):
        if not value or not value.isascii() or not value.isdigit() or len(value) > 12:
            raise InputError(f"{what}: expected a whole number in ASCII digits, got {value!r}")
        return int(value)
    return value


def integer(value: object, what: str, lo: int, hi: int) -> int:
    """The one parser of whole numbers (CLI, config, hook metadata): digits, bounds."""
    return int_range(value, what, lo, hi)


MAX_DURATION = 3600.0


def duration(value: object, what: str, lo: float = 0.0, hi: float = MAX_DURATION) -> float:
    """The one parser of durations in seconds: ASCII decimal with an optional fraction.

    float() would also take 'inf', 'nan', '1e9', '-0' and Unicode digits; none of
    them is a sensible wait, and NaN never compares, so a NaN timeout never expires.
    """
    if isinstance(value, bool):
        raise InputError(f"{what}: expected seconds, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = repr(value)
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise InputError(f"{what}: {text} is not a number of seconds")
    elif isinstance(value, str):
        whole, dot, frac = value.partition(".")
        ok = value.isascii() and whole.isdigit() and (not dot or frac.isdigit()) and \
            len(value) <= 16
        if not ok:
            raise InputError(f"{what}: expected seconds as an ASCII decimal like 10 or 2.5, "
                             f"got {value!r}")
        number = float(value)
    else:
        raise InputError(f"{what}: expected seconds, got {value!r}")
    if not lo <= number <= hi:
        raise InputError(f"{what}: {value} is outside {lo:g}..{hi:g} seconds")
    return number


def int_range(value: object, what: str, lo: int, hi: int) -> int:
    n = _int(value, what)
    if not lo <= n <= hi:
        raise InputError(f"{what}: {n} is outside {lo}..{hi}")
    return n


def mtu(value: object, what: str) -> int:
    return int_range(value, what, MIN_MTU, MAX_MTU)


def queues(value: object, what: str) -> int:
    return int_range(value, what, 1, MAX_QUEUES)


def stp_pair(stp: bool, forward_delay: int, what: str) -> None:
    lo, hi = STP_FORWARD_DELAY
    if stp and not lo <= forward_delay <= hi:
        raise InputError(f"{what}: with STP on, forward_delay must be {lo}..{hi} seconds "
                         f"(the kernel clamps it), got {forward_delay}")


def cidr(value: object, what: str) -> str:
    """A host address with prefix, e.g. 10.0.0.1/24 (not a network address)."""
    import ipaddress  # only here: it costs milliseconds to import

    if not isinstance(value, str) or "/" not in value:
        raise InputError(f"{what}: expected ADDRESS/PREFIX, got {value!r}")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError as e:
        raise InputError(f"{what}: {value!r} is not an address with prefix: {e}") from None
    if iface.ip.is_multicast or iface.ip.is_unspecified:
        raise InputError(f"{what}: {value} is not a usable host address")
    return str(iface)


def ipv4(value: object, what: str) -> str:
    """A dotted-quad IPv4 address (no prefix), normalised."""
    parts = value.split(".") if isinstance(value, str) else []
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 and
                                  int(p) <= 255 for p in parts):
        raise InputError(f"{what}: {value!r} is not an IPv4 address (expected a.b.c.d)")
    return ".".join(str(int(p)) for p in parts)


def l3_subnet(value: str, what: str, max_prefix: int) -> str:
    """The host address of a nat/isolated network: IPv4, a host of its subnet, room for
    guests (prefix at most `max_prefix`)."""
    import ipaddress

    iface = ipaddress.ip_interface(value)
    if iface.version != 4:
        raise InputError(f"{what}: {value} is not IPv4 (nat and isolated networks are IPv4)")
    net = iface.network
    if net.prefixlen > max_prefix:
        raise InputError(f"{what}: /{net.prefixlen} is too small for DHCP guests",
                         hint=f"use a prefix of /{max_prefix} or shorter, e.g. /24")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise InputError(f"{what}: {iface.ip} is the network's own "
                         f"{'network' if iface.ip == net.network_address else 'broadcast'} "
                         "address; give the host's address in it, e.g. "
                         f"{net.network_address + 1}/{net.prefixlen}")
    return value


def dns_label(value: object, what: str) -> str:
    """A DNS name made of letters, digits and hyphens (dots between labels)."""
    if not isinstance(value, str) or not value or len(value) > 253 or not all(
            0 < len(lab) <= 63 and lab.isascii() and all(c.isalnum() or c == "-" for c in lab)
            and not lab.startswith("-") and not lab.endswith("-")
            for lab in value.split(".")):
        raise InputError(f"{what}: {value!r} is not a DNS name (letters, digits, '-', "
                         "labels of 1-63 characters)")
    return value.lower()


def address(value: object, what: str) -> str:
    """One IPv4 or IPv6 host address (no prefix), normalised."""
    import ipaddress

    if not isinstance(value, str) or "/" in value:
        raise InputError(f"{what}: expected an IPv4 or IPv6 address, got {value!r}")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise InputError(f"{what}: {value!r} is not an IPv4 or IPv6 address") from None
    if ip.is_multicast or ip.is_unspecified:
        raise InputError(f"{what}: {value} is not a host address")
    return str(ip)


_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
               "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}
_SIZE_UNITS = {"b": 1, "kb": 1024, "k": 1024, "mb": 1024**2, "m": 1024**2}


def rate(value: object, what: str) -> int:
    """A rate as tc writes it (100mbit, 1gbit, 12mbps: bps units are bytes), in bits/s."""
    text = value.strip().lower() if isinstance(value, str) else ""
    num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(num):]
    if not num or not unit or unit not in _RATE_UNITS or not _is_number(num):
        raise InputError(f"{what}: {value!r} is not a rate with a unit",
                         hint="write it as tc does: 100mbit, 1gbit, 500kbit, 12mbps "
                              "(bps: bytes per second)")
    bits = int(float(num) * _RATE_UNITS[unit])
    if not 8000 <= bits <= 10**12:
        raise InputError(f"{what}: {value} is outside 8kbit..1000gbit")
    return bits


def size(value: object, what: str) -> int:
    """A burst size (64kb, 1mb, 1500b), in bytes."""
    text = value.strip().lower() if isinstance(value, str) else ""
    num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(num):]
    if not num or unit not in _SIZE_UNITS or not _is_number(num):
        raise InputError(f"{what}: {value!r} is not a size with a unit",
                         hint="e.g. 64kb, 1mb or 1500b")
    n = int(float(num) * _SIZE_UNITS[unit])
    if not 1500 <= n <= 1 << 30:
        raise InputError(f"{what}: {value} is outside 1500b..1024mb")
    return n


def _is_number(text: str) -> bool:
    whole, dot, frac = text.partition(".")
    return whole.isascii() and whole.isdigit() and (not dot or (frac.isascii() and
                                                                 frac.isdigit()))


def vlan_id(value: object, what: str) -> int:
    """A VLAN id a port can carry: 1..4094 (0 means "no VLAN", 4095 is reserved)."""
    return int_range(value, what, 1, 4094)


def ovsdb_address(value: object, what: str) -> str:
    """An OVSDB remote as OVS writes them: unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT
    (several, comma-separated, for a clustered database)."""
    if not isinstance(value, str) or not value or _spaced_or_unprintable(value):
        raise InputError(f"{what}: expected an OVSDB address like unix:/run/ovn/ovnnb_db.sock "
                         f"or tcp:192.0.2.10:6641, got {value!r}")
    for part in value.split(","):
        proto, _, rest = part.partition(":")
        if proto == "unix" and rest.startswith("/"):
            continue
        host, _, port = rest.rpartition(":")
        if proto in ("tcp", "ssl") and host and port.isdigit() and 0 < int(port) < 65536:
            continue
        raise InputError(f"{what}: {part!r} is not unix:/ABSOLUTE/PATH, tcp:HOST:PORT or "
                         "ssl:HOST:PORT")
    return value


def ovn_name(value: object, what: str) -> str:
    """A logical switch or port name: printable, no spaces, at most 255 characters."""
    if not isinstance(value, str) or not value or len(value) > 255 or \
            _spaced_or_unprintable(value):
        raise InputError(f"{what}: {value!r} is not a logical name (printable, no spaces, "
                         "1..255 characters)")
    return value
