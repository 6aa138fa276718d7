// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xdp_tx - a TX-only AF_XDP sender in copy mode, for testing whether a pod
 * can send past bpf-ratelimit (issue 15, claim 1).
 *
 * It opens an AF_XDP socket, registers a UMEM, creates the fill, completion
 * and TX rings, binds to IFNAME queue QUEUE with XDP_COPY (no XDP program is
 * needed to transmit) and sends COUNT valid Ethernet + IPv4 + UDP frames of
 * SIZE bytes (Ethernet header included, FCS not) to DST_MAC / DST_IP as fast
 * as the kernel takes them, or for SECONDS. Copy-mode frames leave through
 * __dev_direct_xmit(): no qdisc, no tc/tcx egress, no cgroup hook.
 *
 * Raw syscalls only (no libxdp/libbpf). Builds as 64-bit and as a 32-bit
 * compat binary:
 *   gcc -O2 -Wall -o xdp_tx xdp_tx.c
 *   gcc -O2 -Wall -m32 -static -D_FILE_OFFSET_BITS=64 -o xdp_tx32 xdp_tx.c
 * (the ring mmap offsets are above 4 GiB, hence _FILE_OFFSET_BITS=64).
 *
 * Usage:
 *   xdp_tx --ifname IF --dst-mac MAC --src-ip A --dst-ip B
 *          [--queue 0] [--dst-port 9] [--src-port 40000] [--count 100000]
 *          [--size 1000] [--seconds 0] [--need-wakeup] [--frames 1024 (power of two >= 8;
 *          UMEM = frames x 2048 bytes, charged to RLIMIT_MEMLOCK without CAP_IPC_LOCK)]
 *          [--compat-setsockopt]
 *
 * --compat-setsockopt (64-bit build): make every SOL_XDP setsockopt through
 * the 32-bit syscall entry (int $0x80), which the kernel treats as a compat
 * syscall: cgroup/setsockopt programs do not run for it, as for a -m32 binary.
 *
 * Output: one JSON object on stdout:
 *   {"tool":"xdp_tx","abi":"x86_64"|"i386","setsockopt":"native"|"compat",
 *    "stage":"done"|<failed step>,
 *    "errno":"OK"|"EPERM"|..., "submitted":N, "completed":N, "frame_bytes":S,
 *    "wire_bytes":completed*S, "elapsed_s":T, "bps":wire bits/s,
 *    "kick_errors":{...}}
 * Exit codes:
 *   0  every frame was sent (completed by the kernel)
 *   1  bad usage
 *   2  socket(AF_XDP) refused (no CAP_NET_RAW, or no CONFIG_XDP_SOCKETS)
 *   3  a SOL_XDP setsockopt refused (e.g. a cgroup/setsockopt program, or
 *      RLIMIT_MEMLOCK for the UMEM without CAP_IPC_LOCK: ENOBUFS); "stage" names it
 *   4  bind() refused
 *   5  another setup step failed (mmap, getsockopt, interface lookup)
 *   6  set up, but fewer frames completed than requested
 */
#include <getopt.h>
#include <linux/if_xdp.h>
#include <poll.h>
#include <sys/mman.h>

#include "frame.h"

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

/* The current struct xdp_umem_reg, spelt out: older uapi headers lack
 * tx_metadata_len, and a 32-bit build must pass the same 32 bytes. */
struct umem_reg {
	uint64_t addr;
	uint64_t len;
	uint32_t chunk_size;
	uint32_t headroom;
	uint32_t flags;
	uint32_t tx_metadata_len;
};

/* One mapped ring: the producer and consumer indices and the entries. */
struct ring {
	volatile uint32_t *producer;
	volatile uint32_t *consumer;
	volatile uint32_t *flags;
	void *desc;
	uint32_t size;
};

/* The setup step running (or failed), and its errno. */
static const char *stage = "start";
static int stage_errno;
static int use_int80; /* --compat-setsockopt */

/* setsockopt(), through the 32-bit entry when --compat-setsockopt is given
 * (a 64-bit build only; a -m32 build is compat already). */
static int xsetsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
#ifdef HAVE_COMPAT_SETSOCKOPT
	if (use_int80)
		return compat_setsockopt(fd, level, name, val, len);
#endif
	return setsockopt(fd, level, name, val, len);
}

static void map_ring(struct ring *r, int fd, const struct xdp_ring_offset *off, uint32_t size, size_t entry,
		     off_t pgoff, void **base, size_t *maplen)
{
	*maplen = off->desc + (size_t)size * entry;
	*base = mmap(NULL, *maplen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, pgoff);
	if (*base == MAP_FAILED) {
		*base = NULL;
		return;
	}
	r->producer = (uint32_t *)((char *)*base + off->producer);
	r->consumer = (uint32_t *)((char *)*base + off->consumer);
	r->flags = (uint32_t *)((char *)*base + off->flags);
	r->desc = (char *)*base + off->desc;
	r->size = size;
}

static int fail(const char *what, int e)
{
	stage = what;
	stage_errno = e;
	return -1;
}

int main(int argc, char **argv)
{
	struct frame_args a = {.count = 100000, .size = 1000, .dport = 9, .sport = 40000};
	unsigned long nframes = 1024;
	unsigned queue = 0, need_wakeup = 0;
	static const struct option opts[] = {FRAME_LONG_OPTS, {"queue", 1, 0, 'q'}, {"need-wakeup", 0, 0, 'w'},
					     {"frames", 1, 0, 'f'}, {0, 0, 0, 0}};
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (frame_arg(c, optarg, &a))
			continue;
		switch (c) {
		case 'q': queue = strtoul(optarg, NULL, 0); break;
		case 'w': need_wakeup = 1; break;
		case 'f': nframes = strtoul(optarg, NULL, 0); break;
		default: return 1;
		}
	}
	use_int80 = a.compat;
	uint8_t dst_mac[6], src_mac[6];
	struct in_addr src_ip, dst_ip;
	const unsigned frame_size = 2048;
	if (!a.ifname || !a.dst_mac || !a.src_ip || !a.dst_ip || parse_mac(a.dst_mac, dst_mac) ||
	    !inet_aton(a.src_ip, &src_ip) || !inet_aton(a.dst_ip, &dst_ip) || a.size < 64 || a.size > frame_size ||
	    nframes < 8 || (nframes & (nframes - 1))) {
		fprintf(stderr, "usage: %s --ifname IF --dst-mac MAC --src-ip A --dst-ip B [--queue Q] [--dst-port P]\n"
				"       [--src-port P] [--count N] [--size 64..2048] [--seconds T] [--need-wakeup]\n"
				"       [--frames power of two >= 8] [--compat-setsockopt]\n", argv[0]);
		return 1;
	}

	int ifindex = 0, fd = -1, rc = 0;
	void *umem = NULL, *tx_map = NULL, *cq_map = NULL, *fq_map = NULL;
	size_t umem_len = (size_t)nframes * frame_size, tx_len = 0, cq_len = 0, fq_len = 0;
	struct ring tx = {0}, cq = {0}, fq = {0};
	unsigned long submitted = 0, completed = 0, kicks = 0;
	struct errcount kick_errors = {0};
	double t0 = 0, t1 = 0;

	/* Each step records its name; the first failure stops the setup. */
	do {
		if (if_mac_index(a.ifname, src_mac, &ifindex)) { rc = fail("interface", errno); break; }
		stage = "socket";
		fd = socket(AF_XDP, SOCK_RAW, 0);
		if (fd < 0) { rc = fail("socket", errno); break; }
		stage = "umem_mmap";
		umem = mmap(NULL, umem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (umem == MAP_FAILED) { umem = NULL; rc = fail("umem_mmap", errno); break; }
		struct umem_reg mr = {.addr = (uintptr_t)umem, .len = umem_len, .chunk_size = frame_size};
		if (xsetsockopt(fd, SOL_XDP, XDP_UMEM_REG, &mr, sizeof(mr))) { rc = fail("umem_reg", errno); break; }
		int fq_size = 64, ring_size = (int)nframes;
		if (xsetsockopt(fd, SOL_XDP, XDP_UMEM_FILL_RING, &fq_size, sizeof(int))) { rc = fail("fill_ring", errno); break; }
		if (xsetsockopt(fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &ring_size, sizeof(int))) { rc = fail("completion_ring", errno); break; }
		if (xsetsockopt(fd, SOL_XDP, XDP_TX_RING, &ring_size, sizeof(int))) { rc = fail("tx_ring", errno); break; }
		struct xdp_mmap_offsets off;
		socklen_t optlen = sizeof(off);
		if (getsockopt(fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &optlen)) { rc = fail("mmap_offsets", errno); break; }
		map_ring(&tx, fd, &off.tx, nframes, sizeof(struct xdp_desc), XDP_PGOFF_TX_RING, &tx_map, &tx_len);
		map_ring(&cq, fd, &off.cr, nframes, sizeof(uint64_t), XDP_UMEM_PGOFF_COMPLETION_RING, &cq_map, &cq_len);
		map_ring(&fq, fd, &off.fr, fq_size, sizeof(uint64_t), XDP_UMEM_PGOFF_FILL_RING, &fq_map, &fq_len);
		if (!tx_map || !cq_map || !fq_map) { rc = fail("ring_mmap", errno); break; }
		struct sockaddr_xdp sxdp = {
			.sxdp_family = AF_XDP,
			.sxdp_flags = XDP_COPY | (need_wakeup ? XDP_USE_NEED_WAKEUP : 0),
			.sxdp_ifindex = (uint32_t)ifindex,
			.sxdp_queue_id = queue,
		};
		if (bind(fd, (struct sockaddr *)&sxdp, sizeof(sxdp))) { rc = fail("bind", errno); break; }
		stage = "send";
	} while (0);

	if (rc == 0) {
		/* Every UMEM frame holds the same frame; the sequence number in
		 * the IP ID and payload is set per frame slot. */
		for (unsigned long i = 0; i < nframes; i++) {
			uint8_t *f = (uint8_t *)umem + i * frame_size;
			build_eth(f, dst_mac, src_mac, 0x0800);
			build_ipv4(f + ETH_HDR_LEN, a.size - ETH_HDR_LEN, L4_UDP, src_ip, dst_ip, a.sport, a.dport, i);
		}
		uint32_t tx_prod = *tx.producer, cq_cons = *cq.consumer;
		unsigned long in_flight = 0;
		struct xdp_desc *descs = tx.desc;
		t0 = now_s();
		while (completed < a.count) {
			if (a.seconds > 0 && now_s() - t0 >= a.seconds)
				break;
			/* Queue as many frames as there are free slots. */
			while (in_flight < nframes && submitted < a.count) {
				struct xdp_desc *d = &descs[tx_prod & (nframes - 1)];
				d->addr = (uint64_t)(tx_prod & (nframes - 1)) * frame_size;
				d->len = a.size;
				d->options = 0;
				tx_prod++;
				in_flight++;
				submitted++;
			}
			__atomic_store_n(tx.producer, tx_prod, __ATOMIC_RELEASE);
			/* Copy mode transmits only from sendmsg(): kick it. */
			if (!need_wakeup || (*tx.flags & XDP_RING_NEED_WAKEUP)) {
				kicks++;
				if (sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0) {
					int e = errno;
					errcount_add(&kick_errors, e);
					if (e != EAGAIN && e != EBUSY && e != ENOBUFS && e != ENETDOWN) {
						stage = "sendto";
						stage_errno = e;
						break;
					}
				}
			}
			/* Reap completions: those frames left through the driver. */
			uint32_t cq_prod = __atomic_load_n(cq.producer, __ATOMIC_ACQUIRE);
			uint32_t done = cq_prod - cq_cons;
			cq_cons += done;
			__atomic_store_n(cq.consumer, cq_cons, __ATOMIC_RELEASE);
			completed += done;
			in_flight -= done;
		}
		t1 = now_s();
		if (strcmp(stage, "send") == 0)
			stage = "done";
		rc = completed >= a.count ? 0 : 6;
		if (a.seconds > 0 && completed > 0 && strcmp(stage, "done") == 0)
			rc = 0; /* a timed run: whatever completed is the result */
	} else if (!strcmp(stage, "socket")) {
		rc = 2;
	} else if (!strcmp(stage, "bind")) {
		rc = 4;
	} else if (!strcmp(stage, "umem_reg") || !strcmp(stage, "fill_ring") || !strcmp(stage, "completion_ring") ||
		   !strcmp(stage, "tx_ring")) {
		rc = 3;
	} else {
		rc = 5;
	}

	double elapsed = t1 > t0 ? t1 - t0 : 0;
	const char *entry = use_int80 || strcmp(TOOL_ABI, "x86_64") ? "compat" : "native";
	printf("{\"tool\":\"xdp_tx\",\"abi\":\"%s\",\"setsockopt\":\"%s\",\"ifname\":\"%s\",\"queue\":%u,"
	       "\"stage\":\"%s\",\"errno\":\"%s\",\"submitted\":%lu,\"completed\":%lu,\"frame_bytes\":%lu,"
	       "\"wire_bytes\":%llu,\"elapsed_s\":%.4f,\"bps\":%.0f,\"kicks\":%lu,\"kick_errors\":",
	       TOOL_ABI, entry, a.ifname, queue, stage, errname(stage_errno), submitted, completed, a.size,
	       (unsigned long long)completed * a.size, elapsed, elapsed > 0 ? completed * a.size * 8.0 / elapsed : 0.0,
	       kicks);
	errcount_print(stdout, &kick_errors);
	printf("}\n");
	if (fd >= 0)
		close(fd);
	if (tx_map) munmap(tx_map, tx_len);
	if (cq_map) munmap(cq_map, cq_len);
	if (fq_map) munmap(fq_map, fq_len);
	if (umem) munmap(umem, umem_len);
	return rc;
}
