// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The datapath of bpf-ratelimit: three programs attached to a pod's cgroup.
 *
 *   shape_egress   cgroup_skb/egress   token bucket backstop for the pod's sends
 *   shape_ingress  cgroup_skb/ingress  ECN-marking policer for what the pod receives
 *   pace_tcp       sockops             paces each sending TCP socket at its share
 *                                      of the egress rate, so TCP never hits the
 *                                      backstop
 *
 * pace_tcp does not answer BPF_SOCK_OPS_NEEDS_ECN: doing so makes the kernel
 * send the SYN itself ECN-capable, and Linux peers then refuse ECN (measured
 * here: SYN [SEW] answered by a plain SYN-ACK). Flows that negotiate ECN on
 * their own are marked by the policers instead of dropped.
 *
 * One copy is loaded per node and pinned; each pod gets its own attachments,
 * and its limits and counters live in cgroup storage keyed by the pod cgroup.
 */
#include "shaper.h"

#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif

#ifndef SOL_SOCKET
#define SOL_SOCKET 1
#endif
#ifndef SO_MAX_PACING_RATE
#define SO_MAX_PACING_RATE 47
#endif

/* Senders are counted per window of 2^27 ns (about 134 ms), and the larger
 * of this window's and the last window's count is used: long enough that a
 * flow paced at a small share sends at least once per window. */
#define SENDER_WINDOW_SHIFT 27

/* An IPv4 or IPv6 TCP skb longer than this carries data; pure ACKs, even
 * with timestamps and SACK blocks, are shorter. */
#define MIN_DATA_SKB_LEN 128

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_STORAGE);
	__type(key, __u64); /* u64 key: one value per cgroup, shared by all programs */
	__type(value, struct pod_state);
} pod_state SEC(".maps");

/* What the sock_ops program remembers about one TCP socket. */
struct flow_state {
	__u64 window; /* the last sender window this socket was counted in */
	__u64 rate;   /* the pacing rate last set on it, bytes per second */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct flow_state);
} flow_state SEC(".maps");

/*
 * Counts the socket as a sender in the current window the first time it
 * sends data in it. Done here, on the send path, because ACK callbacks
 * (sock_ops RTT_CB) thin out exactly when flows are held back, which made
 * 8 flows count as 2 to 4 and each take too large a share.
 *
 * Lock-free: the pod lock is for the buckets. The window roll-over is a
 * compare-and-swap and counts are atomic adds; a lost race miscounts one
 * window, and the egress bucket is the backstop.
 */
static __always_inline void count_sender(struct __sk_buff *skb, struct bpf_sock *sk,
					 struct pod_state *pod)
{
	struct flow_state *flow;
	__u64 window, seen;

	if (!pod || pod->egress.rate == 0 || skb->len <= MIN_DATA_SKB_LEN)
		return;
	flow = bpf_sk_storage_get(&flow_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!flow)
		return;
	window = bpf_ktime_get_ns() >> SENDER_WINDOW_SHIFT;
	if (flow->window == window)
		return;
	flow->window = window;
	seen = pod->window;
	if (seen != window && __sync_val_compare_and_swap(&pod->window, seen, window) == seen) {
		pod->senders_before = seen + 1 == window ? pod->senders_now : 0;
		pod->senders_now = 0;
	}
	__sync_fetch_and_add(&pod->senders_now, 1);
}

SEC("cgroup_skb/egress")
int shape_egress_prog(struct __sk_buff *skb)
{
	struct pod_state *pod = bpf_get_local_storage(&pod_state, 0);
	struct bpf_sock *sk = skb->sk ? bpf_sk_fullsock(skb->sk) : NULL;
	bool tcp = sk && sk->protocol == IPPROTO_TCP;

	if (tcp)
		count_sender(skb, sk, pod);
	return shape_egress(pod, skb, bpf_ktime_get_ns(), tcp);
}

SEC("cgroup_skb/ingress")
int shape_ingress_prog(struct __sk_buff *skb)
{
	return shape_ingress(bpf_get_local_storage(&pod_state, 0), skb, bpf_ktime_get_ns());
}

/*
 * Sets the socket's pacing rate to the pod's egress rate divided among the
 * sockets that sent data recently (counted by count_sender). Runs at
 * connection set-up and on every ACK; setsockopt only when the share changed.
 * No lock: the counts are read racily, which at worst delays a change by
 * one ACK.
 */
static __always_inline void pace_flow(struct bpf_sock_ops *skops, struct pod_state *pod)
{
	struct bpf_sock *sk = skops->sk;
	struct flow_state *flow;
	__u32 senders, before, rate32;
	__u64 rate;

	if (!sk)
		return;
	flow = bpf_sk_storage_get(&flow_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!flow)
		return;
	senders = pod->senders_now;
	before = pod->senders_before;
	if (before > senders)
		senders = before;
	if (senders == 0)
		senders = 1;
	rate = pod->egress.rate / senders;
	if (rate == flow->rate)
		return;
	flow->rate = rate;
	/* ~0U would mean "unpaced"; the largest real rate is ~34 Gbit/s. */
	rate32 = rate >= 0xffffffffULL ? 0xfffffffeU : (__u32)rate;
	bpf_setsockopt(skops, SOL_SOCKET, SO_MAX_PACING_RATE, &rate32, sizeof(rate32));
}

SEC("sockops")
int pace_tcp(struct bpf_sock_ops *skops)
{
	struct pod_state *pod = bpf_get_local_storage(&pod_state, 0);

	if (!pod)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (pod->egress.rate == 0)
			break;
		/* RTT callbacks come with every ACK of sent data: the moments
		 * to re-split the rate among the senders. */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						     BPF_SOCK_OPS_RTT_CB_FLAG);
		pace_flow(skops, pod);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		if (pod->egress.rate)
			pace_flow(skops, pod);
		break;
	}
	return 1;
}
