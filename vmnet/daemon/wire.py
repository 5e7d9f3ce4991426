"""vmnetd's wire format, encoded and decoded here and nowhere else.

A message is a frame: 4 bytes of big-endian length, then one value.  A value is
one tag byte and its body:

    n            None          t / f      True / False
    i + 8 bytes  an int (big-endian, signed)
    s + 4 + N    a str (UTF-8, N bytes; bytes that are not UTF-8 travel as Python's
                 surrogate escapes, as argv and paths hold them)
                                             b + 4 + N    bytes
    l + 4 + K    a list of K values          d + 4 + K    K (str key, value) pairs

The client is a few milliseconds of Python on every VM start, so this module
imports nothing.  The daemon decodes what any local user sends, so `decode`
trusts nothing: every length is checked against what is left, nesting and
item counts are bounded, the whole frame must be consumed, and anything else
raises WireError (fuzzed in tests/test_daemon_wire.py).  Never marshal or
pickle: neither is safe on hostile bytes.
"""

# No `from __future__ import annotations` here: importing __future__ costs a door that
# vmnetd serves ~0.2 ms; annotations naming TYPE_CHECKING-only types are strings.

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    Plain = None | bool | int | str | bytes | list["Plain"] | dict[str, "Plain"]

VERSION = 1
MAX_FRAME = 8 << 20  # a libvirt domain XML (4 MiB at most) and its request fit
MAX_DEPTH = 6
MAX_ITEMS = 100_000
_INT = 8


class WireError(ValueError):
    """Bytes that are not a vmnetd message."""


def encode(value: "Plain") -> bytes:
    """`value` as one frame (length included); WireError for what cannot go."""
    parts: list[bytes] = []
    try:
        _enc(value, parts, 0)
    except OverflowError:
        raise WireError("an int is outside 64 bits") from None
    except UnicodeEncodeError:
        raise WireError("a string holds a lone surrogate") from None
    body = b"".join(parts)
    if len(body) > MAX_FRAME:
        raise WireError(f"message of {len(body)} bytes is over the {MAX_FRAME} limit")
    return len(body).to_bytes(4, "big") + body


def _enc(v: "Plain", out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireError("message nested too deeply")
    if v is None:
        out.append(b"n")
    elif v is True:
        out.append(b"t")
    elif v is False:
        out.append(b"f")
    elif isinstance(v, int):
        out.append(b"i" + v.to_bytes(_INT, "big", signed=True))
    elif isinstance(v, str):
        raw = v.encode("utf-8", "surrogateescape")
        out.append(b"s" + len(raw).to_bytes(4, "big") + raw)
    elif isinstance(v, bytes):
        out.append(b"b" + len(v).to_bytes(4, "big") + v)
    elif isinstance(v, list | tuple):
        out.append(b"l" + len(v).to_bytes(4, "big"))
        for item in v:
            _enc(item, out, depth + 1)
    elif isinstance(v, dict):
        out.append(b"d" + len(v).to_bytes(4, "big"))
        for key, item in v.items():
            _enc(key, out, depth + 1)
            _enc(item, out, depth + 1)
    else:
        raise WireError(f"cannot encode a {type(v).__name__}")


def frame_length(head: bytes, limit: int = MAX_FRAME) -> int:
    """The body length a 4-byte frame head announces; WireError if over `limit`."""
    n = int.from_bytes(head[:4], "big")
    if n > limit:
        raise WireError(f"message of {n} bytes is over the {limit} limit")
    return n


def decode(body: bytes) -> "Plain":
    """One value from a frame's body (its head already removed)."""
    r = _Reader(body)
    v = r.value(0)
    if r.pos != len(body):
        raise WireError(f"{len(body) - r.pos} stray bytes after the message")
    return v


class _Reader:
    __slots__ = ("data", "items", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.items = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise WireError("message cut short")
        got = self.data[self.pos:end]
        self.pos = end
        return got

    def count(self) -> int:
        n = int.from_bytes(self.take(4), "big")
        if n > len(self.data) - self.pos:  # every item takes a byte at least
            raise WireError("a length runs past the message")
        return n

    def value(self, depth: int) -> "Plain":
        if depth > MAX_DEPTH:
            raise WireError("message nested too deeply")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise WireError("message has too many items")
        tag = self.take(1)
        if tag == b"n":
            return None
        if tag == b"t":
            return True
        if tag == b"f":
            return False
        if tag == b"i":
            return int.from_bytes(self.take(_INT), "big", signed=True)
        if tag == b"s":
            # As encoded: UTF-8, bytes that are not as surrogate escapes (the way Python
            # gives argv, the environment and paths), so any path goes through.
            return self.take(self.count()).decode("utf-8", "surrogateescape")
        if tag == b"b":
            return self.take(self.count())
        if tag == b"l":
            return [self.value(depth + 1) for _ in range(self.count())]
        if tag == b"d":
            n = self.count()
            out: dict[str, Plain] = {}
            for _ in range(n):
                key = self.value(depth + 1)
                if not isinstance(key, str):
                    raise WireError("a key is not a string")
                if key in out:
                    raise WireError(f"key {key!r} given twice")
                out[key] = self.value(depth + 1)
            return out
        raise WireError(f"unknown tag {tag!r}")


# -- requests ----------------------------------------------------------------------
DOORS = ("vmnet", "ifup", "ifdown", "hook", "run", "helper")


class Request:
    """A decoded, shape-checked request: which door, its argv, env, cwd, stdin."""

    __slots__ = ("argv", "cwd", "door", "env", "extra", "stdin")

    def __init__(self, door: str, argv: list[str], env: dict[str, str], cwd: str,
                 stdin: bytes | None = None, extra: "dict[str, Plain] | None" = None) -> None:
        self.door = door
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.stdin = stdin
        self.extra = extra or {}

    def plain(self) -> "dict[str, Plain]":
        return {"v": VERSION, "door": self.door, "argv": list(self.argv), "env": dict(self.env),
                "cwd": self.cwd, "stdin": self.stdin, "extra": self.extra}


def request(value: "Plain") -> Request:
    """The request a decoded value is; WireError naming what is wrong."""
    if not isinstance(value, dict):
        raise WireError("a request is a table")
    unknown = sorted(set(value) - {"v", "door", "argv", "env", "cwd", "stdin", "extra"})
    if unknown:
        raise WireError(f"unknown request field {unknown[0]!r}")
    if type(value.get("v")) is not int or value.get("v") != VERSION:
        raise WireError(f"request version {value.get('v')!r}; this vmnetd speaks {VERSION} "
                        "(client and daemon from different vmnet installs?)")
    door = value.get("door")
    if door not in DOORS:
        raise WireError(f"unknown operation {door!r} (one of {', '.join(DOORS)})")
    argv = value.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise WireError("argv is a list of strings")
    env = value.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(x, str) for x in env.values()):
        raise WireError("env is a table of strings")
    cwd = value.get("cwd", "/")
    if not isinstance(cwd, str):
        raise WireError("cwd is a string")
    stdin = value.get("stdin")
    if stdin is not None and not isinstance(stdin, bytes):
        raise WireError("stdin is bytes")
    extra = value.get("extra", {})
    if not isinstance(extra, dict):
        raise WireError("extra is a table")
    return Request(str(door), [str(a) for a in argv], {k: str(x) for k, x in env.items()},
                   cwd, stdin, extra)
