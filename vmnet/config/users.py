"""Users and groups by name or number: the lookups under vmnet.config's resolution.

Light (pwd and grp are builtin modules); errors are the callers' (vmnet.config words
them).  Cached: a bulk run asks for the same user a thousand times.
"""

from __future__ import annotations

import os
import pwd

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "no change" to the kernel

_users: dict[str, tuple[int, str] | None] = {}
_groups: dict[str, int | None] = {}


def lookup_user(value: str) -> tuple[int, str] | None:
    """(uid, name) of a user name or numeric uid (a number nobody has keeps itself as
    its name); None if the name is unknown or the number out of range."""
    if value in _users:
        return _users[value]
    found: tuple[int, str] | None
    if value.isascii() and value.isdigit():
        uid = int(value)
        if uid > MAX_ID:
            found = None
        else:
            try:
                found = uid, pwd.getpwuid(uid).pw_name
            except KeyError:
                found = uid, value
    else:
        try:
            pw = pwd.getpwnam(value)
            found = pw.pw_uid, pw.pw_name
        except KeyError:
            found = None
    _users[value] = found
    return found


def lookup_group(value: str) -> int | None:
    """The gid of a group name or number; None if unknown or out of range."""
    if value in _groups:
        return _groups[value]
    found: int | None
    if value.isascii() and value.isdigit():
        gid = int(value)
        found = gid if gid <= MAX_ID else None
    else:
        import grp

        try:
            found = grp.getgrnam(value).gr_gid
        except KeyError:
            found = None
    _groups[value] = found
    return found


def forget() -> None:
    """Drop the cached lookups (vmnetd, before each request: users come and go)."""
    _users.clear()
    _groups.clear()


def invoking_user(env: Mapping[str, str]) -> str:
    """SUDO_USER when run through sudo, else the caller (root for vmnet's usual use)."""
    sudo = env.get("SUDO_USER")
    if sudo and sudo != "root":
        return sudo
    return str(os.getuid())


def owner_text(uid: int | None, gid: int | None) -> str:
    """A tap's owner as vmnet shows it everywhere: the name, with the number where it
    helps ("root", "alice (1000)", "uid 4242", "group kvm (109)"); never "None"."""
    parts = []
    if uid is not None:
        found = lookup_user(str(uid))
        name = found[1] if found is not None and found[1] != str(uid) else None
        parts.append("root" if uid == 0 else f"{name} ({uid})" if name else f"uid {uid}")
    if gid is not None:
        import grp

        try:
            gname: str | None = grp.getgrgid(gid).gr_name
        except KeyError:
            gname = None
        parts.append(f"group {gname} ({gid})" if gname else f"gid {gid}")
    return ", ".join(parts) or "anyone allowed by /dev/net/tun"
