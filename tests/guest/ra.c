/* vmnet-ra IFNAME: send three IPv6 router advertisements out of IFNAME, as a rogue
   router would (busybox has no RA sender).  Built static into the test guest's
   initramfs by tests/guest/build.py; the guard of vmnet's port filters must drop them.
   The frame: to 33:33:00:00:00:01 from the NIC's MAC, fe80::(EUI-64) -> ff02::1, hop
   limit 255, a source link-layer option, and "vmnet-rogue-ra" at the end. */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static uint16_t csum(const uint8_t *src, const uint8_t *dst, const uint8_t *icmp, int n) {
    uint32_t s = 0;
    for (int i = 0; i < 16; i += 2) s += (src[i] << 8 | src[i + 1]) + (dst[i] << 8 | dst[i + 1]);
    s += n + 58;
    for (int i = 0; i < n; i += 2) s += icmp[i] << 8 | (i + 1 < n ? icmp[i + 1] : 0);
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: vmnet-ra IFNAME\n"); return 2; }
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IPV6));
    if (fd < 0) { perror("socket"); return 1; }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) { perror("SIOCGIFHWADDR"); return 1; }
    uint8_t mac[6];
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    uint8_t f[256];
    memset(f, 0, sizeof f);
    uint8_t *eth = f, *ip6 = f + 14, *icmp = f + 54;
    memcpy(eth, "\x33\x33\x00\x00\x00\x01", 6);
    memcpy(eth + 6, mac, 6);
    eth[12] = 0x86; eth[13] = 0xdd;
    uint8_t src[16] = {0xfe, 0x80}, dst[16] = {0xff, 0x02};
    dst[15] = 1;
    src[8] = mac[0] ^ 2; src[9] = mac[1]; src[10] = mac[2]; src[11] = 0xff; src[12] = 0xfe;
    src[13] = mac[3]; src[14] = mac[4]; src[15] = mac[5];
    const char marker[] = "vmnet-rogue-ra";
    int n = 16 + 8 + (int)sizeof marker - 1;  /* RA header, SLLA option, marker */
    n += n % 2;
    icmp[0] = 134;                   /* router advertisement */
    icmp[4] = 64;                    /* cur hop limit */
    icmp[6] = 0x07; icmp[7] = 0x08;  /* router lifetime 1800 s */
    icmp[16] = 1; icmp[17] = 1;      /* source link-layer address */
    memcpy(icmp + 18, mac, 6);
    memcpy(icmp + 24, marker, sizeof marker - 1);
    ip6[0] = 0x60; ip6[4] = n >> 8; ip6[5] = n & 0xff; ip6[6] = 58; ip6[7] = 255;
    memcpy(ip6 + 8, src, 16);
    memcpy(ip6 + 24, dst, 16);
    uint16_t c = csum(src, dst, icmp, n);
    icmp[2] = c >> 8; icmp[3] = c & 0xff;
    struct sockaddr_ll to;
    memset(&to, 0, sizeof to);
    to.sll_family = AF_PACKET;
    to.sll_ifindex = (int)if_nametoindex(argv[1]);
    to.sll_halen = 6;
    memcpy(to.sll_addr, eth, 6);
    for (int i = 0; i < 3; i++) {
        if (sendto(fd, f, 54 + n, 0, (struct sockaddr *)&to, sizeof to) < 0) {
            perror("sendto"); return 1;
        }
        usleep(100000);
    }
    return 0;
}
