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
 * marked CE, so ECN senders back off before the bucket empties. */
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
 * to the pod's cgroup (kernel >= 5.9 with a u64 storage key). */
struct pod_state {
	struct bpf_spin_lock lock;
	__u32 layout; /* POD_STATE_LAYOUT, written by user space */
	/* Count of TCP sockets that sent data in the current and the previous
	 * window of 2^SENDER_WINDOW_SHIFT ns; the egress rate is split among them. */
	__u64 window;
	__u32 senders_now;
	__u32 senders_before;
	struct bucket ingress;
	struct bucket egress;
};

#define POD_STATE_LAYOUT 1

enum take_result {
	TAKE_CONFORM,      /* within the rate */
	TAKE_CONFORM_LOW,  /* within the rate, but the bucket is running low */
	TAKE_BORROW,       /* over the rate, passed on credit (egress TCP only) */
	TAKE_EXCEED,       /* over the rate */
};

static __always_inline void bucket_refill(struct bucket *b, __u64 now)
{
	__u64 elapsed, add;
	__s64 tokens;

	/* Another CPU may have refilled with a slightly later timestamp. */
	if (now <= b->last_ns)
		return;
	elapsed = now - b->last_ns;
	b->last_ns = now;
	if (elapsed > MAX_REFILL_NS)
		elapsed = MAX_REFILL_NS;
	/* Split into whole seconds and the rest so that rate * ns stays in u64. */
	add = (elapsed / NSEC_PER_SEC) * b->rate +
	      (elapsed % NSEC_PER_SEC) * b->rate / NSEC_PER_SEC;
	tokens = b->tokens + (__s64)add;
	if (tokens > (__s64)b->burst)
		tokens = (__s64)b->burst;
	b->tokens = tokens;
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
 * A TCP skb over the rate is passed on credit (plain pass, no congestion
 * notification: pacing, not CWR, is what keeps TCP at its share) rather
 * than dropped: a TCP sender whose skb is refused while nothing is in
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
	if (res == TAKE_EXCEED)
		return SKB_DROP_CN;
	if (res == TAKE_BORROW)
		return SKB_PASS;
	if (res == TAKE_CONFORM_LOW)
		mark_congestion(skb, &pod->egress);
	return SKB_PASS;
}

/*
 * Ingress (world -> pod): a policer. Nothing can be queued here, so excess is
 * dropped; ECN-capable flows are marked while the bucket runs low, so they
 * slow down before they lose packets.
 */
static __always_inline int shape_ingress(struct pod_state *pod, struct __sk_buff *skb, __u64 now)
{
	enum take_result res;

	if (!pod || pod->ingress.rate == 0) {
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

#endif
