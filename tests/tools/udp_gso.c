// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * udp_gso - a UDP sender using UDP_SEGMENT (UDP GSO), for measuring how
 * many wire bytes one charged skb turns into (issue 15, claim 5).
 *
 * Each send() hands the kernel PAYLOAD bytes that leave as one GSO skb and
 * are cut into ceil(PAYLOAD / GSO_SIZE) datagrams of GSO_SIZE bytes, each
 * with its own Ethernet + IPv4 + UDP header (42 bytes) on the wire. The
 * kernel allows at most UDP_MAX_SEGMENTS (128 on 6.x) segments per send, so
 * PAYLOAD <= 128 * GSO_SIZE. Sends as fast as the socket takes them (a
 * cgroup egress drop "with congestion notification" is invisible to UDP
 * senders: send() succeeds), or paced to RATE payload bits/s.
 *
 *   gcc -O2 -Wall -o udp_gso udp_gso.c
 *
 * Usage:
 *   udp_gso --dst-ip B [--dst-port 9] [--gso-size 8] [--payload 1024]
 *           [--seconds 3] [--rate 0]
 *
 * Output: one JSON object on stdout:
 *   {"tool":"udp_gso","gso_size":G,"payload":P,"segments_per_send":S,
 *    "sends":N,"payload_bytes":N*P,"wire_bytes_if_all_left":N*(P + S*42),
 *    "elapsed_s":T,"errors":{...}}
 * Exit codes: 0 sent; 1 bad usage; 2 socket/connect/UDP_SEGMENT refused
 *   (see "stage"); 4 some sends failed.
 */
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/udp.h>

#include "frame.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

int main(int argc, char **argv)
{
	const char *dst_s = NULL;
	unsigned dport = 9, gso = 8;
	unsigned long payload = 1024;
	double seconds = 3, rate = 0;
	static const struct option opts[] = {
		{"dst-ip", 1, 0, 'd'}, {"dst-port", 1, 0, 'p'}, {"gso-size", 1, 0, 'g'}, {"payload", 1, 0, 'l'},
		{"seconds", 1, 0, 't'}, {"rate", 1, 0, 'r'}, {0, 0, 0, 0}};
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd': dst_s = optarg; break;
		case 'p': dport = strtoul(optarg, NULL, 0); break;
		case 'g': gso = strtoul(optarg, NULL, 0); break;
		case 'l': payload = strtoul(optarg, NULL, 0); break;
		case 't': seconds = atof(optarg); break;
		case 'r': rate = atof(optarg); break;
		default: return 1;
		}
	}
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)dport)};
	if (!dst_s || !inet_aton(dst_s, &to.sin_addr) || gso < 1 || payload < 1 || payload > 65507 || seconds <= 0) {
		fprintf(stderr, "usage: %s --dst-ip B [--dst-port P] [--gso-size G] [--payload P <= 128*G]\n"
				"       [--seconds T] [--rate payload_bits_per_s (0 = max)]\n", argv[0]);
		return 1;
	}
	const char *stage = "done";
	int e = 0, gso_i = (int)gso;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		stage = "socket", e = errno;
	else if (connect(fd, (struct sockaddr *)&to, sizeof(to)))
		stage = "connect", e = errno;
	else if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &gso_i, sizeof(gso_i)))
		stage = "udp_segment", e = errno;
	if (e) {
		printf("{\"tool\":\"udp_gso\",\"stage\":\"%s\",\"errno\":\"%s\"}\n", stage, errname(e));
		return 2;
	}
	static char buf[65536];
	memset(buf, 'g', sizeof(buf));
	unsigned long segs = (payload + gso - 1) / gso, sends = 0, tries = 0;
	struct errcount errors = {0};
	double per_send = rate > 0 ? payload * 8.0 / rate : 0, t0 = now_s(), t;

	while ((t = now_s()) - t0 < seconds) {
		if (per_send > 0 && t0 + tries * per_send - t > 100e-6)
			sleep_until(t0 + tries * per_send);
		tries++;
		if (send(fd, buf, payload, 0) == (ssize_t)payload)
			sends++;
		else
			errcount_add(&errors, errno);
	}
	double elapsed = now_s() - t0;
	printf("{\"tool\":\"udp_gso\",\"stage\":\"done\",\"gso_size\":%u,\"payload\":%lu,\"segments_per_send\":%lu,"
	       "\"sends\":%lu,\"payload_bytes\":%llu,\"wire_bytes_if_all_left\":%llu,\"elapsed_s\":%.4f,\"errors\":",
	       gso, payload, segs, sends, (unsigned long long)sends * payload,
	       (unsigned long long)sends * (payload + segs * (ETH_HDR_LEN + IP4_HDR_LEN + UDP_HDR_LEN)), elapsed);
	errcount_print(stdout, &errors);
	printf("}\n");
	close(fd);
	return sends == tries ? 0 : 4;
}
