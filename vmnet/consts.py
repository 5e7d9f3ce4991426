"""Constants every layer shares, defined once."""

# No `from __future__ import annotations` here: importing __future__ costs a door that
# vmnetd serves ~0.2 ms; annotations naming TYPE_CHECKING-only types are strings.

DEFAULT_STATE_DIR = "/run/vmnet"
DEFAULT_CONFIG = "/etc/vmnet/vmnet.toml"
DEFAULT_DATA_DIR = "/var/lib/vmnet"  # what survives a reboot: subnets chosen for networks
DEFAULT_LOCK_TIMEOUT = 30.0  # seconds a command waits for another in the same namespace
HOOK_LOCK_TIMEOUT = 10.0  # the libvirt hook: libvirtd waits for it without a timeout
STATE_DIR_ENV = "VMNET_STATE_DIR"
CONFIG_ENV = "VMNET_CONFIG"
MAX_XML_BYTES = 4 << 20  # domain XML vmnet reads (libvirt's own limit is 10 MiB; ours are small)
