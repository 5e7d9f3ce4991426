"""vhost-net with a real guest: needs /dev/vhost-net, which this kernel may lack.

Where the device is missing the live test skips with the reason; what needs
no kernel (rendering vhost=on/vhostfds=, opening vhost fds only when the
device exists) is tested in tests/test_qemu_args.py either way.
"""

from __future__ import annotations

import os

import pytest

from tests.guest import GuestImage, ping_from_ns
from tests.nsutil import Netns
from tests.test_run import NET, image, netcfg, qemu_pid, run_guest  # noqa: F401 (fixtures)

VHOST = "/dev/vhost-net"


@pytest.mark.qemu
@pytest.mark.skipif(not os.path.exists(VHOST),
                    reason=f"{VHOST} is missing: this kernel has no vhost_net, so vmnet never "
                           "asks QEMU for vhost (rendering is tested in test_qemu_args.py)")
def test_guest_with_vhost_net(ns: Netns, state_dir: str, netcfg: str,  # noqa: F811
                              image: GuestImage) -> None:  # noqa: F811
    with run_guest(ns, state_dir, netcfg, image, "vm1", ["--queues", "2"], ip=f"{NET}.2/24",
                   smp=2) as g:
        assert ping_from_ns(ns.name, f"{NET}.2", timeout=60)
        pid = qemu_pid(ns, state_dir, "vm1")
        links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert VHOST in links  # QEMU holds the vhost fds vmnet passed it
        g.stop(grace=30)
