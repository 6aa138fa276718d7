// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * raw_tx - an AF_PACKET SOCK_RAW sender, for testing bpf-ratelimit's
 * raw-frame guard (issue 15, claims 2 and 3).
 *
 * It opens AF_PACKET/SOCK_RAW, binds to IFNAME, optionally sets
 * PACKET_QDISC_BYPASS=1 (frames then leave through __dev_direct_xmit(),
 * past the qdisc and the tc egress filter), and sends COUNT frames: valid
 * Ethernet + IPv4 + UDP frames of SIZE bytes to DST_MAC / DST_IP (countable
 * at the receiver), or with --arp gratuitous ARP requests for SRC_IP (what
 * `arping -U` sends). Blocking send(), as fast as the kernel takes them, or
 * for SECONDS.
 *
 * Build it 64-bit and as a 32-bit compat binary: a compat setsockopt()
 * skips cgroup/setsockopt programs (net/socket.c: do_sock_setsockopt()
 * runs BPF_CGROUP_RUN_PROG_SETSOCKOPT only when !compat).
 *   gcc -O2 -Wall -o raw_tx raw_tx.c
 *   gcc -O2 -Wall -m32 -static -o raw_tx32 raw_tx.c
 *
 * Usage:
 *   raw_tx --ifname IF --dst-mac MAC --src-ip A --dst-ip B [--bypass]
 *          [--arp] [--dst-port 9] [--src-port 40001] [--count 2000]
 *          [--size 1000] [--seconds 0] [--compat-setsockopt]
 *
 * --compat-setsockopt (64-bit build): set PACKET_QDISC_BYPASS through the
 * 32-bit syscall entry (int $0x80): a compat syscall from a 64-bit binary,
 * so no 32-bit binary or multilib is needed to skip cgroup/setsockopt.
 *
 * Output: one JSON object on stdout:
 *   {"tool":"raw_tx","abi":"x86_64"|"i386","setsockopt":"native"|"compat",
 *    "stage":"done"|"socket"|"bind",
 *    "errno":..., "qdisc_bypass":"not-requested"|"OK"|"EPERM"|...,
 *    "sent":N, "frame_bytes":S, "wire_bytes":sent*S, "elapsed_s":T, "bps":...,
 *    "errors":{"ENOBUFS":n,...}}
 * Exit codes:
 *   0  every frame was accepted by send()
 *   1  bad usage
 *   2  socket() or bind() refused
 *   3  --bypass was refused (frames are still sent, through the qdisc path)
 *   4  some send() calls failed (see "errors"; ENOBUFS = dropped by tc)
 * (3 wins over 4.)
 */
#include <getopt.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>

#include "frame.h"

#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif

/* A gratuitous ARP request for `ip` from `mac`, broadcast: 42 bytes,
 * padded to `size` (at least 60, the Ethernet minimum without FCS). */
static unsigned build_garp(uint8_t *f, unsigned size, const uint8_t mac[6], struct in_addr ip)
{
	static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	uint8_t *a = f + ETH_HDR_LEN;

	if (size < 60)
		size = 60;
	memset(f, 0, size);
	build_eth(f, bcast, mac, 0x0806);
	*(uint16_t *)(a + 0) = htons(1);      /* Ethernet */
	*(uint16_t *)(a + 2) = htons(0x0800); /* IPv4 */
	a[4] = 6;
	a[5] = 4;
	*(uint16_t *)(a + 6) = htons(1); /* request */
	memcpy(a + 8, mac, 6);
	memcpy(a + 14, &ip, 4);
	memset(a + 18, 0, 6);
	memcpy(a + 24, &ip, 4); /* target = sender: gratuitous */
	return size;
}

int main(int argc, char **argv)
{
	struct frame_args a = {.count = 2000, .size = 1000, .dport = 9, .sport = 40001};
	int bypass = 0, arp = 0;
	static const struct option opts[] = {FRAME_LONG_OPTS, {"bypass", 0, 0, 'b'}, {"arp", 0, 0, 'a'}, {0, 0, 0, 0}};
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (frame_arg(c, optarg, &a))
			continue;
		switch (c) {
		case 'b': bypass = 1; break;
		case 'a': arp = 1; break;
		default: return 1;
		}
	}
	uint8_t dst_mac[6] = {0}, src_mac[6];
	struct in_addr src_ip, dst_ip = {0};
	if (!a.ifname || !a.src_ip || !inet_aton(a.src_ip, &src_ip) ||
	    (!arp && (!a.dst_mac || !a.dst_ip || parse_mac(a.dst_mac, dst_mac) || !inet_aton(a.dst_ip, &dst_ip))) ||
	    a.size < 60 || a.size > 9000) {
		fprintf(stderr, "usage: %s --ifname IF --src-ip A (--arp | --dst-mac MAC --dst-ip B) [--bypass]\n"
				"       [--dst-port P] [--src-port P] [--count N] [--size 60..9000] [--seconds T]\n"
				"       [--compat-setsockopt]\n", argv[0]);
		return 1;
	}

	const char *stage = "done", *bypass_result = "not-requested";
	int stage_errno = 0, fd = -1, ifindex = 0, rc = 0;
	unsigned long sent = 0, tried = 0;
	struct errcount errors = {0};
	double t0 = 0, t1 = 0;
	static uint8_t frame[9000];

	if (if_mac_index(a.ifname, src_mac, &ifindex)) {
		stage = "interface";
		stage_errno = errno;
		rc = 2;
	} else if ((fd = socket(AF_PACKET, SOCK_RAW, 0)) < 0) {
		/* Protocol 0: this socket sends only and receives nothing. */
		stage = "socket";
		stage_errno = errno;
		rc = 2;
	} else {
		struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = ifindex};
		if (bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
			stage = "bind";
			stage_errno = errno;
			rc = 2;
		}
	}
	if (rc == 0) {
		if (bypass) {
			int one = 1;
			int r;
#ifdef HAVE_COMPAT_SETSOCKOPT
			if (a.compat)
				r = compat_setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
			else
#endif
				r = setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
			bypass_result = r ? errname(errno) : "OK";
		}
		unsigned len = (unsigned)a.size;
		if (arp) {
			len = build_garp(frame, len, src_mac, src_ip);
		} else {
			build_eth(frame, dst_mac, src_mac, 0x0800);
			build_ipv4(frame + ETH_HDR_LEN, len - ETH_HDR_LEN, L4_UDP, src_ip, dst_ip, a.sport, a.dport, 0);
		}
		a.size = len;
		t0 = now_s();
		for (tried = 0; tried < a.count; tried++) {
			if (a.seconds > 0 && (tried & 63) == 0 && now_s() - t0 >= a.seconds)
				break;
			if (send(fd, frame, len, 0) == (ssize_t)len)
				sent++;
			else
				errcount_add(&errors, errno);
		}
		t1 = now_s();
		if (bypass && strcmp(bypass_result, "OK"))
			rc = 3;
		else if (sent < tried)
			rc = 4;
	}
	double elapsed = t1 > t0 ? t1 - t0 : 0;
	const char *entry = a.compat || strcmp(TOOL_ABI, "x86_64") ? "compat" : "native";
	printf("{\"tool\":\"raw_tx\",\"abi\":\"%s\",\"setsockopt\":\"%s\",\"ifname\":\"%s\",\"kind\":\"%s\","
	       "\"stage\":\"%s\",\"errno\":\"%s\",\"qdisc_bypass\":\"%s\",\"tried\":%lu,\"sent\":%lu,"
	       "\"frame_bytes\":%lu,\"wire_bytes\":%llu,\"elapsed_s\":%.4f,\"bps\":%.0f,\"errors\":",
	       TOOL_ABI, entry, a.ifname, arp ? "garp" : "udp", stage, errname(stage_errno), bypass_result, tried, sent,
	       a.size, (unsigned long long)sent * a.size, elapsed, elapsed > 0 ? sent * a.size * 8.0 / elapsed : 0.0);
	errcount_print(stdout, &errors);
	printf("}\n");
	if (fd >= 0)
		close(fd);
	return rc;
}
