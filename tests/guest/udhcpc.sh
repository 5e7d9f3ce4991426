#!/bin/sh
# /bin/vmnet-udhcpc: the busybox udhcpc event script of the vmnet test guest
# (init.sh runs "udhcpc -s /bin/vmnet-udhcpc" for eth0 with vmnet.dhcp=1).
#
# udhcpc calls it as "vmnet-udhcpc EVENT" with the lease in the environment:
# $interface, $ip, $mask (prefix length) or $subnet (dotted mask), $router,
# $dns and $domain (space-separated lists), $mtu.
#
# bound/renew: configure $interface (address, MTU, default route), write
# /etc/resolv.conf, record "A/P" in /tmp/vmnet-lease.$interface (init.sh's
# VMNET-NIC line reads it) and print one console line:
#   VMNET-LEASE ip=A/P router=R dns=D[,D...] mtu=M domain=X   (missing: none)
# deconfig: flush the interface's addresses.  Other events: nothing.

exec >/dev/console 2>&1
PATH=/bin
export PATH

# Prefix length of a dotted netmask (255.255.255.0 -> 24).
prefix_of() {
    n=0
    for octet in $(echo "$1" | tr '.' ' '); do
        case "$octet" in
            255) n=$((n + 8)) ;;
            254) n=$((n + 7)) ;;
            252) n=$((n + 6)) ;;
            248) n=$((n + 5)) ;;
            240) n=$((n + 4)) ;;
            224) n=$((n + 3)) ;;
            192) n=$((n + 2)) ;;
            128) n=$((n + 1)) ;;
        esac
    done
    echo "$n"
}

# The first word of the arguments, or nothing.
first() {
    echo "$1"
}

case "$1" in
    deconfig)
        ip link set "$interface" up
        ip -4 addr flush dev "$interface"
        rm -f "/tmp/vmnet-lease.$interface"
        ;;
    bound|renew)
        prefix="${mask:-}"
        if [ -z "$prefix" ]; then
            if [ -n "${subnet:-}" ]; then prefix=$(prefix_of "$subnet"); else prefix=32; fi
        fi
        addr="$ip/$prefix"
        # A renew that keeps the address keeps the address (and its routes).
        if ! ip -4 addr show dev "$interface" | grep -q "inet $addr "; then
            ip -4 addr flush dev "$interface"
            ip addr add "$addr" dev "$interface" || echo "VMNET-ERROR addr $addr $interface"
        fi
        if [ -n "${mtu:-}" ]; then
            ip link set dev "$interface" mtu "$mtu" || echo "VMNET-ERROR mtu $mtu $interface"
        fi
        gw=$(first ${router:-})
        if [ -n "$gw" ]; then
            ip route replace default via "$gw" dev "$interface" \
                || echo "VMNET-ERROR route $gw $interface"
        fi
        mkdir -p /etc
        {
            [ -z "${domain:-}" ] || echo "search $domain"
            for server in ${dns:-}; do echo "nameserver $server"; done
        } >/etc/resolv.conf.new
        mv /etc/resolv.conf.new /etc/resolv.conf
        echo "$addr" >"/tmp/vmnet-lease.$interface"
        servers=$(echo ${dns:-} | tr ' ' ',')
        echo "VMNET-LEASE ip=$addr router=${gw:-none} dns=${servers:-none}" \
            "mtu=${mtu:-none} domain=$(first ${domain:-none})"
        ;;
esac
exit 0
