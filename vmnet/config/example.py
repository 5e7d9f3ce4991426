"""The example config `vmnet config example` prints: every setting, with its default."""

EXAMPLE = """\
# vmnet configuration: /etc/vmnet/vmnet.toml (or --config PATH, or $VMNET_CONFIG).
# Flags win over this file, this file over the built-in defaults.  Every key is
# optional unless marked required; unknown keys are errors (a typo never passes).

[defaults]
network = "default"        # network for NICs that name none.  Built in (redefine them
                           # here to change them): "default" = kind nat on bridge vmnet0,
                           # its subnet chosen once (a free 10.77.N.0/24) and kept in
                           # data_dir; "bare" = the bridge vmnet-bare alone (no address)
data_dir = "/var/lib/vmnet"  # what survives reboots: the subnets chosen for networks
mac_scheme = "qemu"        # MACs of NICs that name none: "qemu" = 52:54:00 + 24 bits of
                           # a hash (1 % chance of a collision at ~580 NICs); "local" =
                           # 02 + 40 bits (1 % at ~150,000); a collision is refused
user_max_nics = 16         # NICs one user without root may have through vmnetd, in all
user_max_queues = 4        # queues per NIC for a user without root (1..256)

[networks.lan]
kind = "bridge"            # bridge (default): the bridge and its uplink, nothing else
bridge = "br-lan"          # required; created (and later removed) by vmnet if missing
uplink = "eth1"            # enslaved only if it carries none of the host's traffic
                           # (no address but IPv6 link-local, no route, no policy rule)
mtu = 9000                 # 68..65521; default: the bridge's
stp = false                # default false
forward_delay = 0          # seconds; 0..30, and 2..30 when stp = true (the kernel clamps)
address = "10.10.0.1/24"   # host address on the bridge (only on bridges vmnet creates)
vlan_filtering = true      # vmnet creates the bridge VLAN-aware, for NICs' vlan/trunk
                           # (default false; this needs the kernel's bridge VLAN filtering)
allow_users = ["alice", 1001]  # users without root who may put NICs on it through
allow_groups = ["kvm"]     # vmnetd (and its vmnet-bridge-helper); default: nobody but root

[networks.lab]
kind = "nat"               # nat: host address, DHCP + DNS (dnsmasq), IPv4 masquerade out;
                           # isolated: the same without any forwarding (guests and host)
bridge = "vmnet-lab"       # made by vmnet ([A-Za-z0-9_.-]: it goes into nftables rules)
address = "10.20.0.1/24"   # host address and subnet (/29 or larger); default: chosen once
outbound = "eth0"          # nat: masquerade out of this; default: the default route's
domain = "lab"             # guests are VM.lab in DNS (default "vmnet")
upstream = ["192.0.2.53"]  # nat: DNS servers dnsmasq forwards to; default: the host's
                           # /etc/resolv.conf nameservers (dnsmasq itself reads no host file)
firewall_fix = false       # true: insert a commented accept for this bridge into foreign
                           # chains that would drop its traffic (Docker's DOCKER-USER,
                           # a drop-policy forward or input chain); removed with the network

[networks.cloud]
kind = "ovn"               # ovn: NICs on an OVN logical switch (pip install 'vmnet[ovn]');
                           # this host must be an OVN chassis (ovn-controller runs here)
switch = "ls-cloud"        # required: the logical switch (it must exist)
northbound = "ssl:192.0.2.10:6641"  # default unix:/var/run/ovn/ovnnb_db.sock; tcp: or
ssl_key = "/etc/vmnet/ovn/key.pem"    # ssl: (these three then required)
ssl_cert = "/etc/vmnet/ovn/cert.pem"
ssl_ca = "/etc/vmnet/ovn/cacert.pem"
ovs_db = "unix:/var/run/openvswitch/db.sock"  # this chassis' Open vSwitch database
ovn_rundir = "/var/run/ovn"  # where ovn-controller writes its pid file
bind_timeout = 20          # seconds `up` waits for ovn-controller to bind a port
                           # bridge: default "br-int"; mtu: default what the overlay
                           # leaves (1442 for Geneve on a 1500-byte IPv4 underlay)

[vms.web]
user = "alice"             # tap owner: name or uid; default $SUDO_USER, else root
group = "kvm"              # tap group: name or gid; a group alone grants that group

[[vms.web.nics]]           # one table per NIC, in order (NIC 0, 1, ...)
network = "lan"            # default: defaults.network
mac = "52:54:00:12:34:56"  # default: derived from the VM name and NIC index
queues = 4                 # 1..256; more than 1 makes a multi_queue tap
mtu = 9000                 # default: the network's, else the bridge's
tap = "web-lan"            # default: <vm>-<n>, or vmn<hash>-<n> when that does not fit
vnet_hdr = true            # default true: open the tap with IFF_VNET_HDR
model = "virtio-net-pci"   # the QEMU device vmnet renders
trunk = [10, 20]           # on a VLAN-aware bridge: these VLANs tagged to the VM (and the
native_vlan = 10           # native one untagged); vmnet adds them to the uplink, tagged,
                           # and removes them with the last NIC that uses them

[[vms.web.nics]]
network = "lab"
ip = "10.20.0.10"          # nat/isolated: this NIC's fixed address (DHCP hands it out);
                           # default: derived from the MAC, kept while the VM is up
mac_filter = true          # frames and ARP from the VM carry only its MAC (default false)
ip_filter = true           # IPv4/IPv6 sources only from its addresses: `ip` above and
addresses = ["10.20.0.11", "2001:db8::11"]  # these; DHCP discovery and fe80:: still pass
guard = true               # no router advertisements, redirects or DHCP server replies
                           # from the VM; default: on with either filter
rate = { to_vm = "100mbit", from_vm = "50mbit", from_vm_burst = "256kb" }
                           # policed rates (tc's units; bps = bytes/s); bursts default to
                           # 10 ms at the rate, at least 64kb
port_isolation = true      # no traffic with the bridge's other isolated ports (the
                           # gateway and other ports it still reaches); learning off, a
                           # static fdb entry for its MAC (default false)

[[vms.web.nics]]
network = "lan"
vlan = 30                  # an access port of VLAN 30: untagged to the VM

[[vms.web.nics]]
network = "cloud"
port = "web-cloud"         # ovn: its logical switch port; default vmnet-<vm>-<n>
"""
