// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * pktflood - a paced raw IPv4 sender of packets the kernel answers by
 * itself, for testing which replies bpf-ratelimit charges (issue 15,
 * claim 4). Run it OUTSIDE the pod (e.g. in the server's netns):
 *
 *   icmp  ICMP echo requests        -> the pod's kernel sends echo replies
 *   syn   TCP SYNs to a closed port -> RST+ACK replies
 *   ack   TCP ACKs to a closed port -> RST replies
 *   udp   UDP to a closed port      -> ICMP port unreachable (rate limited
 *                                      by net.ipv4.icmp_ratelimit/msgs_per_sec)
 *
 * Packets are SIZE bytes of IPv4 (header included; the frame on the wire is
 * SIZE + 14), sent with a raw IPPROTO_RAW socket (IP_HDRINCL), paced to RATE
 * bits/s counted as Ethernet frames (0 = as fast as possible), for SECONDS.
 * Source ports vary per packet so each SYN/ACK is a distinct flow.
 *
 *   gcc -O2 -Wall -o pktflood pktflood.c
 *
 * Usage:
 *   pktflood --kind icmp|syn|ack|udp --src-ip A --dst-ip B [--size 1400]
 *            [--rate 20000000] [--seconds 3] [--dst-port 9]
 *
 * Output: one JSON object on stdout:
 *   {"tool":"pktflood","kind":...,"sent":N,"ip_bytes":..,"wire_bytes":..,
 *    "elapsed_s":T,"wire_bps":..,"errors":{...}}
 * Exit codes: 0 sent; 1 bad usage; 2 socket refused (needs CAP_NET_RAW);
 *   4 some sends failed (see "errors").
 */
#include <getopt.h>
#include <netinet/in.h>

#include "frame.h"

int main(int argc, char **argv)
{
	const char *kind_s = NULL, *src_s = NULL, *dst_s = NULL;
	unsigned long size = 1400;
	double rate = 0, seconds = 3;
	unsigned dport = 9;
	static const struct option opts[] = {
		{"kind", 1, 0, 'k'}, {"src-ip", 1, 0, 's'}, {"dst-ip", 1, 0, 'd'}, {"size", 1, 0, 'l'},
		{"rate", 1, 0, 'r'}, {"seconds", 1, 0, 't'}, {"dst-port", 1, 0, 'p'}, {0, 0, 0, 0}};
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'k': kind_s = optarg; break;
		case 's': src_s = optarg; break;
		case 'd': dst_s = optarg; break;
		case 'l': size = strtoul(optarg, NULL, 0); break;
		case 'r': rate = atof(optarg); break;
		case 't': seconds = atof(optarg); break;
		case 'p': dport = strtoul(optarg, NULL, 0); break;
		default: return 1;
		}
	}
	enum l4_kind kind;
	struct in_addr src, dst;
	if (!kind_s || !src_s || !dst_s || !inet_aton(src_s, &src) || !inet_aton(dst_s, &dst) || size < 40 ||
	    size > 1500 || seconds <= 0) {
	usage:
		fprintf(stderr, "usage: %s --kind icmp|syn|ack|udp --src-ip A --dst-ip B [--size 40..1500]\n"
				"       [--rate wire_bits_per_s (0 = max)] [--seconds T] [--dst-port P]\n", argv[0]);
		return 1;
	}
	if (!strcmp(kind_s, "icmp"))
		kind = L4_ICMP_ECHO;
	else if (!strcmp(kind_s, "syn"))
		kind = L4_TCP_SYN;
	else if (!strcmp(kind_s, "ack"))
		kind = L4_TCP_ACK;
	else if (!strcmp(kind_s, "udp"))
		kind = L4_UDP;
	else
		goto usage;

	int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	if (fd < 0) {
		printf("{\"tool\":\"pktflood\",\"kind\":\"%s\",\"stage\":\"socket\",\"errno\":\"%s\"}\n", kind_s,
		       errname(errno));
		return 2;
	}
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = dst};
	static uint8_t pkt[1500];
	unsigned long sent = 0, i = 0;
	struct errcount errors = {0};
	double frame_s = rate > 0 ? (size + ETH_HDR_LEN) * 8.0 / rate : 0;
	double t0 = now_s(), t;

	while ((t = now_s()) - t0 < seconds) {
		/* Pacing: packet i is due at t0 + i * frame time; sleep when more
		 * than 100 us ahead, so the rate holds without spinning. */
		if (frame_s > 0) {
			double due = t0 + i * frame_s;
			if (due - t > 100e-6)
				sleep_until(due);
		}
		build_ipv4(pkt, (unsigned)size, kind, src, dst, (uint16_t)(20000 + i % 40000), (uint16_t)dport,
			   (uint32_t)i);
		if (sendto(fd, pkt, size, 0, (struct sockaddr *)&to, sizeof(to)) == (ssize_t)size)
			sent++;
		else
			errcount_add(&errors, errno);
		i++;
	}
	double elapsed = now_s() - t0;
	printf("{\"tool\":\"pktflood\",\"kind\":\"%s\",\"stage\":\"done\",\"size\":%lu,\"sent\":%lu,\"ip_bytes\":%llu,"
	       "\"wire_bytes\":%llu,\"elapsed_s\":%.4f,\"wire_bps\":%.0f,\"errors\":",
	       kind_s, size, sent, (unsigned long long)sent * size, (unsigned long long)sent * (size + ETH_HDR_LEN),
	       elapsed, sent * (size + ETH_HDR_LEN) * 8.0 / elapsed);
	errcount_print(stdout, &errors);
	printf("}\n");
	close(fd);
	return sent == i ? 0 : 4;
}
