/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * frame.h - shared helpers for the bypass senders in tests/tools/
 * (xdp_tx.c, raw_tx.c, pktflood.c): building valid Ethernet + IPv4 + UDP /
 * ICMP / TCP frames, checksums, MAC parsing, errno names and a monotonic
 * clock. Header-only and libc-only, so every tool builds with plain
 * `gcc -O2 -Wall tool.c` (and `-m32 -static` for the compat variants).
 */
#ifndef BRL_TOOLS_FRAME_H
#define BRL_TOOLS_FRAME_H

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ETH_HDR_LEN 14
#define IP4_HDR_LEN 20
#define UDP_HDR_LEN 8
#define TCP_HDR_LEN 20
#define ICMP_HDR_LEN 8

/* The ABI this binary was built for: "i386" for a -m32 (compat) build. */
#if defined(__x86_64__)
#define TOOL_ABI "x86_64"
#elif defined(__i386__)
#define TOOL_ABI "i386"
#else
#define TOOL_ABI "other"
#endif

static inline double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Sleeps until the monotonic time `t` (seconds). */
static inline void sleep_until(double t)
{
	struct timespec ts;

	ts.tv_sec = (time_t)t;
	ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* The symbolic name of an errno value, for JSON output. */
static inline const char *errname(int e)
{
	switch (e) {
	case 0: return "OK";
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case ENOBUFS: return "ENOBUFS";
	case EAGAIN: return "EAGAIN";
	case EBUSY: return "EBUSY";
	case EINVAL: return "EINVAL";
	case ENOMEM: return "ENOMEM";
	case ENXIO: return "ENXIO";
	case ENODEV: return "ENODEV";
	case ENETDOWN: return "ENETDOWN";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ENOPROTOOPT: return "ENOPROTOOPT";
	case EFAULT: return "EFAULT";
	case EMSGSIZE: return "EMSGSIZE";
	case ECONNREFUSED: return "ECONNREFUSED";
	case EIO: return "EIO";
	case ENOSPC: return "ENOSPC";
	default: return "EOTHER";
	}
}

/* A small table of errno counts, printed as a JSON object. */
struct errcount {
	int err[8];
	unsigned long n[8];
};

static inline void errcount_add(struct errcount *c, int e)
{
	for (int i = 0; i < 8; i++) {
		if (c->n[i] && c->err[i] == e) {
			c->n[i]++;
			return;
		}
		if (!c->n[i]) {
			c->err[i] = e;
			c->n[i] = 1;
			return;
		}
	}
}

static inline void errcount_print(FILE *f, const struct errcount *c)
{
	fputc('{', f);
	for (int i = 0; i < 8 && c->n[i]; i++)
		fprintf(f, "%s\"%s\":%lu", i ? "," : "", errname(c->err[i]), c->n[i]);
	fputc('}', f);
}

static inline int parse_mac(const char *s, uint8_t mac[6])
{
	unsigned int b[6];

	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++)
		mac[i] = (uint8_t)b[i];
	return 0;
}

/* The MAC address and index of a local interface. */
static inline int if_mac_index(const char *ifname, uint8_t mac[6], int *ifindex)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	if (fd < 0)
		return -1;
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
		close(fd);
		return -1;
	}
	memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
	close(fd);
	*ifindex = (int)if_nametoindex(ifname);
	return *ifindex > 0 ? 0 : -1;
}

/* The Internet checksum of `len` bytes, folded, starting from `sum`. */
static inline uint16_t csum_fold_buf(const void *buf, size_t len, uint32_t sum)
{
	const uint8_t *p = buf;

	while (len > 1) {
		sum += (uint32_t)p[0] << 8 | p[1];
		p += 2;
		len -= 2;
	}
	if (len)
		sum += (uint32_t)p[0] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons((uint16_t)~sum);
}

/* The unfolded sum of the IPv4 pseudo-header of an L4 segment. */
static inline uint32_t pseudo_sum(const uint8_t *ip, uint8_t proto, uint16_t l4len)
{
	uint32_t sum = 0;

	for (int i = 12; i < 20; i += 2) /* source and destination addresses */
		sum += (uint32_t)ip[i] << 8 | ip[i + 1];
	return sum + proto + l4len;
}

enum l4_kind { L4_UDP, L4_ICMP_ECHO, L4_TCP_SYN, L4_TCP_ACK };

/*
 * Writes an IPv4 packet of `ip_len` bytes (header included) at `ip`: a UDP
 * datagram, an ICMP echo request or a bare TCP SYN/ACK (padded with payload
 * to the length), from src:sport to dst:dport. `seq` varies the IP ID and the
 * first payload bytes so every packet is distinct. Returns 0, or -1 if
 * `ip_len` is too short for the headers.
 */
static inline int build_ipv4(uint8_t *ip, unsigned ip_len, enum l4_kind kind, struct in_addr src,
			     struct in_addr dst, uint16_t sport, uint16_t dport, uint32_t seq)
{
	unsigned l4hdr = kind == L4_UDP ? UDP_HDR_LEN : kind == L4_ICMP_ECHO ? ICMP_HDR_LEN : TCP_HDR_LEN;
	uint8_t proto = kind == L4_UDP ? 17 : kind == L4_ICMP_ECHO ? 1 : 6;
	uint8_t *l4 = ip + IP4_HDR_LEN;
	unsigned l4len;

	if (ip_len < IP4_HDR_LEN + l4hdr || ip_len > 65535)
		return -1;
	l4len = ip_len - IP4_HDR_LEN;
	memset(ip, 0, ip_len);
	ip[0] = 0x45;
	*(uint16_t *)(ip + 2) = htons((uint16_t)ip_len);
	*(uint16_t *)(ip + 4) = htons((uint16_t)seq);
	ip[8] = 64;
	ip[9] = proto;
	memcpy(ip + 12, &src, 4);
	memcpy(ip + 16, &dst, 4);
	*(uint16_t *)(ip + 10) = csum_fold_buf(ip, IP4_HDR_LEN, 0);
	/* A recognisable payload with the sequence number in front. */
	for (unsigned i = l4hdr; i < l4len; i++)
		l4[i] = (uint8_t)('a' + i % 26);
	if (l4len >= l4hdr + 4)
		*(uint32_t *)(l4 + l4hdr) = htonl(seq);
	switch (kind) {
	case L4_UDP:
		*(uint16_t *)(l4 + 0) = htons(sport);
		*(uint16_t *)(l4 + 2) = htons(dport);
		*(uint16_t *)(l4 + 4) = htons((uint16_t)l4len);
		*(uint16_t *)(l4 + 6) = csum_fold_buf(l4, l4len, pseudo_sum(ip, proto, (uint16_t)l4len));
		if (*(uint16_t *)(l4 + 6) == 0)
			*(uint16_t *)(l4 + 6) = 0xffff;
		break;
	case L4_ICMP_ECHO:
		l4[0] = 8; /* echo request */
		*(uint16_t *)(l4 + 4) = htons(sport); /* identifier */
		*(uint16_t *)(l4 + 6) = htons((uint16_t)seq);
		*(uint16_t *)(l4 + 2) = csum_fold_buf(l4, l4len, 0);
		break;
	case L4_TCP_SYN:
	case L4_TCP_ACK:
		*(uint16_t *)(l4 + 0) = htons(sport);
		*(uint16_t *)(l4 + 2) = htons(dport);
		*(uint32_t *)(l4 + 4) = htonl(seq * 7919u + 1);
		*(uint32_t *)(l4 + 8) = kind == L4_TCP_ACK ? htonl(seq * 104729u + 1) : 0;
		l4[12] = (TCP_HDR_LEN / 4) << 4;
		l4[13] = kind == L4_TCP_SYN ? 0x02 : 0x10;
		*(uint16_t *)(l4 + 14) = htons(65535);
		*(uint16_t *)(l4 + 16) = csum_fold_buf(l4, l4len, pseudo_sum(ip, proto, (uint16_t)l4len));
		break;
	}
	return 0;
}

/* Writes an Ethernet header for IPv4 (or `ethertype`) at `frame`. */
static inline void build_eth(uint8_t *frame, const uint8_t dst[6], const uint8_t src[6], uint16_t ethertype)
{
	memcpy(frame, dst, 6);
	memcpy(frame + 6, src, 6);
	*(uint16_t *)(frame + 12) = htons(ethertype);
}


/* The options both frame senders (raw_tx, xdp_tx) take, parsed once. */
struct frame_args {
	const char *ifname, *dst_mac, *src_ip, *dst_ip;
	unsigned dport, sport;
	unsigned long count, size;
	double seconds;
	int compat; /* --compat-setsockopt */
};

#define FRAME_LONG_OPTS                                                                                    \
	{"ifname", 1, 0, 'i'}, {"dst-mac", 1, 0, 'm'}, {"src-ip", 1, 0, 's'}, {"dst-ip", 1, 0, 'd'},      \
		{"dst-port", 1, 0, 'p'}, {"src-port", 1, 0, 'P'}, {"count", 1, 0, 'n'}, {"size", 1, 0, 'l'}, \
		{"seconds", 1, 0, 't'}, {"compat-setsockopt", 0, 0, 'c'}

/* Takes getopt_long's `c` into `a` if it is one of FRAME_LONG_OPTS; 0 if not. */
static inline int frame_arg(int c, const char *arg, struct frame_args *a)
{
	switch (c) {
	case 'i': a->ifname = arg; break;
	case 'm': a->dst_mac = arg; break;
	case 's': a->src_ip = arg; break;
	case 'd': a->dst_ip = arg; break;
	case 'p': a->dport = strtoul(arg, NULL, 0); break;
	case 'P': a->sport = strtoul(arg, NULL, 0); break;
	case 'n': a->count = strtoul(arg, NULL, 0); break;
	case 'l': a->size = strtoul(arg, NULL, 0); break;
	case 't': a->seconds = atof(arg); break;
	case 'c': a->compat = 1; break;
	default: return 0;
	}
	return 1;
}

/*
 * setsockopt() through the 32-bit system call entry (int $0x80) from a
 * 64-bit process: the kernel then treats it as a compat syscall
 * (in_compat_syscall() is true), exactly as for a -m32 binary, and skips
 * cgroup/setsockopt programs. The option value must sit below 4 GiB, so it
 * is copied into a MAP_32BIT page. Returns 0 or -1 with errno set.
 * Needs CONFIG_IA32_EMULATION (and ia32_emulation not disabled at boot).
 */
#if defined(__x86_64__)
#include <sys/mman.h>
#define I386_NR_SETSOCKOPT 366
static inline int compat_setsockopt(int fd, int level, int optname, const void *val, unsigned len)
{
	static void *low;
	long ret;

	if (!low) {
		low = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
		if (low == MAP_FAILED) {
			low = NULL;
			return -1;
		}
	}
	if (len > 4096) {
		errno = EINVAL;
		return -1;
	}
	memcpy(low, val, len);
	__asm__ volatile("int $0x80"
			 : "=a"(ret)
			 : "a"(I386_NR_SETSOCKOPT), "b"(fd), "c"(level), "d"(optname), "S"(low), "D"(len)
			 : "memory", "r8", "r9", "r10", "r11");
	if (ret < 0) {
		errno = (int)-ret;
		return -1;
	}
	return 0;
}
#define HAVE_COMPAT_SETSOCKOPT 1
#endif

#endif
