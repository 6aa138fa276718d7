// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The datapath of bpf-ratelimit: programs attached to a pod's cgroup, plus
 * one on the pod's interface.
 *
 *   shape_egress        cgroup_skb/egress   token bucket for the pod's sends;
 *                                           classifies TCP senders
 *   shape_ingress       cgroup_skb/ingress  ECN-marking policer for what the
 *                                           pod receives
 *   pace_tcp            sockops             paces each sending TCP socket at
 *                                           its share once the burst is spent
 *   refuse_qdisc_bypass cgroup/setsockopt   PACKET_QDISC_BYPASS would skip the
 *                                           interface's egress hook below
 *   refuse_raw_frames   tc egress on the    drops frames from AF_PACKET sockets,
 *                       pod's interface     which skip the IP output path and so
 *                                           every cgroup hook
 *
 * Only skbs on the pod's interface are shaped or charged; loopback and
 * pod-internal traffic pass untouched (crosses_pod_interface).
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
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef AF_PACKET
#define AF_PACKET 17
#endif
#ifndef SOL_SOCKET
#define SOL_SOCKET 1
#endif
#ifndef SO_MAX_PACING_RATE
#define SO_MAX_PACING_RATE 47
#endif
#ifndef SO_RCVBUF
#define SO_RCVBUF 8
#endif
#define SOL_TCP 6
#define TCP_WINDOW_CLAMP 10
#define SOL_PACKET 263
#define PACKET_QDISC_BYPASS 20
#define PAGE_SIZE 4096

/* tc verdicts (linux/pkt_cls.h) for a direct-action classifier. */
#define TC_ACT_UNSPEC -1
#define TC_ACT_SHOT 2

/* An IPv4 or IPv6 TCP skb longer than this carries data; pure ACKs, even
 * with timestamps and SACK blocks, are shorter. */
#define MIN_DATA_SKB_LEN 128

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_STORAGE);
	__type(key, __u64); /* u64 key: one value per cgroup, shared by all programs */
	__type(value, struct pod_state);
} pod_state SEC(".maps");

/* What the datapath remembers about one TCP socket that sends on the pod's
 * interface. Sockets without one (loopback, pod-internal) are never paced. */
struct flow_state {
	__u64 window; /* the last sender window this socket sent data in */
	__u64 bytes;  /* payload it sent in that window */
	__u64 rate;   /* the pacing rate last set: bytes/s, UNPACED, 0 if never set */
	__u32 bulk;   /* a bulk sender in `window` */
	__u32 rx_bulk;   /* a bulk receiver in `rx_window` */
	__u64 rx_window; /* the last receiver window this socket received data in */
	__u64 rx_bytes;  /* bytes it received in that window */
	__u32 rwnd;      /* the receive window last set, 0 if never set */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct flow_state);
} flow_state SEC(".maps");

/*
 * Accounts a TCP skb leaving on the pod's interface to its socket: creates
 * the socket's flow state (which makes it eligible for pacing), classifies it
 * as a bulk or light sender at its first data skb of a window, and adds its
 * payload to what it sent in the window. Done here, on the send path, because ACK
 * callbacks thin out exactly when flows are held back.
 */
static __always_inline void account_tcp_send(struct __sk_buff *skb, struct bpf_sock *sk,
					     struct pod_state *pod, __u64 now)
{
	struct flow_state *flow;
	__u64 window;

	if (pod->egress.rate == 0)
		return;
	flow = bpf_sk_storage_get(&flow_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!flow || skb->len <= MIN_DATA_SKB_LEN)
		return;
	window = now >> SENDER_WINDOW_SHIFT;
	roll_sender_window(pod, window);
	if (flow->window != window) {
		flow->bulk = is_bulk_sender(pod, flow->window, flow->bytes, window);
		flow->window = window;
		flow->bytes = 0;
		if (flow->bulk)
			__sync_fetch_and_add(&pod->senders_now, 1);
	}
	flow->bytes += egress_charge(skb, true);
}

SEC("cgroup_skb/egress")
int shape_egress_prog(struct __sk_buff *skb)
{
	struct pod_state *pod = bpf_get_local_storage(&pod_state, 0);
	struct bpf_sock *sk;
	__u64 now = bpf_ktime_get_ns();
	bool tcp;

	if (!crosses_pod_interface(pod, skb))
		return SKB_PASS;
	sk = skb->sk ? bpf_sk_fullsock(skb->sk) : NULL;
	tcp = sk && sk->protocol == IPPROTO_TCP;
	if (tcp)
		account_tcp_send(skb, sk, pod, now);
	return shape_egress(pod, skb, now, tcp);
}

/*
 * Accounts a TCP skb arriving on the pod's interface to its socket, for the
 * receive windows of a queued ingress: classifies the socket as a bulk or
 * light receiver at its first data skb of a window, and counts its bytes.
 */
static __always_inline void account_tcp_receive(struct __sk_buff *skb, struct bpf_sock *sk,
						struct pod_state *pod, __u64 now)
{
	struct flow_state *flow;
	__u64 window;

	if (!(pod->flags & POD_INGRESS_QUEUED) || pod->ingress.rate == 0)
		return;
	flow = bpf_sk_storage_get(&flow_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!flow || skb->len <= MIN_DATA_SKB_LEN)
		return;
	window = now >> SENDER_WINDOW_SHIFT;
	roll_receiver_window(pod, window);
	if (flow->rx_window != window) {
		flow->rx_bulk = is_bulk_receiver(pod, flow->rx_window, flow->rx_bytes, window);
		flow->rx_window = window;
		flow->rx_bytes = 0;
		if (flow->rx_bulk)
			__sync_fetch_and_add(&pod->receivers_now, 1);
	}
	flow->rx_bytes += skb->len;
}

SEC("cgroup_skb/ingress")
int shape_ingress_prog(struct __sk_buff *skb)
{
	struct pod_state *pod = bpf_get_local_storage(&pod_state, 0);
	__u64 now = bpf_ktime_get_ns();
	struct bpf_sock *sk;

	if (!crosses_pod_interface(pod, skb))
		return SKB_PASS;
	sk = skb->sk ? bpf_sk_fullsock(skb->sk) : NULL;
	if (sk && sk->protocol == IPPROTO_TCP)
		account_tcp_receive(skb, sk, pod, now);
	return shape_ingress(pod, skb, now);
}

/* Sets a socket's receive window: SO_RCVBUF (the kernel derives the window
 * clamp from the buffer whenever its payload ratio changes, so a clamp
 * alone does not hold; 3/4 of the window, which the kernel doubles) and
 * TCP_WINDOW_CLAMP. On a change only. */
static __always_inline void clamp_receive_window(struct bpf_sock_ops *skops, struct pod_state *pod,
						 struct flow_state *flow)
{
	int rwnd = rwnd_for(pod, flow ? flow->rx_bulk : false);
	int rcvbuf = rwnd / 4 * 3;

	if (flow) {
		if (flow->rwnd == (__u32)rwnd)
			return;
		flow->rwnd = rwnd;
	}
	bpf_setsockopt(skops, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	bpf_setsockopt(skops, SOL_TCP, TCP_WINDOW_CLAMP, &rwnd, sizeof(rwnd));
}

/* Applies pacing_rate() to a socket, with setsockopt only on a change. */
static __always_inline void pace_flow(struct bpf_sock_ops *skops, struct pod_state *pod, __u64 pending)
{
	struct flow_state *flow;
	__u64 current, rate;
	__u32 rate32;

	if (!skops->sk)
		return;
	/* No flow state: the socket never sent on the pod's interface. */
	flow = bpf_sk_storage_get(&flow_state, skops->sk, 0, 0);
	if (!flow)
		return;
	current = flow->rate ? flow->rate : UNPACED;
	rate = pacing_rate(pod, bpf_ktime_get_ns(), current, flow->bulk, pending);
	if (rate == current)
		return;
	flow->rate = rate;
	/* ~0U means "unpaced"; the largest real rate is ~34 Gbit/s. */
	rate32 = rate >= UNPACED ? 0xffffffffU : (__u32)rate;
	if (rate != UNPACED && rate32 == 0xffffffffU)
		rate32 = 0xfffffffeU;
	bpf_setsockopt(skops, SOL_SOCKET, SO_MAX_PACING_RATE, &rate32, sizeof(rate32));
}

/*
 * Whether a socket talks within its own pod: over loopback, or to one of the
 * pod's own addresses (its peer is then its own address). Such traffic never
 * crosses the pod's interface, and its sockets are neither paced nor
 * clamped. (Listening sockets are not clamped either: their children may be
 * either kind; a child is clamped once established.)
 */
static __always_inline bool is_local_peer(const struct bpf_sock_ops *skops)
{
	if (skops->family == AF_INET)
		/* remote_ip4 is in network order: its first octet is the low byte. */
		return skops->remote_ip4 == skops->local_ip4 || (skops->remote_ip4 & 0xff) == 127;
	if (skops->family == AF_INET6) {
		__u32 r0 = skops->remote_ip6[0], r1 = skops->remote_ip6[1];
		__u32 r2 = skops->remote_ip6[2], r3 = skops->remote_ip6[3];

		if (r0 == skops->local_ip6[0] && r1 == skops->local_ip6[1] &&
		    r2 == skops->local_ip6[2] && r3 == skops->local_ip6[3])
			return true;
		if (r0 == 0 && r1 == 0 && r2 == 0 && r3 == bpf_htonl(1))
			return true; /* ::1 */
		/* ::ffff:127.0.0.0/104, IPv4 loopback on an IPv6 socket */
		return r0 == 0 && r1 == 0 && r2 == bpf_htonl(0xffff) && (r3 & 0xff) == 127;
	}
	return false;
}

/*
 * Re-evaluates a socket's pacing on every ACK of sent data (RTT callback) and
 * on every outgoing data segment (header-option length callback, which
 * reserves no option space): the segment callback stops an unpaced burst as
 * soon as the bucket runs low, and the ACK callback lifts pacing once the
 * bucket has refilled, so the next request after idle leaves at full speed.
 */
SEC("sockops")
int pace_tcp(struct bpf_sock_ops *skops)
{
	struct pod_state *pod = bpf_get_local_storage(&pod_state, 0);
	bool paced, clamped;

	if (!pod)
		return 1;
	paced = pod->egress.rate != 0;
	clamped = pod->ingress.rate != 0 && (pod->flags & POD_INGRESS_QUEUED);
	if (!paced && !clamped)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* Before the SYN advertises the first window. The socket has
		 * no flow state yet: a light receiver's window. */
		if (clamped && !is_local_peer(skops))
			clamp_receive_window(skops, pod, NULL);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* A sidecar and its app: no callbacks, no pacing, no clamp. */
		if (is_local_peer(skops))
			break;
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						     BPF_SOCK_OPS_RTT_CB_FLAG |
						     BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		if (clamped)
			clamp_receive_window(skops, pod, NULL);
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		/* Every outgoing segment, pure ACKs included: a window set
		 * here is advertised by this very segment. */
		if (clamped && skops->sk) {
			struct flow_state *flow = bpf_sk_storage_get(&flow_state, skops->sk, 0, 0);

			if (flow)
				clamp_receive_window(skops, pod, flow);
		}
		if (!paced || skops->skb_len == 0)
			break; /* a pure ACK, or an MSS computation */
		pace_flow(skops, pod, skops->skb_len);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		if (paced)
			pace_flow(skops, pod, 0);
		break;
	}
	return 1;
}

/*
 * AF_PACKET sockets hand frames straight to the device, past the IP output
 * path and so past shape_egress; containerd grants CAP_NET_RAW by default.
 * On the pod's interface (a cls_bpf filter on clsact egress, src/raw_guard.rs),
 * this drops those frames:
 * the sender's sendmsg() fails with ENOBUFS. (Refusing socket() itself needs
 * the BPF LSM, which kernel lockdown forbids on many nodes.) Frames from IP
 * sockets, already shaped, go on.
 */
SEC("classifier")
int refuse_raw_frames(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	if (sk && sk->family == AF_PACKET)
		return TC_ACT_SHOT;
	return TC_ACT_UNSPEC;
}

/*
 * PACKET_QDISC_BYPASS makes an AF_PACKET socket transmit without the
 * device's egress hook, and so past refuse_raw_frames: refused with EPERM.
 */
SEC("cgroup/setsockopt")
int refuse_qdisc_bypass(struct bpf_sockopt *ctx)
{
	if (ctx->level == SOL_PACKET && ctx->optname == PACKET_QDISC_BYPASS)
		return 0;
	/* Options longer than a page are not copied for us; let the kernel
	 * use the caller's buffer. */
	if (ctx->optlen > PAGE_SIZE)
		ctx->optlen = 0;
	return 1;
}
