/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The shaping logic of bpf-ratelimit, shared by the production programs
 * (shaper.bpf.c) and the BPF_PROG_TEST_RUN harness (harness.bpf.c), so that
 * the tests exercise exactly the code that shapes pods.
 *
 * The layout of struct pod_state is mirrored by src/state.rs. Change
 * both together and bump POD_STATE_LAYOUT.
 */
#ifndef BPF_RATELIMIT_SHAPER_H
#define BPF_RATELIMIT_SHAPER_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <stdbool.h>

#ifndef ETH_P_IPV6
#define ETH_P_IPV6 0x86DD
#endif

#define NSEC_PER_SEC 1000000000ULL

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

/* Below 1/MARK_DIVISOR of the burst, conforming ECN-capable packets are
 * marked CE, so ECN senders back off before the bucket empties (ingress, and
 * egress UDP; egress TCP is paced instead, see shape_egress). */
#define MARK_DIVISOR 2

/* A token bucket for one direction of one pod, with its counters. */
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

/* Per-pod state: one cgroup storage value, shared by every program attached
 * to the pod's cgroup (kernel >= 5.9 with a u64 storage key).
 *
 * Fields are only ever appended, so a newer plugin can still read the
 * common prefix of a pod attached by an older one. */
struct pod_state {
	struct bpf_spin_lock lock;
	__u32 layout; /* POD_STATE_LAYOUT, written by user space */
	/* The sender window (2^SENDER_WINDOW_SHIFT ns) the counts below are for,
	 * and the bulk TCP senders counted in it and in the window before: the
	 * egress rate is split among them. */
	__u64 window;
	__u32 senders_now;
	__u32 senders_before;
	struct bucket ingress;
	struct bucket egress;
	/* Layout 2. */
	__u32 ifindex; /* the pod's interface in its netns; 0 shapes every interface */
	__u32 flags;   /* POD_INGRESS_QUEUED */
	/* The receiver window the counts below are for, and the bulk TCP
	 * receivers counted in it and in the window before: the ingress rate is
	 * split among them into receive windows (rwnd_for). */
	__u64 rx_window;
	__u32 receivers_now;
	__u32 receivers_before;
	/* The host-side interface (in the node's netns) that holds the pod's
	 * ingress queue, when POD_INGRESS_QUEUED. */
	__u32 host_ifindex;
	__u32 pad;
};

/* Ingress is shaped by a queue on the host side of the pod's veth (set up by
 * ADD): shape_ingress only counts, and pace_tcp clamps receive windows so
 * that senders stay inside that queue instead of overflowing it. */
#define POD_INGRESS_QUEUED 1

#define POD_STATE_LAYOUT 2

/* src/state.rs mirrors this struct; a size mismatch fails the build here and
 * the layout test there. */
_Static_assert(sizeof(struct pod_state) == 216, "struct pod_state must match src/state.rs");

/* The loopback device has this index in every network namespace. */
#define LOOPBACK_IFINDEX 1

/*
 * Whether an skb crosses the pod's network interface, the only traffic that
 * is shaped and charged: loopback and traffic to the pod's own addresses
 * (a sidecar talking to its app) go through lo and are left alone, as tc on
 * the host's veth would never see them. With no interface recorded, every
 * non-loopback skb counts.
 */
static __always_inline bool crosses_pod_interface(const struct pod_state *pod, const struct __sk_buff *skb)
{
	if (!pod)
		return false;
	if (pod->ifindex)
		return skb->ifindex == pod->ifindex;
	return skb->ifindex != LOOPBACK_IFINDEX;
}

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

static __always_inline void bucket_refill(struct bucket *b, __u64 now)
{
	b->tokens = bucket_level(b, now);
	if (now > b->last_ns)
		b->last_ns = now;
}

/*
 * Takes len bytes from the bucket if they conform. A GSO/GRO skb can be far
 * larger than the burst; a full bucket lets it through and carries the excess
 * as debt, so the long-run rate stays exact and no skb size is refused forever.
 * Must be called with the pod lock held.
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

static __always_inline void bucket_count_unlimited(struct bucket *b, __u64 len)
{
	__sync_fetch_and_add(&b->passed_bytes, len);
	__sync_fetch_and_add(&b->passed_packets, 1);
}

/* Marks an ECN-capable packet CE and counts it; other packets pass unmarked. */
static __always_inline void mark_congestion(struct __sk_buff *skb, struct bucket *b)
{
	if (bpf_skb_ecn_set_ce(skb)) {
		__sync_fetch_and_add(&b->marked_bytes, skb->len);
		__sync_fetch_and_add(&b->marked_packets, 1);
	}
}

/* IPv4 + TCP with timestamps: 52 bytes; IPv6: 72. */
#define TCP4_HEADERS 52
#define TCP6_HEADERS 72

/*
 * What an egress skb costs. TCP paces itself by payload bytes, so a TCP skb
 * is charged its payload (its length less one set of headers) or the paced
 * flows overrun the bucket by the header share: 1.8% with the 2-segment
 * skbs of flows paced at a few Mbit/s, enough to drain it into drops.
 */
static __always_inline __u64 egress_charge(struct __sk_buff *skb, bool tcp)
{
	__u64 headers = skb->protocol == bpf_htons(ETH_P_IPV6) ? TCP6_HEADERS : TCP4_HEADERS;

	if (tcp && skb->len > headers)
		return skb->len - headers;
	return skb->len;
}

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
 * is dropped too.
 */
static __always_inline int shape_egress(struct pod_state *pod, struct __sk_buff *skb, __u64 now,
					bool tcp)
{
	enum take_result res;

	if (!pod || pod->egress.rate == 0) {
		if (pod)
			bucket_count_unlimited(&pod->egress, skb->len);
		return SKB_PASS;
	}
	bpf_spin_lock(&pod->lock);
	res = bucket_take(&pod->egress, egress_charge(skb, tcp), now, tcp);
	bpf_spin_unlock(&pod->lock);
	switch (res) {
	case TAKE_EXCEED:
		return SKB_DROP_CN;
	case TAKE_BORROW:
		/* In debt: an ECN-capable TCP flow is told to slow down. */
		mark_congestion(skb, &pod->egress);
		return SKB_PASS;
	case TAKE_CONFORM_LOW:
		/* Paced TCP runs the bucket between empty and half full by
		 * design (see pace_tcp), so only UDP is marked here. */
		if (!tcp)
			mark_congestion(skb, &pod->egress);
		return SKB_PASS;
	default:
		return SKB_PASS;
	}
}

/*
 * Ingress (world -> pod). Where ADD could put a queue on the host side of
 * the pod's veth (POD_INGRESS_QUEUED), that queue shapes and this only
 * counts. Elsewhere it is a policer: nothing can be queued here, so excess is
 * dropped; ECN-capable flows are marked while the bucket runs low, so they
 * slow down before they lose packets.
 */
static __always_inline int shape_ingress(struct pod_state *pod, struct __sk_buff *skb, __u64 now)
{
	enum take_result res;

	if (!crosses_pod_interface(pod, skb))
		return SKB_PASS;
	if (!pod || pod->ingress.rate == 0 || (pod->flags & POD_INGRESS_QUEUED)) {
		if (pod)
			bucket_count_unlimited(&pod->ingress, skb->len);
		return SKB_PASS;
	}
	bpf_spin_lock(&pod->lock);
	res = bucket_take(&pod->ingress, skb->len, now, false);
	bpf_spin_unlock(&pod->lock);
	if (res == TAKE_EXCEED)
		return SKB_DROP;
	if (res == TAKE_CONFORM_LOW)
		mark_congestion(skb, &pod->ingress);
	return SKB_PASS;
}

/*
 * Egress TCP pacing policy, used by pace_tcp (sock_ops) and by the harness.
 *
 * Senders are counted per window of 2^SENDER_WINDOW_SHIFT ns (~134 ms): long
 * enough that a flow paced at a small share sends at least once per window.
 * At its first data skb in a window a socket is classified from what it sent
 * in its previous window: a bulk sender used at least half of its share, a
 * light one (a keep-alive pool, a health check) less. The rate is split
 * among the bulk senders only, so twenty idle connections no longer take
 * twenty shares from one upload. What light senders and UDP use on top is
 * borrowed from the bucket, and the debt feedback in pacing_rate gives it
 * back (max-min fairness without per-flow rate estimates).
 */
#define SENDER_WINDOW_SHIFT 27

/* SO_MAX_PACING_RATE's "no limit". */
#define UNPACED 0xffffffffULL

static __always_inline __u32 bulk_senders(const struct pod_state *pod)
{
	__u32 senders = pod->senders_now;

	if (pod->senders_before > senders)
		senders = pod->senders_before;
	return senders;
}

/* A bulk sender's share: the rate split among the bulk senders. A light
 * sender is paced as if it were one more bulk sender: it uses less by
 * definition, and should it want more it gets an even share and counts as
 * bulk from its next window on. */
static __always_inline __u64 fair_share(const struct pod_state *pod, bool bulk)
{
	__u32 senders = bulk_senders(pod);

	if (!bulk || senders == 0)
		senders++;
	return pod->egress.rate / senders;
}

/*
 * Whether a socket starting to send in `window` is a bulk sender, given the
 * window it last sent in and the payload it sent there. A socket without
 * history (last_window 0) counts as bulk for its first window; one that was
 * silent for a whole window is light.
 */
static __always_inline bool is_bulk_sender(const struct pod_state *pod, __u64 last_window,
					   __u64 last_bytes, __u64 window)
{
	__u64 share_bytes;

	if (last_window == 0)
		return true;
	if (last_window + 1 != window)
		return false;
	share_bytes = (fair_share(pod, true) << SENDER_WINDOW_SHIFT) / NSEC_PER_SEC;
	return last_bytes * 2 >= share_bytes;
}

/* In debt, shares shrink in proportion (down to 1/8 at one burst of debt),
 * so the aggregate settles where the debt pays for what light senders and
 * UDP use. Fractions are in 1/1024. */
#define DEBT_MIN_FRACTION 128

static __always_inline __u64 repay_debt(__u64 share, __s64 level, __u64 burst)
{
	__u64 owed, fraction;

	if (level >= 0 || burst == 0)
		return share;
	owed = (__u64)(-level);
	if (owed >= burst)
		return share * DEBT_MIN_FRACTION >> 10;
	fraction = ((burst - owed) << 10) / burst;
	if (fraction < DEBT_MIN_FRACTION)
		fraction = DEBT_MIN_FRACTION;
	return share * fraction >> 10;
}

/*
 * The pacing rate a sending socket should have now (bytes/s, or UNPACED),
 * given the one it has, whether it is a bulk sender, and the payload it is
 * about to send (0 when called for an ACK). The burst is
 * honoured as a token bucket promises: while the pod's egress bucket is at
 * least 3/4 full, sockets send at full speed; below 1/4 they are paced at
 * their share; in between they keep their mode (hysteresis, so a pod at its
 * rate does not flap).
 */
static __always_inline __u64 pacing_rate(const struct pod_state *pod, __u64 now, __u64 current, bool bulk,
					 __u64 pending)
{
	/* The level after the skb about to leave (`pending` bytes): the gap
	 * TCP leaves after an skb is set by the rate in force as it leaves. */
	__s64 level = bucket_level(&pod->egress, now) - (__s64)pending;
	/* BPF has no signed division: quarters of the (unsigned) burst. */
	__s64 quarter = (__s64)(pod->egress.burst / 4);
	__u64 share;

	if (level >= 3 * quarter)
		return UNPACED;
	if (level >= quarter && current == UNPACED)
		return UNPACED;
	share = repay_debt(fair_share(pod, bulk), level, pod->egress.burst);
	return share ? share : 1;
}

/*
 * Starts a new sender window if `window` is past the pod's: the count of the
 * window just ended becomes "before" (or zero if it was not the previous one).
 * Lock-free: a compare-and-swap elects one CPU to roll over; a lost race
 * miscounts one window, and the egress bucket is the backstop.
 */
static __always_inline void roll_sender_window(struct pod_state *pod, __u64 window)
{
	__u64 seen = pod->window;

	if (seen == window || __sync_val_compare_and_swap(&pod->window, seen, window) != seen)
		return;
	pod->senders_before = seen + 1 == window ? pod->senders_now : 0;
	pod->senders_now = 0;
}

/*
 * Ingress receive windows (POD_INGRESS_QUEUED only). At in-cluster RTTs a
 * sender's congestion window never limits it, so it overflows any short
 * queue: losses, retransmissions. Clamping the pod's receive window bounds
 * what each sender has in flight, and so what waits in the queue. A bulk
 * receiver (one that received at least half its share in its previous
 * window) gets its share of the rate for RWND_MS; a light or new one, such
 * as a request waiting for its response, gets RWND_LIGHT_BYTES so that a
 * response is not held back by round trips. The queue's limit (ADD) holds
 * the sum.
 */
#define RWND_MS 5
#define RWND_MIN_BYTES (4 * 1448)
#define RWND_LIGHT_BYTES (16 * 1024)

static __always_inline __u32 bulk_receivers(const struct pod_state *pod)
{
	__u32 receivers = pod->receivers_now;

	if (pod->receivers_before > receivers)
		receivers = pod->receivers_before;
	return receivers ? receivers : 1;
}

/* The receive window (bytes) of a socket receiving on the pod's interface. */
static __always_inline __u32 rwnd_for(const struct pod_state *pod, bool bulk)
{
	__u64 w;

	if (!bulk)
		return RWND_LIGHT_BYTES;
	w = pod->ingress.rate / bulk_receivers(pod) * RWND_MS / 1000;
	if (w < RWND_MIN_BYTES)
		w = RWND_MIN_BYTES;
	if (w > (1U << 30))
		w = 1U << 30;
	return (__u32)w;
}

/* Whether a socket starting to receive in `window` is a bulk receiver,
 * given the window it last received in and the bytes it received there. */
static __always_inline bool is_bulk_receiver(const struct pod_state *pod, __u64 last_window,
					     __u64 last_bytes, __u64 window)
{
	__u64 share_bytes;

	if (last_window == 0 || last_window + 1 != window)
		return false;
	share_bytes = ((pod->ingress.rate / bulk_receivers(pod)) << SENDER_WINDOW_SHIFT) / NSEC_PER_SEC;
	return last_bytes * 2 >= share_bytes;
}

static __always_inline void roll_receiver_window(struct pod_state *pod, __u64 window)
{
	__u64 seen = pod->rx_window;

	if (seen == window || __sync_val_compare_and_swap(&pod->rx_window, seen, window) != seen)
		return;
	pod->receivers_before = seen + 1 == window ? pod->receivers_now : 0;
	pod->receivers_now = 0;
}

#endif
