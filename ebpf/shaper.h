/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The shaping logic of bpf-ratelimit, shared by the production programs
 * (shaper.bpf.c) and the BPF_PROG_TEST_RUN harness (harness.bpf.c), so that
 * the tests exercise exactly the code that shapes pods.
 *
 * The layouts of struct iface_state, struct pod_state and struct
 * host_guard are mirrored by src/state.rs. Change both together and bump
 * STATE_LAYOUT.
 */
#ifndef BPF_RATELIMIT_SHAPER_H
#define BPF_RATELIMIT_SHAPER_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <stdbool.h>

#ifndef ETH_P_IP
#define ETH_P_IP 0x0800
#endif
#ifndef ETH_P_IPV6
#define ETH_P_IPV6 0x86DD
#endif
#define ETH_HLEN 14
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

#define NSEC_PER_SEC 1000000000ULL
#define USEC_PER_SEC 1000000ULL

/* Caps the refill after a long idle period so elapsed * rate cannot overflow
 * (1000 s at the 100 Gbit/s maximum rate is 1.25e13 bytes). */
#define MAX_REFILL_NS (1000ULL * NSEC_PER_SEC)

/* Return codes of cgroup_skb programs. On egress, 2 drops with congestion
 * notification: TCP enters CWR and keeps the refused skb queued instead of
 * losing it, and UDP's sendmsg() sees a silent qdisc-like drop rather than
 * EPERM (or ENOBUFS, with IP_RECVERR, as for a full qdisc). */
#define SKB_DROP    0
#define SKB_PASS    1
#define SKB_DROP_CN 2

/* tc verdicts (linux/pkt_cls.h) for a direct-action classifier. */
#define TC_ACT_UNSPEC -1
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

/* Below 1/MARK_DIVISOR of the burst, conforming ECN-capable packets are
 * marked CE, so ECN senders back off before the bucket empties (ingress, and
 * egress UDP; egress TCP is paced instead, see shape_egress). */
#define MARK_DIVISOR 2

#define STATE_LAYOUT 3

/* A token bucket for one direction of one interface, with its counters.
 * Everything is counted in bytes on the wire (wire_bytes). */
struct bucket {
	__u64 rate;    /* bytes per second; 0 means this direction is not limited */
	__u64 burst;   /* bytes the bucket holds when full */
	__s64 tokens;  /* bytes; below zero is debt left by an skb larger than the burst */
	__u64 last_ns; /* bpf_ktime_get_ns() of the last refill */
	__u64 passed_bytes;
	__u64 passed_packets;
	__u64 dropped_bytes;
	__u64 dropped_packets;
	__u64 marked_bytes;
	__u64 marked_packets;
};

/* Classification windows a counted flow stays counted for (see
 * classify_flow). */
#define COUNTED_WINDOWS 8

/* How many flows of one direction take a share of its rate: `counted[i]`
 * holds the flows last counted in the window w with w % COUNTED_WINDOWS
 * == i, for the last COUNTED_WINDOWS windows, so their sum counts each
 * flow counted in that time once. `seen_*` count the flows that moved data
 * at all in this window and the one before. Updated lock-free. */
struct flow_counts {
	__u64 window;
	__s32 counted[COUNTED_WINDOWS];
	__u32 seen_now;
	__u32 seen_before;
};

/* The state of one shaped interface of one pod: one per CNI attachment,
 * in the iface_state hash map under {pod cgroup id, ifindex in the pod's
 * netns}. Written by ADD (limits), updated by the programs (tokens,
 * counters). */
struct iface_state {
	struct bpf_spin_lock lock;
	__u32 layout; /* STATE_LAYOUT, written by user space */
	__u32 flags;  /* IFACE_* */
	__u32 host_ifindex; /* the pod's host-side peer, in the node's netns; 0 if none */
	struct flow_counts senders;
	struct flow_counts receivers;
	struct bucket ingress;
	struct bucket egress;
};

/* Ingress is shaped by a queue on the host side of the pod's veth (set up by
 * ADD): shape_ingress only counts, and pace_tcp sizes receive windows so
 * that senders keep a short, steady queue there. */
#define IFACE_INGRESS_QUEUED 1
/* The operator traded latency for CPU (`ingressTradeoff: "cpu"`): receive
 * windows hold RWND_FAST_QUEUE_US of queue at every rate, not only from
 * RWND_FAST_MIN_RATE on (rwnd_for). */
#define IFACE_INGRESS_LOW_CPU 2
/* The upper half of `flags` holds the interface's MTU (ADD writes it; 0:
 * unknown), so that the cgroup hooks charge a datagram the IP layer
 * fragments as its fragments (cgroup_wire_bytes). In flags rather than a
 * field of its own: the layout stays that of STATE_LAYOUT 3. */
#define IFACE_MTU_SHIFT 16

_Static_assert(sizeof(struct iface_state) == 272, "struct iface_state must match src/state.rs");

struct iface_key {
	__u64 cgroup_id; /* the pod cgroup the programs are attached to */
	__u32 ifindex;   /* the interface, in the pod's netns */
	__u32 pad;
};

/* Per-pod cgroup storage (one value per pod cgroup, shared by every program
 * attached to it): which cgroup this is, so that programs running for any
 * process in the pod (containers sit in child cgroups) find the pod's
 * interfaces. */
struct pod_state {
	__u64 cgroup_id;
	__u32 layout;
	/* The pod's one shaped interface, when it has exactly one (0: none,
	 * or several, or a pod attached by a release before this field): what
	 * the pod sends through a device it made (a tunnel) is charged to it,
	 * in the same layout (this was padding). */
	__u32 sole_ifindex;
};

/* The outer enforcement point of a pod's egress: every frame the pod's
 * interface emits, charged on the host side of its veth, out of the pod's
 * reach. Keyed by that host-side ifindex. */
struct host_guard {
	struct bpf_spin_lock lock;
	__u32 pad;
	__u64 cgroup_id; /* the pod, for people reading the map */
	struct bucket egress;
};

_Static_assert(sizeof(struct host_guard) == 96, "struct host_guard must match src/state.rs");

/* The door of a pod's ingress queue (the TBF on an ifb in its netns),
 * keyed by its filter's classid: where the queue is, and a model of its
 * TBF (the same rate and burst; tokens below zero are bytes queued, down
 * to -limit) that decides for whole IP datagrams. TBF drops whatever
 * arrives when it is full, so at a sustained 2x it drops one fragment of
 * nearly every fragmented datagram, and each is lost whole (8000-byte UDP
 * at 2x: nothing delivered). The door turns a datagram away at its first
 * fragment while the queue is over half full, so the rest always fits, and
 * drops the later fragments of a datagram it turned away. */
struct queue_gate {
	struct bpf_spin_lock lock;
	__u32 ifb;       /* the ifb's index in the pod's netns */
	__u64 cgroup_id; /* the pod, for people reading the map */
	__u64 limit;     /* bytes the TBF queues */
	struct bucket queue;
};

_Static_assert(sizeof(struct queue_gate) == 104, "struct queue_gate must match src/state.rs");

/* The state of interface `ifindex` of the pod cgroup `cgroup_id`, if it
 * is shaped: looked up in `map` (iface_state; the test harness's own). */
static __always_inline struct iface_state *lookup_iface(void *map, __u64 cgroup_id, __u32 ifindex)
{
	struct iface_key key = { .cgroup_id = cgroup_id, .ifindex = ifindex };

	if (!cgroup_id)
		return NULL;
	return bpf_map_lookup_elem(map, &key);
}

/* ---- Bytes on the wire ---------------------------------------------------
 *
 * A limit counts what tc's TBF, the reference plugin and Calico count: every
 * frame's Ethernet, IP (with extension headers) and L4 headers plus its
 * payload. A GSO/GRO skb is gso_segs frames, each with its own headers.
 */

static __always_inline __u8 load_u8(struct __sk_buff *skb, __u32 off)
{
	__u8 v = 0;

	bpf_skb_load_bytes(skb, off, &v, 1);
	return v;
}

/* IPv6 extension headers walked before giving up on finding L4. */
#define MAX_IPV6_EXT_HEADERS 6

/* The IP and L4 header length of the packet whose network header is at
 * `off`, or 0 if it is neither IPv4 nor IPv6. */
static __always_inline __u32 l3l4_header_len(struct __sk_buff *skb, __u32 off)
{
	__u32 len;
	__u8 proto;
	int i;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		len = (load_u8(skb, off) & 0xf) * 4;
		proto = load_u8(skb, off + 9);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		len = 40;
		proto = load_u8(skb, off + 6);
		for (i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
			if (proto == 0 || proto == 43 || proto == 60) {
				/* hop-by-hop, routing, destination options: 8-byte units */
				__u8 hdr_len = load_u8(skb, off + len + 1);

				proto = load_u8(skb, off + len);
				len += ((__u32)hdr_len + 1) * 8;
			} else if (proto == 44) {
				/* fragment: fixed 8 bytes */
				proto = load_u8(skb, off + len);
				len += 8;
			} else if (proto == 51) {
				/* authentication: 4-byte units, less 2 */
				__u8 hdr_len = load_u8(skb, off + len + 1);

				proto = load_u8(skb, off + len);
				len += ((__u32)hdr_len + 2) * 4;
			} else {
				break;
			}
			len &= 0xffff;
		}
	} else {
		return 0;
	}
	if (proto == IPPROTO_TCP_)
		return len + (load_u8(skb, off + len + 12) >> 4) * 4;
	if (proto == IPPROTO_UDP_)
		return len + 8;
	return len;
}

/*
 * The bytes `skb` puts on the wire. `l2_in_skb`: the skb starts at its
 * Ethernet header (tc), or at its network header (cgroup hooks, where the
 * link layer is added later and is charged ETH_HLEN per frame).
 */
static __always_inline __u64 wire_bytes(struct __sk_buff *skb, bool l2_in_skb)
{
	__u32 l3_off = l2_in_skb ? ETH_HLEN : 0;
	__u64 len = skb->len + (l2_in_skb ? 0 : ETH_HLEN);
	__u32 segs = skb->gso_segs, hdr;

	if (skb->gso_size == 0 || skb->len <= l3_off)
		return len;
	hdr = l3l4_header_len(skb, l3_off);
	if (hdr == 0 || hdr >= skb->len - l3_off) {
		/* Not IP, or headers we cannot read: every segment's headers
		 * are at least what is left when all but the headers are
		 * full segments. */
		__u64 payload_max = (__u64)(segs ? segs : 1) * skb->gso_size;

		hdr = skb->len - l3_off > payload_max ? (__u32)(skb->len - l3_off - payload_max) : 28;
	}
	/* An encapsulated GSO skb (a UDP tunnel's, such as VXLAN): every
	 * segment repeats the outer and the inner headers, more than the outer
	 * ones parsed above. All but the last segment carry gso_size bytes, so
	 * what the payload leaves over is at least the real headers, and
	 * exactly them when the last segment is full too. */
	if (segs && (__u64)segs * skb->gso_size < skb->len - l3_off) {
		__u32 implied = skb->len - l3_off - segs * skb->gso_size;

		if (implied > hdr)
			hdr = implied;
	}
	/* A sender's GSO packet (a raw socket's virtio header) may not
	 * have counted its segments yet. */
	if (segs == 0)
		segs = (skb->len - l3_off - hdr + skb->gso_size - 1) / skb->gso_size;
	if (segs <= 1)
		return len;
	return len + (__u64)(segs - 1) * (hdr + ETH_HLEN);
}

/*
 * The bytes an skb seen by a cgroup hook puts on the wire. Those hooks see
 * an IP datagram whole, before fragmentation on the way out and after
 * reassembly on the way in; the wire, the ingress queue and the host-side
 * guard see every fragment with its own Ethernet and IP headers (and, for
 * IPv6, a fragment header). Charging the datagram once, the pod's hooks
 * would pass ~2% more than the outer layers allow, and the outer ones would
 * drop one fragment of nearly every datagram, losing it whole: 8000-byte
 * UDP at 2x the limit delivered 0.08 of it. `mtu` is the interface's (0:
 * unknown, charge the datagram as one frame).
 */
static __always_inline __u64 cgroup_wire_bytes(struct __sk_buff *skb, __u32 mtu)
{
	__u64 wire = wire_bytes(skb, false);
	__u32 hdr, frag_hdr, chunk, payload, frags;

	if (mtu == 0 || skb->gso_size || skb->len <= mtu)
		return wire;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		/* Every fragment repeats the IP header. */
		hdr = (load_u8(skb, 0) & 0xf) * 4;
		frag_hdr = hdr;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		/* The fixed header plus a fragment header each. */
		hdr = 40;
		frag_hdr = 48;
	} else {
		return wire;
	}
	if (mtu <= frag_hdr + 8 || skb->len <= hdr)
		return wire;
	/* Fragment payloads are multiples of 8 bytes, but for the last. */
	chunk = (mtu - frag_hdr) & ~7U;
	payload = skb->len - hdr;
	frags = (payload + chunk - 1) / chunk;
	if (frags <= 1)
		return wire;
	return (__u64)frags * (ETH_HLEN + frag_hdr) + payload;
}

static __always_inline __u32 iface_mtu(const struct iface_state *iface)
{
	return iface->flags >> IFACE_MTU_SHIFT;
}

/* ---- Token buckets ------------------------------------------------------ */

enum take_result {
	TAKE_CONFORM,      /* within the rate */
	TAKE_CONFORM_LOW,  /* within the rate, but the bucket is running low */
	TAKE_BORROW,       /* over the rate, passed on credit (egress TCP only) */
	TAKE_EXCEED,       /* over the rate */
};

/* Tokens the bucket would hold at `now` after a refill, without writing:
 * readers outside the lock (the pacing decision) need the level the next
 * packet will see, not the one the last packet left, which is stale after
 * an idle period. */
static __always_inline __s64 bucket_level(const struct bucket *b, __u64 now)
{
	__u64 elapsed, add;
	__s64 tokens;

	/* Another CPU may have refilled with a slightly later timestamp. */
	if (now <= b->last_ns)
		return b->tokens;
	elapsed = now - b->last_ns;
	if (elapsed > MAX_REFILL_NS)
		elapsed = MAX_REFILL_NS;
	/* Split into whole seconds and the rest so that rate * ns stays in u64. */
	add = (elapsed / NSEC_PER_SEC) * b->rate +
	      (elapsed % NSEC_PER_SEC) * b->rate / NSEC_PER_SEC;
	tokens = b->tokens + (__s64)add;
	if (tokens > (__s64)b->burst)
		tokens = (__s64)b->burst;
	return tokens;
}

/*
 * Refills the bucket up to `now`. Whole bytes are credited; the time of the
 * fraction left over stays owed (last_ns advances by the time the credited
 * bytes took), or a sender refilling every few hundred ns would see every
 * refill round down to nothing and get a fraction of its rate.
 */
static __always_inline void bucket_refill(struct bucket *b, __u64 now)
{
	__u64 elapsed, add;
	__s64 tokens;

	if (now <= b->last_ns)
		return;
	elapsed = now - b->last_ns;
	if (elapsed >= NSEC_PER_SEC || b->rate == 0) {
		b->tokens = bucket_level(b, now);
		b->last_ns = now;
		return;
	}
	/* elapsed < 1 s and rate <= 1.4e10 B/s: the product fits in u64. */
	add = elapsed * b->rate / NSEC_PER_SEC;
	tokens = b->tokens + (__s64)add;
	if (tokens >= (__s64)b->burst) {
		b->tokens = (__s64)b->burst;
		b->last_ns = now;
		return;
	}
	b->tokens = tokens;
	b->last_ns += add * NSEC_PER_SEC / b->rate;
}

/*
 * Takes len bytes from the bucket if they conform. A GSO/GRO skb can be far
 * larger than the burst; a full bucket lets it through and carries the excess
 * as debt, so the long-run rate stays exact and no skb size is refused forever.
 * Must be called with the owner's lock held.
 */
static __always_inline enum take_result bucket_take(struct bucket *b, __u64 len, __u64 now,
						     bool may_borrow)
{
	bucket_refill(b, now);
	if (b->tokens >= (__s64)len || b->tokens >= (__s64)b->burst) {
		b->tokens -= (__s64)len;
		b->passed_bytes += len;
		b->passed_packets++;
		if (b->tokens < (__s64)(b->burst / MARK_DIVISOR))
			return TAKE_CONFORM_LOW;
		return TAKE_CONFORM;
	}
	/* Credit down to minus one burst: the debt is repaid before anything
	 * else passes, so the long-run rate holds. */
	if (may_borrow && b->tokens - (__s64)len >= -(__s64)b->burst) {
		b->tokens -= (__s64)len;
		b->passed_bytes += len;
		b->passed_packets++;
		return TAKE_BORROW;
	}
	b->dropped_bytes += len;
	b->dropped_packets++;
	return TAKE_EXCEED;
}

static __always_inline void bucket_count_passed(struct bucket *b, __u64 len)
{
	__sync_fetch_and_add(&b->passed_bytes, len);
	__sync_fetch_and_add(&b->passed_packets, 1);
}

/* Marks an ECN-capable packet CE and counts it; other packets pass unmarked. */
static __always_inline void mark_congestion(struct __sk_buff *skb, struct bucket *b, __u64 len)
{
	if (bpf_skb_ecn_set_ce(skb)) {
		__sync_fetch_and_add(&b->marked_bytes, len);
		__sync_fetch_and_add(&b->marked_packets, 1);
	}
}

/* ---- The pod's own hooks: cgroup_skb -------------------------------------- */

/*
 * Egress (pod -> world). TCP is paced per socket by the sock_ops program, so
 * this bucket is the backstop for UDP and for the pod's aggregate. Refused
 * skbs are dropped with congestion notification.
 *
 * A TCP skb over the rate is passed on credit (CE-marked if its flow is
 * ECN-capable, else a plain pass: pacing, not CWR, is what keeps TCP at its
 * share) rather than dropped: a TCP sender whose skb is refused while nothing is in
 * flight waits for its probe timer (200 ms or more) before trying again,
 * which cost 12-20% of the rate with 8 flows. Beyond one burst of debt, TCP
 * is dropped too. A light UDP flow (one not counted among the senders: a
 * DNS query, a heartbeat) borrows the same way (`may_borrow`): paced TCP
 * keeps the bucket near empty by design, and without credit half of a
 * pod's 64-byte queries every 20 ms were dropped beside its own upload.
 * A UDP flow that moves enough to be counted takes its share instead, and
 * never borrows.
 */
static __always_inline int shape_egress(struct iface_state *iface, struct __sk_buff *skb, __u64 now,
					bool tcp, bool may_borrow, __u64 wire)
{
	enum take_result res;

	if (iface->egress.rate == 0) {
		bucket_count_passed(&iface->egress, wire);
		return SKB_PASS;
	}
	bpf_spin_lock(&iface->lock);
	res = bucket_take(&iface->egress, wire, now, may_borrow);
	bpf_spin_unlock(&iface->lock);
	switch (res) {
	case TAKE_EXCEED:
		return SKB_DROP_CN;
	case TAKE_BORROW:
		/* In debt: an ECN-capable TCP flow is told to slow down. */
		mark_congestion(skb, &iface->egress, wire);
		return SKB_PASS;
	case TAKE_CONFORM_LOW:
		/* Paced TCP runs the bucket between empty and half full by
		 * design (see pace_tcp), so only UDP is marked here. */
		if (!tcp)
			mark_congestion(skb, &iface->egress, wire);
		return SKB_PASS;
	default:
		return SKB_PASS;
	}
}

/*
 * Hands the ingress queue door's model of its TBF (struct queue_gate) to
 * the pod's interface state, where sock_ops reads it (rwnd_for): its level
 * is what is left of the burst once the queue is counted, negative while
 * frames wait. The door sees every frame on its way into the queue. The
 * cgroup hook, which mirrored the bucket before, sees only what reaches a
 * socket: what a closed socket's queue still held, and whatever else passed
 * the TBF without reaching one, drained the TBF and never the mirror. Back
 * to back downloads at 1G ratcheted the mirror up to its 31 MB burst, the
 * windows grew by an eighth of it each, and the queue grew to 150 ms (8
 * CUBIC flows: Jain 0.78-0.87). Plain stores, outside the interface's
 * lock: a reader that sees one field before the other is off for one
 * window, and the next frame writes both again.
 */
static __always_inline void share_queue_level(struct iface_state *iface, __s64 tokens, __u64 last_ns)
{
	iface->ingress.tokens = tokens;
	iface->ingress.last_ns = last_ns;
}

/*
 * Ingress (world -> pod). Where ADD could put a queue in front of the pod
 * (IFACE_INGRESS_QUEUED), that queue shapes and this only counts (its
 * door keeps the bucket: share_queue_level). Elsewhere it is a policer: nothing
 * can be queued here, so excess is dropped; ECN-capable flows are marked
 * while the bucket runs low, so they slow down before they lose packets.
 */
static __always_inline int shape_ingress(struct iface_state *iface, struct __sk_buff *skb, __u64 now,
					 __u64 wire)
{
	enum take_result res;

	if (iface->ingress.rate == 0) {
		bucket_count_passed(&iface->ingress, wire);
		return SKB_PASS;
	}
	if (iface->flags & IFACE_INGRESS_QUEUED) {
		bucket_count_passed(&iface->ingress, wire);
		return SKB_PASS;
	}
	bpf_spin_lock(&iface->lock);
	res = bucket_take(&iface->ingress, wire, now, false);
	bpf_spin_unlock(&iface->lock);
	if (res == TAKE_EXCEED)
		return SKB_DROP;
	if (res == TAKE_CONFORM_LOW)
		mark_congestion(skb, &iface->ingress, wire);
	return SKB_PASS;
}

/* ---- The ingress queue's door ------------------------------------------- */

enum fragment {
	NOT_A_FRAGMENT,
	FIRST_FRAGMENT,
	LATER_FRAGMENT,
};

/*
 * Whether `len` more wire bytes may go into the queue at `now`. A frame
 * limited to the lower `half` (a datagram's first fragment, a heavy flow
 * that is not TCP) only while the queue holds at most half its limit;
 * every other frame is admitted and charged to the model, whatever the
 * model's count of bytes queued: the TBF's child holds up to its limit in
 * packets, and a GRO skb is one packet of up to 64 KB, so the queue can
 * hold more bytes than its limit. Leaving such frames uncharged (as if the
 * TBF dropped them) left the model above the TBF's bucket for good, which
 * lent senders windows the queue could not pass (share_queue_level). Must
 * be called with the gate's lock held.
 */
static __always_inline bool queue_admit(struct queue_gate *q, __u64 len, __u64 now, bool half)
{
	struct bucket *b = &q->queue;
	__u64 queued;

	bucket_refill(b, now);
	queued = b->tokens < 0 ? (__u64)(-b->tokens) : 0;
	if (half && queued > q->limit / 2) {
		b->dropped_bytes += len;
		b->dropped_packets++;
		return false;
	}
	b->tokens -= (__s64)len;
	b->passed_bytes += len;
	b->passed_packets++;
	return true;
}

/*
 * Whether a frame with no payload (a bare TCP segment: an ACK of the pod's
 * upload, a handshake) may skip the queue at `now`: only while the model's
 * bucket is within an eighth of full, so the TBF would pass it at once too.
 * It is charged to the model, which the TBF never sees: the wire may then
 * carry up to an eighth of the burst more than rate x t + burst, and no
 * more, since any more drains the model below that mark and every frame
 * queues again. Each frame through the ifb costs the node a tasklet and a
 * second trip through the receive path; a pod's upload sends it an ACK for
 * every two segments. Must be called with the gate's lock held.
 */
static __always_inline bool queue_bypass(struct queue_gate *q, __u64 len, __u64 now)
{
	struct bucket *b = &q->queue;

	bucket_refill(b, now);
	if (b->tokens < (__s64)(b->burst - b->burst / 8))
		return false;
	b->tokens -= (__s64)len;
	b->passed_bytes += len;
	b->passed_packets++;
	/* Counted apart too: the queue's bypass, seen in `stats`. */
	b->marked_bytes += len;
	b->marked_packets++;
	return true;
}

/* ---- The host side: the pod's egress, out of the pod's reach -------------- */

/*
 * Charges a frame the pod emitted, as it arrives on the host side of its
 * veth (tc ingress there), to the pod's egress limit. Everything the pod
 * sends passes here, whatever way it took out of the pod (AF_PACKET, AF_XDP,
 * compat syscalls, sub-interfaces, tunnels). Its bucket holds more than
 * the pod's own hooks can let through beyond the rate (ADD sizes it:
 * src/state.rs), so traffic those hooks shaped never meets it; it drops
 * only what went around them.
 */
static __always_inline int guard_egress(struct host_guard *guard, struct __sk_buff *skb, __u64 now)
{
	__u64 wire = wire_bytes(skb, true);
	enum take_result res;

	bpf_spin_lock(&guard->lock);
	res = bucket_take(&guard->egress, wire, now, false);
	bpf_spin_unlock(&guard->lock);
	return res == TAKE_EXCEED ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}

/* ---- Which flows take a share of the rate --------------------------------
 *
 * Both directions split their rate among the flows that want it. A flow is
 * counted in a window of 2^FLOW_WINDOW_SHIFT ns (~67 ms) once it has moved
 * its threshold there: the lesser of LIGHT_FLOW_BYTES and half an even
 * share among every flow seen; a flow counted in the window before that
 * moved its threshold there is counted from its first skb. It then stays
 * counted for COUNTED_WINDOWS windows (~537 ms): at in-cluster RTTs TCP
 * builds 64 KB skbs whatever its pacing rate, so a flow holding a small
 * share moves data only every few hundred ms. So a request and its
 * response, a keep-alive pool or a health check (light flows) never take a
 * share from a bulk transfer, and a light flow that starts to want more is
 * counted within its threshold.
 */
#define FLOW_WINDOW_SHIFT 26
#define LIGHT_FLOW_BYTES (32 * 1024)

/* What the classification remembers about one direction of one socket. */
struct flow_class {
	__u64 window;         /* the window the bytes below are for */
	__u64 bytes;          /* bytes on the wire in that window */
	__u64 counted_window; /* the window it was last counted in; 0: never */
};

static __always_inline __u32 max_u32(__u32 a, __u32 b)
{
	return a > b ? a : b;
}

/* The flows counted in the last COUNTED_WINDOWS windows. */
static __always_inline __u32 counted_flows(const struct flow_counts *c)
{
	__s32 sum = 0;
	int i;

	for (i = 0; i < COUNTED_WINDOWS; i++)
		sum += c->counted[i];
	return sum > 0 ? (__u32)sum : 0;
}

/* Whether a flow is counted at `now`. */
static __always_inline bool is_counted(const struct flow_class *f, __u64 now)
{
	return f->counted_window && (now >> FLOW_WINDOW_SHIFT) - f->counted_window < COUNTED_WINDOWS;
}

/*
 * A flow's share of `rate` (bytes/s): an even split among the counted
 * flows, or, for a flow not counted, as if it were one more: it uses less by
 * definition, and should it want more it is counted within its threshold.
 */
static __always_inline __u64 flow_share(const struct flow_counts *c, __u64 rate, bool counted)
{
	__u32 flows = counted_flows(c);

	if (!counted || flows == 0)
		flows++;
	return rate / flows;
}

/* Bytes a flow must move in a window to be counted in it. */
static __always_inline __u64 count_threshold(const struct flow_counts *c, __u64 rate)
{
	__u32 seen = max_u32(max_u32(c->seen_now, c->seen_before), 1);
	__u64 half_share = ((rate / seen) << FLOW_WINDOW_SHIFT) / NSEC_PER_SEC / 2;

	return half_share < LIGHT_FLOW_BYTES ? half_share : LIGHT_FLOW_BYTES;
}

/*
 * Starts window `window` if the counts are behind it: the flows last
 * counted COUNTED_WINDOWS windows ago (or more) are no longer counted, and
 * "seen" moves on. Lock-free: a compare-and-swap elects one CPU to roll
 * over; a lost race miscounts a flow for a window, which the buckets absorb.
 */
static __always_inline void roll_window(struct flow_counts *c, __u64 window)
{
	__u64 seen = c->window, w;
	int i;

	if (seen == window || __sync_val_compare_and_swap(&c->window, seen, window) != seen)
		return;
	for (i = 1; i <= COUNTED_WINDOWS; i++) {
		w = seen + i;
		if (w > window)
			break;
		c->counted[w % COUNTED_WINDOWS] = 0;
	}
	c->seen_before = seen + 1 == window ? c->seen_now : 0;
	c->seen_now = 0;
}

/* Counts a flow in `window`, moving it from the window it was last counted in. */
static __always_inline void count_flow(struct flow_counts *c, struct flow_class *f, __u64 window)
{
	if (f->counted_window && window - f->counted_window < COUNTED_WINDOWS)
		__sync_fetch_and_add(&c->counted[f->counted_window % COUNTED_WINDOWS], -1);
	__sync_fetch_and_add(&c->counted[window % COUNTED_WINDOWS], 1);
	f->counted_window = window;
}

/* Classifies one flow as its data skb of `len` wire bytes moves at `now`. */
static __always_inline void classify_flow(struct flow_counts *c, struct flow_class *f, __u64 rate, __u64 now,
					  __u64 len)
{
	__u64 window = now >> FLOW_WINDOW_SHIFT;

	roll_window(c, window);
	if (f->window != window) {
		bool carried = f->counted_window == f->window && f->window + 1 == window &&
			       f->bytes >= count_threshold(c, rate);

		f->window = window;
		f->bytes = 0;
		__sync_fetch_and_add(&c->seen_now, 1);
		if (carried)
			count_flow(c, f, window);
	}
	f->bytes += len;
	if (f->counted_window != window && f->bytes >= count_threshold(c, rate))
		count_flow(c, f, window);
}

/* ---- Light flows in the ingress queue --------------------------------------
 *
 * What the queue's door (queue_pod_ingress) remembers of one flow toward
 * the pod, by its 5-tuple.
 */
struct queued_flow {
	__u64 window;          /* the window `bytes` is for */
	__u32 bytes;           /* bytes of the flow queued in it */
	__u32 prev_bytes;      /* in the window before */
	__u32 prev_prev_bytes; /* and in the one before that */
	__u32 heavy;           /* 1 from when it is found heavy until an idle window */
};

/*
 * Counts `len` bytes of a flow toward the pod in `window`, and says whether
 * the flow is light (its frames go to the queue's first band). A flow is
 * heavy once it moves more than LIGHT_FLOW_BYTES in a window, or moves in
 * three windows in a row (~134-200 ms); a response, a handshake or a health
 * check moves less, in one or two windows after an idle one.
 *
 * The second test is what tells a bulk flow holding a small share from a
 * response: 8 downloads into a 10M pod move ~10 kB a window each, less than
 * a 16 KB response, and all 8 went to the first band. They carried the
 * pod's whole rate there, and the frames of a flow that had once moved more
 * waited in the other band until the downloads ended (150-500 kB stuck).
 * A threshold on bytes (half an even share) does not tell them apart
 * either: a download that a UDP flood held to 1 Mbit/s moved less than it,
 * and took the first band from the responses beside it.
 *
 * A heavy flow stays heavy until it has been idle for HEAVY_IDLE_WINDOWS
 * whole windows (134-200 ms), when nothing of it can still be queued: a
 * flow moving back to the first band overtakes its own frames in the
 * other, and its sender resends them (the same downloads, moving between
 * bands: 5-9% of segments resent). One idle window is not enough: a
 * download behind a UDP flood in the other band waits ~100 ms a round trip
 * at 10M, moved nothing in some windows, came back light, and took the
 * first band's share from the responses beside it (p99 146 ms).
 */
#define HEAVY_IDLE_WINDOWS 2
static __always_inline bool light_in_queue(struct queued_flow *f, __u64 window, __u64 len)
{
	if (f->window != window) {
		if (window - f->window > HEAVY_IDLE_WINDOWS)
			f->heavy = 0;
		f->prev_prev_bytes = f->window + 1 == window ? f->prev_bytes : f->window + 2 == window ? f->bytes : 0;
		f->prev_bytes = f->window + 1 == window ? f->bytes : 0;
		f->bytes = 0;
		f->window = window;
	}
	__sync_fetch_and_add(&f->bytes, len);
	if (f->bytes > LIGHT_FLOW_BYTES || f->prev_bytes > LIGHT_FLOW_BYTES || (f->prev_bytes && f->prev_prev_bytes))
		f->heavy = 1;
	return !f->heavy;
}

/*
 * The first band's share of a pod's queue: light frames may take at most
 * 1/LIGHT_BAND_SHARE of what the queue passes in a window; beyond that,
 * they wait in the other band like any frame. The first band is served
 * whenever it holds a frame, and a flow in it waits for no one: with a
 * window of 2 segments and no queue to wait in, one download that was
 * light for a moment (a new one, or one just back from an idle window)
 * took a 10M pod's whole rate. The flows in the other band stalled for a
 * window, came back light in turn, and their senders resent what had
 * waited (8 BBR downloads: 5.2% of segments resent). Per pod, per window.
 */
#define LIGHT_BAND_SHARE 2

struct light_window {
	__u64 window; /* the window `bytes` is for */
	__u64 bytes;  /* light frames' bytes let into the first band in it */
};

/* Whether `len` more bytes of light frames fit in the first band's share
 * of `window`, at the queue's `rate` (bytes/s); counts them. */
static __always_inline bool light_band_has_room(struct light_window *w, __u64 window, __u64 len, __u64 rate)
{
	__u64 share = ((rate << FLOW_WINDOW_SHIFT) / NSEC_PER_SEC) / LIGHT_BAND_SHARE;

	if (w->window != window) {
		w->window = window;
		w->bytes = 0;
	}
	return __sync_add_and_fetch(&w->bytes, len) <= share;
}

/* ---- Egress TCP pacing (sock_ops) ------------------------------------------ */

/* SO_MAX_PACING_RATE's "no limit". */
#define UNPACED 0xffffffffULL

/* Ethernet, IP and TCP (with timestamps) headers around each segment of
 * mss_cache payload bytes: TCP paces payload, the limit counts frames. */
static __always_inline __u32 frame_overhead(bool ipv6)
{
	return ETH_HLEN + (ipv6 ? 40 : 20) + 32;
}

/* Payload bytes/s that put `wire_rate` bytes/s of full-sized frames on the wire. */
static __always_inline __u64 payload_rate(__u64 wire_rate, __u32 mss, bool ipv6)
{
	if (mss == 0)
		return wire_rate;
	return wire_rate * mss / (mss + frame_overhead(ipv6));
}

/*
 * Shares shrink when the egress bucket is in debt: from the full share at
 * a quarter of a burst owed to 1/8 of it at one burst, so the aggregate
 * settles where the debt pays for what light senders, small segments and
 * UDP use, leaving most of the burst for light senders to borrow. Within
 * a quarter of a burst, shares stay exact: the level swings by whole skbs,
 * and the gap TCP leaves after one is fixed by the rate it left at;
 * following every swing made flows wait out gaps set in a passing dip
 * (8 flows at 10M: 0.79-0.88 of the rate, with 64 KB skbs; see
 * cwnd_clamp). Fractions are in 1/1024.
 */
#define DEBT_MIN_FRACTION 128

/* While tokens are left, sockets are paced a quarter above their share:
 * BBR cycles its own pacing 25% above and below its estimate, and a cap at
 * the share alone cut it to 0.90-0.94 of it. In debt, exactly the share,
 * so the first second after idle stays within rate x 1 s + burst. */
#define PACING_HEADROOM 4

/* The longest gap repaying debt may leave after one skb (see pacing_rate). */
#define MAX_PACING_GAP_NS (100ULL * 1000 * 1000)

static __always_inline __u64 repay_debt(__u64 share, __s64 level, __u64 burst)
{
	__u64 owed, free, fraction;

	if (level >= 0 || burst == 0)
		return share;
	owed = (__u64)(-level);
	free = burst / 4;
	if (owed <= free)
		return share;
	if (owed >= burst)
		return share * DEBT_MIN_FRACTION >> 10;
	/* 1024 at a quarter of a burst owed, DEBT_MIN_FRACTION at a whole one */
	fraction = 1024 - (owed - free) * (1024 - DEBT_MIN_FRACTION) / (burst - free);
	return share * fraction >> 10;
}

/*
 * The pacing rate a sending socket should have now (payload bytes/s, or
 * UNPACED), given the one it has, whether it is counted among the senders,
 * its segment size, and the payload it is about to send (0 when called for
 * an ACK). The burst is honoured as a token bucket promises: while the
 * interface's egress bucket is at least 3/4 full, sockets send at full
 * speed; below 1/4 they are paced at their share (a quarter more while
 * tokens are left, for senders that cycle around their estimate, as BBR
 * does); in between they keep their mode (hysteresis, so a pod at its rate
 * does not flap).
 */
static __always_inline __u64 pacing_rate(const struct iface_state *iface, __u64 now, __u64 current, bool counted,
					 __u32 mss, bool ipv6, __u64 pending)
{
	/* The level after the skb about to leave: the gap TCP leaves after
	 * an skb is set by the rate in force as it leaves. */
	__u64 pending_wire = pending + (mss ? (pending + mss - 1) / mss : 1) * frame_overhead(ipv6);
	__s64 level = bucket_level(&iface->egress, now) - (__s64)(pending ? pending_wire : 0);
	/* BPF has no signed division: quarters of the (unsigned) burst. */
	__s64 quarter = (__s64)(iface->egress.burst / 4);
	__u64 share, fair, floor;

	if (level >= 3 * quarter)
		return UNPACED;
	if (level >= quarter && current == UNPACED)
		return UNPACED;
	/* A light flow (a request, a health check) goes at full speed while
	 * what it is about to send can be borrowed: the counted flows repay it
	 * (repay_debt), so it does not wait behind the pod's own upload. */
	if (!counted && level > -(__s64)iface->egress.burst)
		return UNPACED;
	share = flow_share(&iface->senders, iface->egress.rate, counted);
	if (level > 0)
		share += share / PACING_HEADROOM;
	fair = share;
	share = repay_debt(share, level, iface->egress.burst);
	/* The gap TCP leaves after this skb is its length at the rate in
	 * force as it leaves, and no later change shortens it. So repaying
	 * debt may stretch that gap to MAX_PACING_GAP_NS, and never beyond
	 * what the skb costs at the flow's share: a 64 KB skb that left as
	 * its socket went from unpaced to paced in deep debt, at an eighth of
	 * a 10M pod's share among 8 flows, held that flow for 3.3 s (8 CUBIC
	 * flows at 10M on a LAN: three at 0.2-0.5 Mbit/s, Jain 0.74-0.80, CI). */
	floor = pending ? pending_wire * (NSEC_PER_SEC / MAX_PACING_GAP_NS) : 0;
	if (floor > fair)
		floor = fair;
	if (share < floor)
		share = floor;
	share = payload_rate(share, mss, ipv6);
	return share ? share : 1;
}

/*
 * The congestion window a paced socket may use (segments): twice what its
 * pacing rate moves in a round trip, and a slack more. Pacing, not this
 * clamp, sets its rate; the clamp keeps its skbs small. At in-cluster RTTs
 * TCP builds 64 KB skbs whatever its pacing rate, each one sent at once and
 * paid for by a long gap; a flow with a small share then swings the pod's
 * bucket by whole skbs, into drops (8 BBR flows at 10M: 0.90-0.96 of the
 * rate, ~70 drops in 10 s). A TSO skb never holds more than the window
 * allows. Unpaced sockets (the burst) get a window of their own, below.
 *
 * The slack is the flow's even share of an eighth of the bucket, and at
 * least CWND_MIN_SEGMENTS: skbs that small swing the bucket by little, and
 * no smaller, since every skb costs the node a trip through the stack and a
 * pacing timer. With a fixed 4 segments, 40 pods at 50M uploading at once
 * sent ~6 kB skbs whenever the node was idle enough for a small RTT, and
 * cost up to 2.8x the reference's CPU per Gbit/s (bench, busy node).
 */
#define CWND_MIN_SEGMENTS 4
#define CWND_BURST_SHARE_SHIFT 3
#define CWND_UNCLAMPED 0x7fffffff

static __always_inline __u32 cwnd_clamp(__u64 pacing, __u32 rtt_us, __u32 mss, __u64 burst, __u32 flows, __u64 rate)
{
	__u64 segs, slack;

	if (rtt_us == 0)
		rtt_us = 1000;
	if (mss == 0)
		mss = 1448;
	if (pacing >= UNPACED) {
		/* Unpaced (the burst, or a pod below its rate): room for the whole
		 * burst in one round trip and twice the pod's rate beyond it. Not
		 * unclamped: the clamp is also the socket's ssthresh, and a huge
		 * one restarts slow start, while a lower clamp does not shrink the
		 * window of a socket its pacing holds back. So each unpaced spell
		 * grew cwnd for good (to 734208 segments: 64 KB skbs ever after,
		 * each paid for by a long gap; 8 CUBIC flows at 10M on a LAN got
		 * 0.2-0.5 Mbit/s for three of them, Jain 0.74-0.80, CI).
		 *
		 * That room is shared by the counted senders, not given to each:
		 * 8 unpaced CUBIC flows at 10M on a LAN, each with the whole
		 * room (47 segments), sent 64 KB skbs into a 62.5 kB bucket, were
		 * refused at the hook with nothing in flight, and waited for
		 * their timers (0.860 and 0.949 of the limit, 2 runs in 10). The
		 * senders together keep the whole room, so an unpaced pod can
		 * always send faster than its rate, drain its bucket and be
		 * paced. */
		segs = (burst + 2 * rate * rtt_us / USEC_PER_SEC) / (flows ? flows : 1) / mss;
		if (segs < CWND_MIN_SEGMENTS)
			segs = CWND_MIN_SEGMENTS;
		return segs < CWND_UNCLAMPED ? (__u32)segs : CWND_UNCLAMPED;
	}
	slack = (burst >> CWND_BURST_SHARE_SHIFT) / (flows ? flows : 1) / mss;
	if (slack < CWND_MIN_SEGMENTS)
		slack = CWND_MIN_SEGMENTS;
	segs = slack + 2 * pacing * rtt_us / USEC_PER_SEC / mss;
	return segs < CWND_UNCLAMPED ? (__u32)segs : CWND_UNCLAMPED;
}

/* ---- Ingress receive windows (sock_ops) ------------------------------------
 *
 * A sender is held to a flow's share only by the window the pod's socket
 * advertises: at in-cluster RTTs its congestion window never limits it, and
 * at long RTTs a short queue or a policer would make it lose packets. A
 * window of share x (RTT + RWND_QUEUE_US) keeps the sender at its share
 * with RWND_QUEUE_US of data waiting in the ingress queue (so the queue
 * never runs dry), whatever the path's RTT. The RTT is the connection's
 * minimum (tcp_min_rtt, from its handshake on), which queueing cannot
 * inflate. Under the policer there is no queue to fill: the window is the
 * share for the RTT alone.
 *
 * From RWND_FAST_MIN_RATE on, RWND_FAST_QUEUE_US: the window bounds the
 * sender's skbs, and each skb costs the node its trip through the stack,
 * the ifb and an ACK. 40 pods at 50M downloading at once cost 1.6-1.9x
 * the reference's CPU per Gbit/s with 2 ms (~24 kB skbs), 1.3x with 8 ms
 * (bench, busy node). Light flows leave the queue first, and at 100M
 * responses beside a download kept their p99 (2.5 ms with 2 ms, 2.1-2.6 ms
 * with 8 ms, LAN). Below that rate a response's own frames take long
 * enough that the wait behind a longer queue shows: 16 KB responses beside
 * a 10M download and a UDP flood had p99 24.5 ms with 8 ms (bound 28),
 * 17.7-22.5 ms with 2 ms. So below that rate the longer queue is the
 * operator's choice (IFACE_INGRESS_LOW_CPU): 200 pods at 10M downloading
 * at once saturated a 2-vCPU node with 2 ms and fell to 0.42 of their
 * limit; with 8 ms each held 0.948-0.979.
 */
#define RWND_QUEUE_US 2000
#define RWND_FAST_QUEUE_US 8000
#define RWND_FAST_MIN_RATE (40000000 / 8)
/* The windows of flows not counted, such as a request awaiting its
 * response: a 16 KiB response arrives in one round trip. */
#define RWND_LIGHT_BYTES (16 * 1024)
/* A counted flow's window holds at least this many segments. Two keep a
 * flow moving (the receiver ACKs every second segment at once) and keep
 * the queue short at low rates: with four, a 16 KB response beside a 10M
 * download waited behind 5.8 kB of it (p99 30 ms; with two, see
 * docs/shaping.md). */
#define RWND_MIN_SEGMENTS 2
#define RWND_DEFAULT_RTT_US 1000
#define RWND_MAX_BYTES (1U << 30)

/* The receive window (payload bytes) of a socket receiving on the
 * interface at `now`. With the ingress queued, a flow may also have in
 * flight its share of what is left of the burst: the queue's bucket passes
 * that at the path's speed, so an idle pod gets its burst in one round trip
 * however far the sender is. */
static __always_inline __u32 rwnd_for(const struct iface_state *iface, __u64 now, bool counted, __u32 rtt_us,
				      __u32 mss, bool ipv6)
{
	__u64 share = flow_share(&iface->receivers, iface->ingress.rate, counted);
	__u64 hold_us = rtt_us ? rtt_us : RWND_DEFAULT_RTT_US;
	__u64 w, floor;
	__s64 burst_left;

	if (iface->flags & IFACE_INGRESS_QUEUED)
		hold_us += iface->ingress.rate >= RWND_FAST_MIN_RATE || (iface->flags & IFACE_INGRESS_LOW_CPU) ?
				   RWND_FAST_QUEUE_US :
				   RWND_QUEUE_US;
	w = payload_rate(share, mss, ipv6) * hold_us / USEC_PER_SEC;
	if (iface->flags & IFACE_INGRESS_QUEUED) {
		burst_left = bucket_level(&iface->ingress, now);
		if (burst_left > 0)
			w += flow_share(&iface->receivers, (__u64)burst_left, counted);
	}
	floor = counted ? RWND_MIN_SEGMENTS * (mss ? mss : 1448) : RWND_LIGHT_BYTES;
	if (w < floor)
		w = floor;
	if (w > RWND_MAX_BYTES)
		w = RWND_MAX_BYTES;
	return (__u32)w;
}

#endif
