// SPDX-License-Identifier: Apache-2.0
/*
 * delayline: a one-way delay in each direction between two network
 * namespaces, for tests at the round-trip times real pods meet. This
 * kernel has no netem, so a TUN device is created in each namespace and
 * every IP packet read from one is held DELAY_US before it is written to
 * the other.
 *
 *   delayline NETNS_A DEV_A NETNS_B DEV_B DELAY_US
 *
 * NETNS_* are paths (/var/run/netns/NAME). The devices are L3 TUN devices
 * with virtio-net headers and TSO/USO offloads, so the kernel hands over
 * GSO packets whole (one read per up to 64 KB, as a NIC with TSO and GRO
 * would move them) and the line keeps up with several Gbit/s on two cores.
 * The caller addresses and routes the devices once "ready" is printed on
 * stdout. They go away with the process (they are not persistent).
 *
 * The line also counts what a wire would carry, per segment: a GSO packet
 * of N segments is N frames, each with its IP and L4 headers and a 14-byte
 * Ethernet header. On SIGUSR1, and at exit (SIGTERM, SIGINT), one JSON line
 * of counters is printed on stdout:
 *   {"a_to_b":{"frames":N,"wire_bytes":N,"packets":N,"dropped":N},"b_to_a":{...}}
 * packets counts reads (GSO packets count once); dropped counts packets
 * lost because the far side refused a write (never expected; tests assert
 * it stays 0).
 *
 * One thread per direction: it waits in ppoll() until a packet arrives or
 * the oldest held one is due, reads whatever is ready, and writes what is
 * due. A packet is never released early; it may leave a few microseconds
 * late, which the tests' RTT tolerances absorb.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

/* UDP segmentation offload (kernel 6.2+), which older headers lack. */
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif

/* Packets held at once per direction: 1 Gbit/s held 100 ms is ~200 full
 * GSO packets, or ~8 300 unsegmented ones, plus the ACKs going the other way. */
#define SLOTS (1u << 17)
/* A virtio-net header and the largest GSO packet. */
#define MAX_PACKET (sizeof(struct virtio_net_hdr) + 65536)
#define ETH_HLEN 14

struct slot {
	uint64_t due_ns;
	uint32_t len;
	unsigned char *data; /* malloc()ed per packet, freed once written */
};

struct direction {
	int in, out;
	struct slot *ring;
	uint32_t head, tail; /* head: next to write out; tail: next free */
	_Atomic uint64_t packets, frames, wire_bytes, dropped;
};

static uint64_t delay_ns;
static struct direction dirs[2];
static volatile sig_atomic_t report_requested, exit_requested;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "delayline: %s: %s\n", what, strerror(errno));
	exit(2);
}

/* Creates a TUN device named `dev` inside the netns at `netns_path`. */
static int open_tun_in(const char *netns_path, const char *dev, int home_ns)
{
	struct ifreq ifr;
	int ns, fd;

	ns = open(netns_path, O_RDONLY | O_CLOEXEC);
	if (ns < 0)
		die(netns_path);
	if (setns(ns, CLONE_NEWNET) < 0)
		die("setns");
	close(ns);
	fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		die("/dev/net/tun");
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
	if (strlen(dev) >= IFNAMSIZ) {
		errno = ENAMETOOLONG;
		die(dev);
	}
	strcpy(ifr.ifr_name, dev);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
		die("TUNSETIFF");
	/* Take GSO packets whole; UDP segmentation offload where the kernel
	 * has it (6.2+). */
	if (ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6) < 0 &&
	    ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN) < 0)
		die("TUNSETOFFLOAD");
	if (setns(home_ns, CLONE_NEWNET) < 0)
		die("setns back");
	return fd;
}

/* The IP and L4 header length of the IP packet `p` of `len` bytes, or 0. */
static uint32_t l3l4_header_len(const unsigned char *p, uint32_t len)
{
	uint32_t off;
	unsigned char proto;

	if (len < 20)
		return 0;
	if ((p[0] >> 4) == 4) {
		off = (p[0] & 0xf) * 4;
		proto = p[9];
	} else if ((p[0] >> 4) == 6 && len >= 40) {
		off = 40;
		proto = p[6];
		/* hop-by-hop, routing, destination options, fragment, AH */
		while ((proto == 0 || proto == 43 || proto == 60 || proto == 44 || proto == 51) && off + 8 <= len) {
			unsigned char next = p[off];

			off += proto == 44 ? 8 : proto == 51 ? (p[off + 1] + 2u) * 4 : (p[off + 1] + 1u) * 8;
			proto = next;
		}
	} else {
		return 0;
	}
	if (proto == 6 && off + 13 <= len)
		return off + (p[off + 12] >> 4) * 4;
	if (proto == 17)
		return off + 8;
	return off;
}

/* Counts the frames a packet (virtio-net header, then the IP packet) puts
 * on the wire, and their bytes. */
static void count_wire(struct direction *d, const unsigned char *buf, uint32_t len)
{
	const struct virtio_net_hdr *vh = (const void *)buf;
	const unsigned char *ip = buf + sizeof(*vh);
	uint32_t ip_len = len - sizeof(*vh), segs = 1, hdr;

	if (vh->gso_type != VIRTIO_NET_HDR_GSO_NONE && vh->gso_size) {
		hdr = l3l4_header_len(ip, ip_len);
		if (hdr && hdr < ip_len)
			segs = (ip_len - hdr + vh->gso_size - 1) / vh->gso_size;
		if (segs > 1) {
			atomic_fetch_add(&d->frames, segs);
			atomic_fetch_add(&d->wire_bytes, ip_len + (uint64_t)(segs - 1) * hdr + (uint64_t)segs * ETH_HLEN);
			return;
		}
	}
	atomic_fetch_add(&d->frames, 1);
	atomic_fetch_add(&d->wire_bytes, ip_len + ETH_HLEN);
}

/* Writes every held packet that is due; returns ns until the next one is
 * due, or -1 if none is held. */
static int64_t release_due(struct direction *d)
{
	while (d->head != d->tail) {
		struct slot *s = &d->ring[d->head % SLOTS];
		uint64_t now = now_ns();

		if (s->due_ns > now)
			return (int64_t)(s->due_ns - now);
		/* A full receive backlog shows as an error: that is a loss on
		 * the far side, as a real link would have; count it. EIO is a
		 * far device not up yet (IPv6 solicitations sent while the
		 * caller sets the line up), no loss of what it carries. */
		if (write(d->out, s->data, s->len) < 0 && errno != EINTR && errno != EIO)
			atomic_fetch_add(&d->dropped, 1);
		free(s->data);
		s->data = NULL;
		d->head++;
	}
	return -1;
}

static void *forward(void *arg)
{
	struct direction *d = arg;
	struct pollfd pfd = { .fd = d->in, .events = POLLIN };

	/* The default 50 us timer slack would add up to 100 us per round trip. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	while (!exit_requested) {
		int64_t wait = release_due(d);
		struct timespec ts, *tsp = NULL;

		if (wait >= 0) {
			ts.tv_sec = wait / 1000000000;
			ts.tv_nsec = wait % 1000000000;
			tsp = &ts;
		} else {
			/* Nothing held: wake now and then to notice exit. */
			ts.tv_sec = 0;
			ts.tv_nsec = 200000000;
			tsp = &ts;
		}
		if (ppoll(&pfd, 1, tsp, NULL) <= 0)
			continue;
		for (;;) {
			unsigned char *buf = malloc(MAX_PACKET);
			struct slot *s;
			ssize_t n;

			if (!buf)
				die("malloc");
			n = read(d->in, buf, MAX_PACKET);
			if (n <= (ssize_t)sizeof(struct virtio_net_hdr)) {
				free(buf);
				break;
			}
			atomic_fetch_add(&d->packets, 1);
			count_wire(d, buf, (uint32_t)n);
			if (d->tail - d->head >= SLOTS) {
				/* Full: a loss, as on a real link. */
				free(buf);
				atomic_fetch_add(&d->dropped, 1);
				continue;
			}
			s = &d->ring[d->tail % SLOTS];
			/* Keep only what was read. */
			s->data = realloc(buf, (size_t)n) ?: buf;
			s->len = (uint32_t)n;
			s->due_ns = now_ns() + delay_ns;
			d->tail++;
		}
	}
	return NULL;
}

static void report(void)
{
	int i;

	for (i = 0; i < 2; i++)
		printf("%s\"%s\":{\"frames\":%llu,\"wire_bytes\":%llu,\"packets\":%llu,\"dropped\":%llu}%s",
		       i == 0 ? "{" : ",", i == 0 ? "a_to_b" : "b_to_a", (unsigned long long)dirs[i].frames,
		       (unsigned long long)dirs[i].wire_bytes, (unsigned long long)dirs[i].packets,
		       (unsigned long long)dirs[i].dropped, i == 1 ? "}\n" : "");
	fflush(stdout);
}

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		report_requested = 1;
	else
		exit_requested = 1;
}

int main(int argc, char **argv)
{
	pthread_t threads[2];
	int home_ns, a, b, i;
	char *end;
	long long us;
	sigset_t block, unblocked;
	struct sigaction sa;

	if (argc != 6) {
		fprintf(stderr, "usage: delayline NETNS_A DEV_A NETNS_B DEV_B DELAY_US\n");
		return 2;
	}
	us = strtoll(argv[5], &end, 10);
	if (*end || us < 0 || us > 10000000) {
		fprintf(stderr, "delayline: DELAY_US must be 0..10000000, not %s\n", argv[5]);
		return 2;
	}
	delay_ns = (uint64_t)us * 1000;
	home_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	if (home_ns < 0)
		die("/proc/self/ns/net");
	a = open_tun_in(argv[1], argv[2], home_ns);
	b = open_tun_in(argv[3], argv[4], home_ns);

	dirs[0] = (struct direction){ .in = a, .out = b };
	dirs[1] = (struct direction){ .in = b, .out = a };
	for (i = 0; i < 2; i++) {
		dirs[i].ring = calloc(SLOTS, sizeof(struct slot));
		if (!dirs[i].ring)
			die("calloc");
	}

	/* Only the main thread takes signals; the forwarders notice
	 * exit_requested within their poll timeout. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	pthread_sigmask(SIG_BLOCK, &block, &unblocked);
	for (i = 0; i < 2; i++)
		if (pthread_create(&threads[i], NULL, forward, &dirs[i]) != 0)
			die("pthread_create");

	printf("ready\n");
	fflush(stdout);
	/* The signals stay blocked but in sigsuspend, which unblocks and
	 * waits in one step: with pause(), a request that came between the
	 * flag's check and pause() waited for the next signal, and a reader
	 * asking again at once after its answer got none ("the delay line
	 * printed no counters"). */
	while (!exit_requested) {
		while (!report_requested && !exit_requested)
			sigsuspend(&unblocked);
		if (report_requested) {
			report_requested = 0;
			report();
		}
	}
	for (i = 0; i < 2; i++)
		pthread_join(threads[i], NULL);
	report();
	return 0;
}
