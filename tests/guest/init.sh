#!/bin/sh
# /init of the vmnet test guest (PID 1, busybox ash).  It must never exit:
# if it did, the kernel would panic and QEMU (-no-reboot) would quit.
#
# Kernel command line (read from /proc/cmdline):
#   vmnet.ip=A/P[,B/P...]  addresses for eth0, eth1, ... in NIC order; NICs
#                          hot-plugged later take the next unused address
#   vmnet.ping=IP[,IP...]  ping each IP every second (one loop per address);
#                          print "VMNET-PING-OK IP" on the first success (and
#                          again after any recovery), "VMNET-PING-LOST IP"
#                          when a working peer stops answering
#   vmnet.dhcp=1           eth0 gets its address by DHCP (busybox udhcpc with
#                          /bin/vmnet-udhcpc, from udhcpc.sh): address, MTU,
#                          default route, /etc/resolv.conf.  The vmnet.ip
#                          addresses then go to the other NICs (eth1, ...)
#   vmnet.hostname=NAME    with vmnet.dhcp=1: send NAME as the DHCP host name
#   vmnet.resolve=N[,N...] once the boot NICs are up, look each name up
#                          (busybox nslookup, /etc/resolv.conf), retrying
#                          for up to ~10 s
#   vmnet.fetch=URL        GET URL (busybox wget) every second; print
#                          "VMNET-FETCH-OK URL LINE" (LINE: the body's first
#                          line) on the first success and again after any
#                          recovery, "VMNET-FETCH-LOST URL" when it stops
#                          working; retried every ~0.5 s while failing
#   vmnet.spoof=WHAT[,WHAT...]  misbehave as a hostile guest would, for the
#                          port-filter tests: after VMNET-READY (and, with
#                          vmnet.ping, once the first ping address answered;
#                          up to ~20 s), each WHAT in order, each followed by
#                          "VMNET-SPOOF-DONE WHAT":
#       mac:MAC            eth0 takes MAC (live; else down, address, up, and
#                          the default route put back)
#       ip:A/P             A/P added to eth0; with vmnet.ping, the first ping
#                          address pinged from A (up to 3 tries):
#                          "VMNET-SPOOF-PING A PEER OK|LOST"; then A removed
#       garp:A             a gratuitous ARP (one unsolicited request) claiming
#                          A for eth0's MAC (busybox arping -U)
#       dhcpd:A            a DHCP server (busybox udhcpd) on eth0 offering A,
#                          left running: it answers any DHCPDISCOVER it hears
#       sleep:N            wait N seconds (a window for the test)
#       ra                 three IPv6 router advertisements out of eth0, as a
#                          rogue router (/bin/vmnet-ra, tests/guest/ra.c: busybox
#                          cannot send one; built where gcc can link statically)
# Console protocol (serial ttyS0):
#   VMNET-LEASE ip=A/P router=R dns=D[,D] mtu=M domain=X  eth0's lease (dhcp;
#                                                         missing: none)
#   VMNET-NIC name=ethN mac=MAC rxq=N txq=N ip=A/P|none   one per NIC
#   VMNET-READY                                           after the boot NICs
#   VMNET-RESOLVED NAME IP | VMNET-UNRESOLVED NAME        one per resolve name
#   VMNET-FETCH-OK URL LINE | VMNET-FETCH-LOST URL        fetch state changes
#   VMNET-SPOOF-DONE WHAT                                 a spoof item is done
#   VMNET-SPOOF-PING A PEER OK|LOST                       ip:A/P's ping from A
#   VMNET-NIC-GONE name=ethN                              a NIC disappeared
#   VMNET-ERROR ...                                       something failed
#                                                         ("VMNET-ERROR dhcp":
#                                                         no lease)

PATH=/bin
export PATH
/bin/busybox mkdir -p /proc /sys /dev /tmp /www /etc
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
exec </dev/console >/dev/console 2>&1

while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod.ko" || echo "VMNET-ERROR insmod $mod"
done </lib/modules/vmnet.order

IPS=""
PEER=""
DHCP=""
DHCP_NAME=""
RESOLVE=""
FETCH=""
SPOOF=""
for tok in $(cat /proc/cmdline); do
    case "$tok" in
        vmnet.ip=*) IPS="${tok#vmnet.ip=}" ;;
        vmnet.ping=*) PEER="${tok#vmnet.ping=}" ;;
        vmnet.dhcp=1) DHCP=1 ;;
        vmnet.hostname=*) DHCP_NAME="${tok#vmnet.hostname=}" ;;
        vmnet.resolve=*) RESOLVE="${tok#vmnet.resolve=}" ;;
        vmnet.fetch=*) FETCH="${tok#vmnet.fetch=}" ;;
        vmnet.spoof=*) SPOOF="${tok#vmnet.spoof=}" ;;
    esac
done
IPS=$(echo "$IPS" | tr ',' ' ')
RESOLVE=$(echo "$RESOLVE" | tr ',' ' ')
PEER=$(echo "$PEER" | tr ',' ' ')
SPOOF=$(echo "$SPOOF" | tr ',' ' ')
NEXT_IP=1

# The n-th (1-based) word of $IPS, or nothing.
nth_ip() {
    set -- $IPS
    [ "$NEXT_IP" -le "$#" ] || return 0
    shift $((NEXT_IP - 1))
    echo "$1"
}

count() {
    # Number of existing paths among the arguments (a glob that matched).
    n=0
    for p in "$@"; do [ -e "$p" ] && n=$((n + 1)); done
    echo "$n"
}

# eth0's address by DHCP; /bin/vmnet-udhcpc prints VMNET-LEASE and records
# the address in /tmp/vmnet-lease.eth0.  udhcpc's own chatter is dropped.
# "-O mtu": udhcpc does not ask for the MTU option by default, and dnsmasq
# only sends the options a client asks for.
dhcp_up() {
    dev="$1"
    rm -f "/tmp/vmnet-lease.$dev"
    if [ -n "$DHCP_NAME" ]; then
        set -- -x "hostname:$DHCP_NAME"
    else
        set --
    fi
    if udhcpc -i "$dev" "$@" -O mtu -q -n -t 10 -T 1 -s /bin/vmnet-udhcpc \
            >/dev/null 2>&1 && [ -s "/tmp/vmnet-lease.$dev" ]; then
        cat "/tmp/vmnet-lease.$dev"
    else
        echo "VMNET-ERROR dhcp"
    fi
}

nic_up() {
    dev="$1"
    ip link set "$dev" up || echo "VMNET-ERROR link up $dev"
    if [ "$DHCP" = 1 ] && [ "$dev" = eth0 ]; then
        addr=$(dhcp_up "$dev")
        case "$addr" in VMNET-ERROR*) echo "$addr"; addr="" ;; esac
    else
        addr=$(nth_ip)
        if [ -n "$addr" ]; then
            NEXT_IP=$((NEXT_IP + 1))
            ip addr add "$addr" dev "$dev" || echo "VMNET-ERROR addr $addr $dev"
        fi
    fi
    mac=$(cat "/sys/class/net/$dev/address")
    rxq=$(count /sys/class/net/"$dev"/queues/rx-*)
    txq=$(count /sys/class/net/"$dev"/queues/tx-*)
    echo "VMNET-NIC name=$dev mac=$mac rxq=$rxq txq=$txq ip=${addr:-none}"
}

# Names of the current ethN, numerically sorted (eth2 before eth10).
eth_names() {
    for p in /sys/class/net/eth*; do
        [ -e "$p" ] && echo "${p##*/}"
    done | sort -t h -k 2,2n
}

ip link set lo up

# PCI NICs present at boot are probed during insmod, so they exist by now;
# still give stragglers up to 1 s when there are more addresses than NICs
# (extra addresses are meant for NICs hot-plugged later).
set -- $IPS
want=$#
[ "$DHCP" != 1 ] || want=$((want + 1))  # eth0 takes no vmnet.ip address
i=0
while [ "$(eth_names | wc -l)" -lt "$want" ] && [ "$i" -lt 10 ]; do
    usleep 100000
    i=$((i + 1))
done

KNOWN=" "
for dev in $(eth_names); do
    nic_up "$dev"
    KNOWN="$KNOWN$dev "
done

printf 'vmnet-guest-ok' >/www/index.html
httpd -p 80 -h /www || echo "VMNET-ERROR httpd"

# One loop per ping address; /tmp/vmnet-ping-ok.IP once it answered (vmnet.spoof
# waits for the first address's).
ping_loop() {
    peer="$1"
    ok=0
    while :; do
        # A failed ping already waited up to 1 s (-W 1).
        if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then
            if [ "$ok" != 1 ]; then
                echo "VMNET-PING-OK $peer"
                : >"/tmp/vmnet-ping-ok.$peer"
            fi
            ok=1
            sleep 1
        else
            [ "$ok" = 0 ] || echo "VMNET-PING-LOST $peer"
            ok=0
            usleep 200000
        fi
    done
}
for peer in $PEER; do
    ping_loop "$peer" &
done

if [ -n "$FETCH" ]; then
    (
        ok=0
        while :; do
            # No "wget -T": busybox-static 1.35's wget segfaults with it once
            # it connects, so busybox timeout bounds each try (2 s) instead.
            if body=$(timeout 2 wget -q -O - "$FETCH"); then
                [ "$ok" = 1 ] || echo "VMNET-FETCH-OK $FETCH $(printf "%s\n" "$body" | head -n 1)"
                ok=1
                sleep 1
            else
                [ "$ok" = 0 ] || echo "VMNET-FETCH-LOST $FETCH"
                ok=0
                usleep 500000
            fi
        done
    ) 2>/dev/null &  # no wget chatter, no "Terminated" when timeout kills it
fi

if [ -n "$RESOLVE" ]; then
    (
        for name in $RESOLVE; do
            read -r up _ </proc/uptime
            until=$((${up%.*} + 10))
            found=""
            while :; do
                # nslookup's exit status is no use: it also asks for AAAA and
                # fails when that part fails.  The first address after
                # "Name:" is the answer (the server's own comes before).
                found=$(timeout 2 nslookup "$name" \
                    | awk '/^Name:/ { n = 1; next } n && /^Address/ { print $NF; exit }')
                [ -z "$found" ] || break
                read -r up _ </proc/uptime
                [ "${up%.*}" -lt "$until" ] || break
                usleep 500000
            done
            if [ -n "$found" ]; then
                echo "VMNET-RESOLVED $name $found"
            else
                echo "VMNET-UNRESOLVED $name"
            fi
        done
    ) 2>/dev/null &  # no nslookup chatter, no "Terminated" when timeout kills it
fi

# vmnet.spoof's items (see the top).
spoof_mac() {
    ip link set eth0 address "$1" 2>/dev/null && return 0
    routes=$(ip route show default dev eth0)
    ip link set eth0 down && ip link set eth0 address "$1" && ip link set eth0 up \
        || return 1
    [ -z "$routes" ] || ip route replace $routes
}

spoof_ip() {
    addr="$1"
    a="${addr%/*}"
    ip addr add "$addr" dev eth0 || return 1
    set -- $PEER
    if [ -n "${1:-}" ]; then
        res=LOST
        for try in 1 2 3; do
            if ping -c 1 -W 1 -I "$a" "$1" >/dev/null 2>&1; then res=OK; break; fi
        done
        echo "VMNET-SPOOF-PING $a $1 $res"
    fi
    ip addr del "$addr" dev eth0
}

spoof_garp() {
    # arping binds its probe socket to the claimed address: not ours, so allow it.
    sysctl -qw net.ipv4.ip_nonlocal_bind=1
    arping -q -U -c 1 -w 1 -I eth0 -s "$1" "$1"
    rc=$?
    sysctl -qw net.ipv4.ip_nonlocal_bind=0
    return $rc
}

spoof_dhcpd() {
    printf 'interface eth0\nstart %s\nend %s\nmax_leases 1\nlease_file %s\n%s\n' \
        "$1" "$1" /tmp/udhcpd.leases 'option subnet 255.255.255.0' >/tmp/udhcpd.conf
    : >/tmp/udhcpd.leases
    udhcpd -f -a 100 /tmp/udhcpd.conf >/dev/null 2>&1 &
    usleep 300000  # bound to port 67 by now
}

spoof_all() {
    set -- $PEER
    if [ -n "${1:-}" ]; then
        i=0
        while [ ! -e "/tmp/vmnet-ping-ok.$1" ] && [ "$i" -lt 100 ]; do
            usleep 200000
            i=$((i + 1))
        done
    fi
    for what in $SPOOF; do
        arg="${what#*:}"
        case "$what" in
            mac:*) spoof_mac "$arg" ;;
            ip:*) spoof_ip "$arg" ;;
            garp:*) spoof_garp "$arg" ;;
            dhcpd:*) spoof_dhcpd "$arg" ;;
            ra) /bin/vmnet-ra eth0 ;;
            sleep:*) sleep "$arg" ;;
            *) false ;;
        esac || echo "VMNET-ERROR spoof $what"
        echo "VMNET-SPOOF-DONE $what"
    done
}

echo "VMNET-READY"

[ -z "$SPOOF" ] || spoof_all &

# Hot-plug watch.  Globs only: no process is started unless something changed.
# (With ten or more NICs the glob order differs from KNOWN's numeric order;
# that costs one pass that finds nothing new or gone.)
while :; do
    usleep 500000
    now=" "
    for p in /sys/class/net/eth*; do
        [ -e "$p" ] && now="$now${p##*/} "
    done
    [ "$now" = "$KNOWN" ] && continue
    for dev in $KNOWN; do
        case "$now" in *" $dev "*) ;; *) echo "VMNET-NIC-GONE name=$dev" ;; esac
    done
    for dev in $now; do
        case "$KNOWN" in *" $dev "*) ;; *) nic_up "$dev" ;; esac
    done
    KNOWN="$now"
done
