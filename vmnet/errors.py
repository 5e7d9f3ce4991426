"""One error hierarchy.  Each error carries context and a hint for the person.

Only the CLI (and the script/hook shims) turn these into messages and exit
codes; library code raises and never returns False for failure.
"""

from __future__ import annotations

import errno as _errno


class VmnetError(Exception):
    """Base of every error vmnet reports to a person."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, ifname: str | None = None,
                 op: str | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.ifname = ifname
        self.op = op
        self.errno = errno

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """The message and the hint, on one line."""
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class InputError(VmnetError):
    """A value given on the command line, in a config file or by a hook is invalid."""

    exit_code = 2


class ConfigError(InputError):
    """The configuration file cannot be read or is malformed."""


class NotFoundError(VmnetError):
    """A device, VM, namespace or user that the request names does not exist."""


class ConflictError(VmnetError):
    """The host has something in the way: a foreign interface, a busy tap, a lock."""


class BusyError(ConflictError):
    """A tap is held by a process (carrier on)."""


class PrivilegeError(VmnetError):
    """vmnet lacks the privilege it needs (CAP_NET_ADMIN, root)."""

    exit_code = 4


class StateError(VmnetError):
    """vmnet's own records cannot be read, trusted or written."""


class KernelError(VmnetError):
    """The kernel refused an operation."""


class DaemonLost(VmnetError):
    """vmnetd took a request and went away before it replied (vmnet.daemon.client)."""


def kernel_error(op: str, ifname: str | None, err: int, detail: str = "") -> VmnetError:
    """Map an errno from a kernel call to the most helpful error class."""
    name = _errno.errorcode.get(err, str(err))
    where = f" on {ifname}" if ifname else ""
    msg = f"{op}{where} failed: {name}" + (f" ({detail})" if detail else "")
    if err in (_errno.EPERM, _errno.EACCES):
        return PrivilegeError(
            msg, ifname=ifname, op=op, errno=err,
            hint="vmnet needs root or CAP_NET_ADMIN; for an existing tap the caller must "
                 "match its owner/group; AppArmor/SELinux may also deny /dev/net/tun")
    if err == _errno.EBUSY:
        return BusyError(msg, ifname=ifname, op=op, errno=err,
                         hint="another process holds this tap (is its VM still running?)")
    if err == _errno.EEXIST:
        return ConflictError(msg, ifname=ifname, op=op, errno=err,
                             hint="an interface with this name already exists")
    if err == _errno.EXFULL and op.startswith("enslave"):
        return ConflictError(msg, ifname=ifname, op=op, errno=err,
                             hint="a Linux bridge holds at most 1023 ports: spread the VMs "
                                  "over several networks")
    if err == _errno.ELOOP and op.startswith("enslave"):
        return ConflictError(msg, ifname=ifname, op=op, errno=err,
                             hint="a bridge cannot be a port of itself or of a bridge it "
                                  "already carries")
    if err == _errno.ENODEV:
        return NotFoundError(msg, ifname=ifname, op=op, errno=err,
                             hint="the interface does not exist")
    if err == _errno.EINVAL and op.startswith("attach"):
        return KernelError(msg, ifname=ifname, op=op, errno=err,
                           hint="the tap's multi_queue flag differs from the request "
                                "(queues must match how the tap was created)")
    return KernelError(msg, ifname=ifname, op=op, errno=err)
