"""vmnetd's wire codec (vmnet.daemon.wire), without a kernel.

`decode` and `request` read whatever any local user sends the root daemon, so
besides the round trip of every Plain value, they are fuzzed: random bytes and
valid frames broken every way (cut short, bytes flipped, lengths made huge,
nested too deep, keys twice, strings not UTF-8, bytes left over) must give a
WireError and nothing else: no other exception, no hang (a timer bounds each
call).  The refusals of `request` name their culprit.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from vmnet.daemon import client, wire
from vmnet.daemon.wire import MAX_DEPTH, WireError

# -- strategies --------------------------------------------------------------------
I64 = st.integers(-(2**63), 2**63 - 1)
LEAVES = st.none() | st.booleans() | I64 | st.text(max_size=24) | st.binary(max_size=24)
KEYS = st.text(max_size=8)


def _levels() -> list[st.SearchStrategy[Any]]:
    """PLAIN_AT[d]: any Plain value that may sit at depth d of a message (the top is 0;
    a container at MAX_DEPTH can only be empty: its items would be one deeper)."""
    levels: list[st.SearchStrategy[Any]] = [LEAVES | st.just([]) | st.just({})]
    for _ in range(MAX_DEPTH):
        kids = levels[0]
        levels.insert(0, LEAVES | st.lists(kids, max_size=4)
                      | st.dictionaries(KEYS, kids, max_size=4))
    return levels


PLAIN_AT = _levels()
PLAIN = PLAIN_AT[0]


def nest(n: int, leaf: Any = None) -> Any:
    """`leaf` inside n lists: at depth n."""
    for _ in range(n):
        leaf = [leaf]
    return leaf


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (True is no 1, 0 no False), dict
    keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def body(value: Any) -> bytes:
    return wire.encode(value)[4:]


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def raw_str(raw: bytes) -> bytes:
    return b"s" + u32(len(raw)) + raw


def raw_dict(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"d" + u32(len(pairs)) + b"".join(k + v for k, v in pairs)


class Hang(Exception):
    """decode or request ran past its time."""


@contextlib.contextmanager
def bounded(seconds: float = 2.0) -> Iterator[None]:
    """Raise Hang inside the block if it runs longer than `seconds` (SIGALRM)."""
    def ring(_signum: int, _frame: object) -> None:
        raise Hang(f"took over {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def kind(e: WireError) -> str:
    """A refusal's message without its particulars (for hypothesis' statistics)."""
    return re.sub(r"'.*'|\d+|\(.*\)", "_", str(e))[:40]


def check_decode(data: bytes) -> Any:
    """decode `data` as the daemon does (then `request` on what it gives): WireError or a
    value, nothing else, in bounded time.  A value decode accepts is re-encoded to the very
    same bytes (one encoding per value: nothing is read loosely)."""
    with bounded():
        try:
            value = wire.decode(data)
        except WireError as e:
            assert str(e)
            event(f"decode refused: {kind(e)}")
            return None
        try:
            wire.request(value)
            event("decoded; a request")
        except WireError as e:
            assert str(e)
            event(f"decoded; request refused: {kind(e)}")
    assert wire.encode(value) == u32(len(data)) + data
    return value


# -- the round trip ----------------------------------------------------------------
@given(PLAIN)
@example(None)
@example(True)
@example(False)
@example(0)
@example(1)
@example(2**63 - 1)
@example(-(2**63))
@example("")
@example("é\u20ac\U0001f600\x00")
@example(b"")
@example(b"\x00\xff")
@example([True, 1, False, 0, None])
@example({"": None, "a": [], "b": {}})
@example(nest(MAX_DEPTH))
def test_round_trip(value: Any) -> None:
    frame = wire.encode(value)
    assert wire.frame_length(frame[:4]) == len(frame) - 4
    back = wire.decode(frame[4:])
    assert same(back, value), (back, value)
    assert wire.encode(back) == frame


def test_round_trip_keeps_bool_and_int_apart() -> None:
    assert body(True) == b"t" and body(False) == b"f"
    assert body(1) == b"i" + (1).to_bytes(8, "big")
    assert type(wire.decode(body(True))) is bool
    assert type(wire.decode(body(1))) is int


def test_depth_limit_is_the_same_both_ways() -> None:
    ok = nest(MAX_DEPTH)
    assert wire.decode(body(ok)) == ok
    with pytest.raises(WireError, match="nested too deeply"):
        wire.encode(nest(MAX_DEPTH + 1))
    deep = b"l" + u32(1)
    with pytest.raises(WireError, match="nested too deeply"):
        wire.decode(deep * (MAX_DEPTH + 1) + b"n")
    # a dict's keys count as one deeper, as its values do
    with pytest.raises(WireError, match="nested too deeply"):
        wire.decode(deep * MAX_DEPTH + raw_dict((raw_str(b"k"), b"n")))


# -- fuzz: arbitrary bytes ---------------------------------------------------------
@given(st.binary(max_size=512))
@example(b"")
@example(b"s")
@example(b"i\x00")
@example(b"l\xff\xff\xff\xff")
@example(b"d\x00\x00\x00\x01i" + bytes(8) + b"n")
def test_random_bytes_only_wire_error(data: bytes) -> None:
    check_decode(data)


@given(st.sampled_from(b"ntfisbld"), st.integers(0, 12), st.binary(max_size=64))
def test_random_bytes_after_a_tag_only_wire_error(tag: int, n: int, rest: bytes) -> None:
    """A known tag, a small length, then anything."""
    check_decode(bytes([tag]) + (u32(n) if tag in b"sbld" else b"") + rest)


@given(st.binary(min_size=4, max_size=4), st.integers(0, wire.MAX_FRAME))
def test_frame_length_is_bounded(head: bytes, limit: int) -> None:
    try:
        n = wire.frame_length(head, limit)
    except WireError as e:
        assert "over the" in str(e)
        assert int.from_bytes(head, "big") > limit
    else:
        assert 0 <= n <= limit


# -- fuzz: valid frames, broken ----------------------------------------------------
MUTATIONS = ("truncate", "flip", "set", "huge-length", "insert", "delete", "stray",
             "deeper", "duplicate-key", "not-utf8", "int-key")


@st.composite
def broken(draw: st.DrawFn) -> bytes:
    base = request_like() if draw(st.booleans()) else PLAIN  # half are requests
    data = bytearray(body(draw(base)))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(MUTATIONS))
        at = draw(st.integers(0, len(data)))
        if how == "truncate":
            del data[at:]
        elif how == "flip" and data:
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif how == "set" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif how == "huge-length":
            n = draw(st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, len(data),
                                      len(data) + 1, wire.MAX_ITEMS + 1]))
            data[at:at + 4] = u32(n)
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif how == "stray":
            data += draw(st.binary(min_size=1, max_size=8))
        elif how == "deeper":
            data[0:0] = (b"l" + u32(1)) * draw(st.integers(1, 2 * MAX_DEPTH))
        elif how == "duplicate-key":
            key = raw_str(draw(KEYS).encode())
            data = bytearray(raw_dict((key, b"n"), (key, bytes(data))))
        elif how == "not-utf8":
            bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf",
                                        b"a\x80b", b"\xf8\x88\x80\x80\x80"]))
            data[at:at] = raw_str(bad)
        elif how == "int-key":
            data = bytearray(raw_dict((body(draw(I64)), bytes(data))))
    return bytes(data)


@given(broken())
def test_broken_frames_only_wire_error(data: bytes) -> None:
    check_decode(data)


@given(st.builds(lambda v, n: body(v)[:n], PLAIN, st.integers(0, 200)))
def test_every_cut_of_a_frame_is_refused_or_whole(data: bytes) -> None:
    value = check_decode(data)
    if value is not None:  # only a cut at the very end gives a value back
        assert body(value) == data


@pytest.mark.parametrize("data, message", [
    (b"", "cut short"),
    (b"?", "unknown tag"),
    (b"N", "unknown tag"),  # tags are lower case
    (b"nn", "1 stray bytes"),
    (b"i" + bytes(7), "cut short"),
    (b"s" + u32(3) + b"ab", "runs past the message"),
    (b"b" + u32(0xFFFFFFFF), "runs past the message"),
    (b"l" + u32(0xFFFFFFFF) + b"n", "runs past the message"),
    (b"d" + u32(0xFFFFFFFF), "runs past the message"),
    (raw_dict((raw_str(b"k"), b"n"), (raw_str(b"k"), b"t")), "key 'k' given twice"),
    (raw_dict((b"i" + bytes(8), b"n")), "a key is not a string"),
    (raw_dict((b"n", b"n")), "a key is not a string"),
    ((b"l" + u32(1)) * 7 + b"n", "nested too deeply"),
    ((b"l" + u32(1)) * 100_000 + b"n", "nested too deeply"),
    (b"l" + u32(wire.MAX_ITEMS) + b"n" * wire.MAX_ITEMS, "too many items"),
    (b"l" + u32(3_000_000) + b"n" * 3_000_000, "too many items"),
], ids=["empty", "unknown-tag", "upper-case-tag", "stray-byte", "short-int",
        "short-str", "huge-bytes-length", "huge-list-count", "huge-dict-count",
        "duplicate-key", "int-key", "none-key", "depth-7",
        "depth-100000", "max-items", "3M-items"])
def test_decode_refusals(data: bytes, message: str) -> None:
    t = time.monotonic()
    with bounded(), pytest.raises(WireError, match=re.escape(message)):
        wire.decode(data)
    assert time.monotonic() - t < 2.0


@pytest.mark.parametrize("raw", [b"\xff", b"\xed\xa0\x80", b"a\x80b", b"\xff" * 1000],
                         ids=["ff", "utf8-surrogate", "inner", "long"])
def test_strings_that_are_not_utf8_travel_as_surrogate_escapes(raw: bytes) -> None:
    """As Python holds argv, the environment and paths: decoded as os.fsdecode would,
    and encoded back to the very bytes."""
    got = wire.decode(raw_str(raw))
    assert got == raw.decode("utf-8", "surrogateescape")
    assert body(got) == raw_str(raw)


def test_decode_accepts_the_largest_lists_it_allows() -> None:
    """MAX_ITEMS counts every value, the list itself too: 99,999 items fit."""
    n = wire.MAX_ITEMS - 1
    with bounded():
        assert wire.decode(b"l" + u32(n) + b"n" * n) == [None] * n


# -- request: the shape of a request -----------------------------------------------
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "v": st.just(wire.VERSION),
    "door": st.sampled_from(wire.DOORS),
    "argv": st.lists(st.text(max_size=12), max_size=5),
    "env": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
    "cwd": st.text(max_size=16),
    "stdin": st.none() | st.binary(max_size=16),
    "extra": st.dictionaries(KEYS, PLAIN_AT[2], max_size=3),
}


@st.composite
def request_like(draw: st.DrawFn) -> dict[str, Any]:
    """A good request with up to two fields dropped or made anything, and maybe a stray
    field: most are refused for one culprit, some pass."""
    value = {k: draw(s) for k, s in GOOD.items()}
    for key in draw(st.lists(st.sampled_from(sorted(GOOD)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del value[key]
        else:
            value[key] = draw(PLAIN_AT[1])
    if draw(st.integers(0, 9)) == 9:
        value[draw(KEYS)] = draw(PLAIN_AT[1])
    return value


@given(st.booleans().flatmap(lambda r: request_like() if r else PLAIN))
def test_request_refuses_only_with_wire_error(value: Any) -> None:
    try:
        with bounded():
            req = wire.request(value)
    except WireError as e:
        assert str(e)
        event(f"refused: {kind(e)}")
        return
    event("accepted")
    assert isinstance(value, dict)
    assert set(value) <= set(GOOD)
    assert req.door in wire.DOORS
    assert all(type(a) is str for a in req.argv)
    assert all(type(k) is str and type(x) is str for k, x in req.env.items())
    assert type(req.cwd) is str
    assert req.stdin is None or type(req.stdin) is bytes
    assert type(req.extra) is dict
    # what it means goes over the wire unchanged
    again = wire.request(wire.decode(body(req.plain())))
    assert (again.door, again.argv, again.env, again.cwd, again.stdin) == \
        (req.door, req.argv, req.env, req.cwd, req.stdin)
    assert same(again.extra, req.extra)


@given(st.sampled_from(wire.DOORS), GOOD["argv"], GOOD["env"],
       st.none() | st.binary(max_size=16))
def test_the_client_request_is_what_the_daemon_reads(door: str, argv: list[str],
                                                     env: dict[str, str],
                                                     stdin: bytes | None) -> None:
    sent = client.request(door, argv, env, stdin=stdin, extra={"fdbase": 3})
    assert isinstance(sent, dict)
    req = wire.request(wire.decode(body(sent)))
    assert (req.door, req.argv, req.stdin, req.extra) == (door, argv, stdin, {"fdbase": 3})
    assert req.env == sent["env"] and sent["env"] in (env, {})  # a user's stays home
    if os.geteuid() != 0:
        assert req.env == {}


def test_request_defaults() -> None:
    req = wire.request({"v": 1, "door": "vmnet", "argv": []})
    assert (req.door, req.argv, req.env, req.cwd, req.stdin, req.extra) == \
        ("vmnet", [], {}, "/", None, {})


@pytest.mark.parametrize("door", wire.DOORS)
def test_request_takes_every_door(door: str) -> None:
    assert wire.request({"v": 1, "door": door, "argv": ["x"]}).door == door


BASE: dict[str, Any] = {"v": 1, "door": "vmnet", "argv": ["status"], "env": {}, "cwd": "/",
                        "stdin": None, "extra": {}}


def but(**changes: Any) -> dict[str, Any]:
    """BASE with `changes`; a value of `...` drops the key."""
    out = dict(BASE)
    for k, v in changes.items():
        if v is ...:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("value, message", [
    pytest.param([], "a request is a table", id="list"),
    pytest.param(None, "a request is a table", id="none"),
    pytest.param(b"{}", "a request is a table", id="bytes"),
    pytest.param(but(shell="sh"), "unknown request field 'shell'", id="unknown-field"),
    pytest.param(but(zz=1, aa=2), "unknown request field 'aa'", id="unknown-field-first"),
    pytest.param(but(V=1), "unknown request field 'V'", id="field-case"),
    pytest.param(but(v=...), "request version None; this vmnetd speaks 1",
                 id="version-missing"),
    pytest.param(but(v=2), "request version 2; this vmnetd speaks 1", id="version-2"),
    pytest.param(but(v=0), "request version 0;", id="version-0"),
    pytest.param(but(v=-1), "request version -1;", id="version-negative"),
    pytest.param(but(v=2**63 - 1), f"request version {2**63 - 1};", id="version-huge"),
    pytest.param(but(v="1"), "request version '1';", id="version-str"),
    pytest.param(but(v=[1]), "request version [1];", id="version-list"),
    pytest.param(but(v=True), "request version True;", id="version-true"),
    pytest.param(but(door=...), "unknown operation None", id="door-missing"),
    pytest.param(but(door="shell"), "unknown operation 'shell' (one of vmnet, ifup, "
                 "ifdown, hook, run, helper)", id="door-unknown"),
    pytest.param(but(door="VMNET"), "unknown operation 'VMNET'", id="door-case"),
    pytest.param(but(door=""), "unknown operation ''", id="door-empty"),
    pytest.param(but(door=["vmnet"]), "unknown operation ['vmnet']", id="door-list"),
    pytest.param(but(door=b"vmnet"), "unknown operation b'vmnet'", id="door-bytes"),
    pytest.param(but(argv=...), "argv is a list of strings", id="argv-missing"),
    pytest.param(but(argv="status"), "argv is a list of strings", id="argv-str"),
    pytest.param(but(argv=["up", 1]), "argv is a list of strings", id="argv-int"),
    pytest.param(but(argv=[b"up"]), "argv is a list of strings", id="argv-bytes"),
    pytest.param(but(argv=["up", None]), "argv is a list of strings", id="argv-none"),
    pytest.param(but(argv=[["up"]]), "argv is a list of strings", id="argv-nested"),
    pytest.param(but(argv={"0": "up"}), "argv is a list of strings", id="argv-table"),
    pytest.param(but(env=[]), "env is a table of strings", id="env-list"),
    pytest.param(but(env={"A": 1}), "env is a table of strings", id="env-int"),
    pytest.param(but(env={"A": None}), "env is a table of strings", id="env-none"),
    pytest.param(but(env={"A": b"x"}), "env is a table of strings", id="env-bytes"),
    pytest.param(but(cwd=b"/"), "cwd is a string", id="cwd-bytes"),
    pytest.param(but(cwd=None), "cwd is a string", id="cwd-none"),
    pytest.param(but(stdin="text"), "stdin is bytes", id="stdin-str"),
    pytest.param(but(stdin=[]), "stdin is bytes", id="stdin-list"),
    pytest.param(but(extra=[]), "extra is a table", id="extra-list"),
    pytest.param(but(extra=None), "extra is a table", id="extra-none"),
])
def test_request_refusals(value: Any, message: str) -> None:
    with pytest.raises(WireError, match=re.escape(message)):
        wire.request(value)
    # and the same through the bytes the daemon would get
    with pytest.raises(WireError, match=re.escape(message)):
        wire.request(wire.decode(body(value)))


# -- encode: what the client and the daemon's replies may hold ---------------------
@pytest.mark.parametrize("value, message", [
    pytest.param(1.5, "cannot encode a float", id="float"),
    pytest.param({1, 2}, "cannot encode a set", id="set"),
    pytest.param(object(), "cannot encode a object", id="object"),
    pytest.param({"k": 1j}, "cannot encode a complex", id="nested-complex"),
    pytest.param(nest(MAX_DEPTH + 1), "nested too deeply", id="too-deep"),
    pytest.param(b"x" * (wire.MAX_FRAME + 1), "over the", id="over-max-frame"),
])
def test_encode_refusals(value: Any, message: str) -> None:
    with pytest.raises(WireError, match=re.escape(message)):
        wire.encode(value)


def test_a_frame_of_max_frame_bytes_passes() -> None:
    frame = wire.encode(b"x" * (wire.MAX_FRAME - 5))  # tag and length: 5 bytes
    assert wire.frame_length(frame[:4]) == wire.MAX_FRAME
    assert wire.decode(frame[4:]) == b"x" * (wire.MAX_FRAME - 5)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, "\ud800", {"err": "\udc00"}],
                         ids=["int-2**63", "int-below-min", "high-surrogate",
                              "low-surrogate-in-table"])
def test_encode_refuses_unencodable_values_with_wire_error(value: Any) -> None:
    with pytest.raises(WireError):
        wire.encode(value)


def test_a_request_with_non_utf8_argv_passes_the_wire() -> None:
    path = os.fsdecode(b"/etc/vmnet/\xff.toml")  # as sys.argv holds it
    sent = client.request("vmnet", ["--config", path, "status"], {})
    req = wire.request(wire.decode(body(sent)))
    assert req.argv == ["--config", path, "status"]


def test_roots_request_carries_only_the_environment_the_doors_read() -> None:
    if not client.as_root():
        pytest.skip("as a user the environment stays home entirely")
    env = {"PATH": "/bin", "SUDO_USER": "alice", "VMNET_CONFIG": "/c.toml", "HOME": "/root",
           "LS_COLORS": "x" * 2000, "SSH_AUTH_SOCK": "/tmp/agent"}
    sent = client.request("vmnet", ["up", "vm1"], env)
    assert isinstance(sent, dict)
    assert sent["env"] == {"PATH": "/bin", "SUDO_USER": "alice", "VMNET_CONFIG": "/c.toml"}
