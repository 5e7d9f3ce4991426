"""Every `vmnet` command, option and argument, declared once.

vmnet.cli.args parses against this table, prints help and completes from it;
each command's `target` names the function that runs it, so importing this
table imports no command module.
"""

from __future__ import annotations

from vmnet import __version__
from vmnet.cli.args import Arg, Command, Opt, Program, complete_command
from vmnet.consts import CONFIG_ENV, DEFAULT_LOCK_TIMEOUT, DEFAULT_STATE_DIR, STATE_DIR_ENV
from vmnet.model import validate as v

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable


def _count(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(text: str, what: str) -> int:
        return v.integer(text, what, lo, hi)

    return parse


def _seconds(text: str, what: str) -> float:
    return v.duration(text, what)


def _detach_seconds(text: str, what: str) -> float:
    return v.duration(text, what, 0.0, 600.0)


GLOBALS = (
    Opt("--netns", kind="value", metavar="NAME",
        help="Work inside this named network namespace (`ip netns list`)."),
    Opt("--state-dir", kind="value", metavar="DIR", default=DEFAULT_STATE_DIR,
        env=STATE_DIR_ENV, complete="dir", help="Where vmnet keeps its records."),
    Opt("--config", kind="value", metavar="PATH", env=CONFIG_ENV, complete="file",
        help="TOML config (default /etc/vmnet/vmnet.toml; `vmnet config example`)."),
    Opt("--lock-timeout", kind="value", metavar="SECONDS", default=DEFAULT_LOCK_TIMEOUT,
        parse=_seconds, help="Seconds to wait for another vmnet command in this namespace "
                             "(0-3600)."),
    Opt("-v", "--verbose", help="Log each kernel change as the `ip` command it stands for."),
)

OVERRIDES = (
    Opt("--network", kind="value", metavar="NAME", complete="network",
        help="Network for every NIC: one of the config's, or a built-in (default: NAT; "
             "bare: the bridge vmnet-bare alone)."),
    Opt("--bridge", kind="value", metavar="NAME", complete="network",
        help="Bridge for every NIC."),
    Opt("--uplink", kind="value", metavar="IFACE",
        help="Enslave this interface to the bridge (refused if it carries the host's "
             "traffic)."),
    Opt("--user", kind="value", metavar="USER", help="Tap owner (name or uid)."),
    Opt("--group", kind="value", metavar="GROUP", help="Tap group (name or gid)."),
    Opt("--nics", kind="value", metavar="N", parse=_count(1, v.MAX_NICS),
        help=f"Number of NICs (1-{v.MAX_NICS})."),
    Opt("--queues", kind="value", metavar="Q", parse=_count(1, v.MAX_QUEUES),
        help=f"Queues per NIC (1-{v.MAX_QUEUES}); more than 1 makes a multi_queue tap."),
    Opt("--mac", dest="macs", kind="multi", metavar="MAC",
        help="Guest MAC (repeat for NIC 1, 2, ...)."),
    Opt("--ip", dest="ips", kind="multi", metavar="ADDRESS",
        help="Fixed IPv4 address on a nat/isolated network (repeat for NIC 1, 2, ...); "
             "default: one derived from the MAC, kept while the VM is up."),
    Opt("--mtu", kind="value", metavar="MTU", parse=_count(v.MIN_MTU, v.MAX_MTU),
        help="MTU of the taps."),
    Opt("--no-vnet-hdr", help="Open taps without IFF_VNET_HDR (vnet_hdr=off)."),
    Opt("--mac-filter", help="Frames and ARP from the VM carry only its MAC (every NIC)."),
    Opt("--ip-filter", help="IPv4/IPv6 sources only from the VM's known addresses (its "
                            "nat/isolated address, the config's `addresses`); DHCP works."),
    Opt("--port-isolation", help="Isolated bridge port (no traffic with other isolated "
                                 "ports), learning off, a static fdb entry for the VM's MAC."),
    Opt("--rate-to-vm", kind="value", metavar="RATE",
        help="Police traffic toward the VM at RATE (tc units: 100mbit, 1gbit, 12mbps)."),
    Opt("--rate-from-vm", kind="value", metavar="RATE",
        help="Police traffic from the VM at RATE."),
    Opt("--vlan", kind="value", metavar="VID", parse=_count(1, 4094),
        help="Every NIC an access port of VLAN VID (1-4094) on a VLAN-aware bridge."),
    Opt("--no-guard", help="Let a filtered VM send router advertisements and DHCP server "
                           "replies (the guard is on by default with either filter)."),
    Opt("--model", kind="value", metavar="DEVICE", help="QEMU NIC model (virtio-net-pci)."),
)

_JSON = Opt("--json", dest="as_json", help="Machine-readable output.")
_DRY = Opt("--dry-run", help="Print the planned steps as `ip` commands; change nothing.")
_HOOKS_DIR = Opt("--hooks-dir", kind="value", metavar="DIR", default="/etc/libvirt/hooks",
                 complete="dir", help="libvirt's hooks directory.")
_URI = Opt("-c", "--connect", dest="uri", kind="value", metavar="URI",
           default="qemu:///system", env="VMNET_LIBVIRT_URI", help="libvirt URI.")
_VM = Arg("VM", complete="vm")

COMMANDS = (
    Command("up", "Create VM's taps (and its bridge if missing), owned by its user.\n\n"
            "Several VMs (or --all, every VM of the config) come up in one transaction: "
            "all of them or none.",
            opts=(Opt("--all", dest="all_vms", help="Every VM in the config file."),
                  *OVERRIDES, _DRY,
                  Opt("--force", help="For a VM that is up: change its MAC, bridge or QEMU "
                                      "settings even while a guest holds its taps."),
                  Opt("--move", help="On an ovn network: take the VM's logical switch "
                                     "ports from the chassis they are bound to.")),
            args=(Arg("VM", dest="vms", nargs="*", complete="vm"),),
            target="vmnet.cli.commands:up"),
    Command("down", "Remove VM's taps, and bridges vmnet made that nothing uses any more.",
            opts=(Opt("--all", dest="all_vms", help="Every VM vmnet has a record of."),
                  Opt("--force", help="Remove taps even while a process holds them."), _DRY),
            args=(Arg("VM", dest="vms", nargs="*", complete="vm"),),
            target="vmnet.cli.commands:down"),
    Command("status", "Per NIC: tap, bridge, owner, MAC, MTU, queues, holder, counters, "
            "and whether the kernel agrees with the record.",
            opts=(_JSON,), args=(Arg("VM", nargs="?", complete="vm"),),
            target="vmnet.cli.status:status"),
    Command("list", "One line per VM vmnet knows in this namespace.", opts=(_JSON,),
            target="vmnet.cli.status:list_"),
    Command("ip", "Print VM's IPv4 address on its nat/isolated network (NIC 0 unless "
            "--nic): ssh user@$(vmnet ip vm1).",
            opts=(Opt("--wait", kind="value", metavar="SECONDS", parse=_seconds,
                      help="Wait until the guest has taken the address by DHCP (0-3600)."),
                  Opt("--nic", kind="value", metavar="N", parse=_count(0, v.MAX_NICS - 1),
                      help="Which NIC (0, 1, ...)."), _JSON),
            args=(_VM,), target="vmnet.cli.status:ip"),
    Command("network", "vmnet's networks: bridge, nat and isolated."),
    Command("network list", "Each network: kind, bridge, subnet, whether it is up, its "
            "dnsmasq, and foreign firewall rules that drop its traffic.", opts=(_JSON,),
            target="vmnet.cli.status:network_list"),
    Command("network reload", "Bring a nat/isolated network that is up back to what it "
            "should be: restart its dnsmasq if it died, re-apply its firewall table.",
            args=(Arg("NETWORK", complete="network"),),
            target="vmnet.cli.commands:network_reload"),
    Command("gc", "Finish or roll back interrupted work and clear stale records.",
            opts=(Opt("--dry-run", help="Say what would be cleared; change nothing."), _JSON),
            target="vmnet.cli.status:gc"),
    Command("run", "Run QEMU on VM's network: vmnet run VM [OPTIONS] -- qemu-system-x86_64 "
            "ARGS...\n\nBrings the network up, starts QEMU with the taps' fds and the "
            "matching -netdev/-device options appended, forwards signals, removes the "
            "network when QEMU exits and exits with QEMU's status.  QEMU runs as the VM's "
            "user.",
            opts=(*OVERRIDES,
                  Opt("--netdev-only", help="Append only -netdev (ids net0, net1, ...); "
                                            "write your own -device.")),
            args=(_VM,), passthrough=True, usage_tail="-- QEMU_COMMAND [ARGS]...",
            target="vmnet.cli.commands:run"),
    Command("qemu-args", "Print the QEMU network options for VM, as shell words.",
            opts=(*OVERRIDES,
                  Opt("--mode", kind="value", default="ifname", choices=("ifname", "script"),
                      help="ifname: QEMU opens the tap `vmnet up` made (script=no); script: "
                           "QEMU opens or creates the tap and runs vmnet's ifup/ifdown "
                           "scripts."),
                  Opt("--netdev-only", help="Only -netdev (ids net0, net1, ...)."), _JSON),
            args=(_VM,), target="vmnet.cli.commands:qemu_args"),
    Command("libvirt-xml", "Print libvirt <interface> XML for VM, or a whole domain with them "
            "inserted.",
            opts=(Opt("--mode", kind="value", default="ethernet",
                      choices=("ethernet", "bridge"),
                      help="ethernet: libvirt opens vmnet's taps; bridge: libvirt makes its "
                           "own taps."),
                  Opt("--domain", dest="domain_file", kind="value", metavar="FILE",
                      complete="file",
                      help="Insert the interfaces (and vmnet's metadata) into this domain "
                           "XML ('-' for stdin), replacing earlier vmnet ones."),
                  *OVERRIDES),
            args=(_VM,), target="vmnet.cli.libvirt:libvirt_xml"),
    Command("hook", "The libvirt hook: vmnet brings taps up when a domain starts, down when "
            "it stops."),
    Command("hook install", "Install the hook as HOOKS_DIR/qemu.d/vmnet (never touching "
            "anyone else's hook).", opts=(_HOOKS_DIR,),
            target="vmnet.cli.libvirt:hook_install"),
    Command("hook uninstall", "Remove vmnet's hook (only the file vmnet wrote).",
            opts=(_HOOKS_DIR,), target="vmnet.cli.libvirt:hook_uninstall"),
    Command("libvirt", "Hot-plug a vmnet VM's NICs into a libvirt domain (libvirt-python)."),
    Command("libvirt attach", "Bring VM's taps up and hot-plug them into running DOMAIN.",
            opts=(Opt("--config", dest="persistent",
                      help="Also add them to the domain's persistent definition (like virsh "
                           "--config)."), _URI, *OVERRIDES),
            args=(_VM, Arg("DOMAIN")), target="vmnet.cli.libvirt:libvirt_attach"),
    Command("libvirt detach", "Hot-unplug VM's NICs from DOMAIN; its taps go once the device "
            "is gone.",
            opts=(Opt("--config", dest="persistent",
                      help="Also remove them from the domain's persistent definition."),
                  Opt("--timeout", kind="value", metavar="SECONDS", default=30.0,
                      parse=_detach_seconds,
                      help="Seconds to wait for the guest to release the device."), _URI),
            args=(_VM, Arg("DOMAIN")), target="vmnet.cli.libvirt:libvirt_detach"),
    Command("config", "vmnet's configuration file."),
    Command("config example", "Print an example config file that covers every setting.",
            target="vmnet.cli.commands:config_example"),
    Command("completion", "Print a shell completion script (completes commands, options, "
            "VM and network names): eval \"$(vmnet completion bash)\".",
            args=(Arg("SHELL", complete=None),), target="vmnet.cli.commands:completion"),
    complete_command("vmnet.cli.commands:complete"),
)

EXIT_CODES = """\
exit status:
  0  done (or nothing to do)
  1  the host refused: a conflict, a busy tap, something missing, a kernel error
  2  bad input: a flag, the config file, hook XML (nothing was changed)
  4  missing privilege: vmnet needs root (CAP_NET_ADMIN)
  other: `vmnet run` exits with QEMU's status (128+N if a signal N killed it)"""

PROGRAM = Program(
    "vmnet", "Give QEMU/KVM virtual machines their network: user-owned taps on Linux "
             "bridges.",
    globals=GLOBALS, commands=COMMANDS, version=__version__, exit_codes_help=EXIT_CODES)
