#!/bin/sh
# /init of the vmnet test guest (PID 1, busybox ash).  It must never exit:
# if it did, the kernel would panic and QEMU (-no-reboot) would quit.
#
# Kernel command line (read from /proc/cmdline):
#   vmnet.ip=A/P[,B/P...]  addresses for eth0, eth1, ... in NIC order; NICs
#                          hot-plugged later take the next unused address
#   vmnet.ping=IP          ping IP every second; print "VMNET-PING-OK IP" on
#                          the first success (and again after any recovery),
#                          "VMNET-PING-LOST IP" when a working peer stops
#                          answering
# Console protocol (serial ttyS0):
#   VMNET-NIC name=ethN mac=MAC rxq=N txq=N ip=A/P|none   one per NIC
#   VMNET-READY                                           after the boot NICs
#   VMNET-NIC-GONE name=ethN                              a NIC disappeared
#   VMNET-ERROR ...                                       something failed

PATH=/bin
export PATH
/bin/busybox mkdir -p /proc /sys /dev /tmp /www
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
for tok in $(cat /proc/cmdline); do
    case "$tok" in
        vmnet.ip=*) IPS="${tok#vmnet.ip=}" ;;
        vmnet.ping=*) PEER="${tok#vmnet.ping=}" ;;
    esac
done
IPS=$(echo "$IPS" | tr ',' ' ')
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

nic_up() {
    dev="$1"
    ip link set "$dev" up || echo "VMNET-ERROR link up $dev"
    addr=$(nth_ip)
    if [ -n "$addr" ]; then
        NEXT_IP=$((NEXT_IP + 1))
        ip addr add "$addr" dev "$dev" || echo "VMNET-ERROR addr $addr $dev"
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

if [ -n "$PEER" ]; then
    (
        ok=0
        while :; do
            # A failed ping already waited up to 1 s (-W 1).
            if ping -c 1 -W 1 "$PEER" >/dev/null 2>&1; then
                [ "$ok" = 1 ] || echo "VMNET-PING-OK $PEER"
                ok=1
                sleep 1
            else
                [ "$ok" = 0 ] || echo "VMNET-PING-LOST $PEER"
                ok=0
                usleep 200000
            fi
        done
    ) &
fi

echo "VMNET-READY"

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
