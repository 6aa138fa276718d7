// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The datapath of bpf-ratelimit: programs attached to a pod's cgroup, plus
 * tc programs on its interfaces.
 *
 *   shape_egress_prog   cgroup_skb/egress   token bucket for what the pod
 *                                           sends; classifies TCP senders
 *   shape_ingress_prog  cgroup_skb/ingress  counts what the pod receives and
 *                                           classifies receivers; where
 *                                           ingress is not queued on the host
 *                                           side, an ECN-marking policer
 *   pace_tcp            sockops             paces each sending TCP socket at
 *                                           its share once the burst is spent;
 *                                           sizes each receiving socket's
 *                                           window from its share and RTT
 *   queue_pod_ingress   tc ingress on the   the door of the pod's ingress queue
 *   redirect_to_queue   pod's interface     (an ifb in the pod's netns): whole
 *                                           datagrams, light flows (a
 *                                           response) ahead of its download
 *   guard_pod_egress    tc ingress on the   charges every frame the pod emits
 *                       pod's host-side     to its egress limit, out of the
 *                       veth, and tc        pod's reach (the guarantee); the
 *                       egress on the       pod-side copy holds where an eBPF
 *                       pod's interface     main CNI skips the host side
 *   refuse_raw_frames   tc egress on the    where the pod has no host-side
 *                       pod's interface     peer (macvlan, ipvlan): drops
 *                                           frames of AF_PACKET sockets in the
 *                                           pod's cgroup, which skip the IP
 *                                           output path and every cgroup hook
 *   refuse_raw_bypass   cgroup/setsockopt   there too: PACKET_QDISC_BYPASS
 *                                           (past the filter above) and AF_XDP
 *                                           (past every hook) are refused
 *
 * State: pod_state (cgroup storage) names the pod cgroup; iface_state holds
 * each shaped interface's limits, buckets and flow counts under {pod cgroup,
 * ifindex}, so that a pod on several networks has each interface shaped
 * on its own. Only skbs on a shaped interface are shaped or charged;
 * loopback and pod-internal traffic pass untouched.
 *
 * pace_tcp does not answer BPF_SOCK_OPS_NEEDS_ECN: doing so makes the kernel
 * send the SYN itself ECN-capable, and Linux peers then refuse ECN (measured
 * here: SYN [SEW] answered by a plain SYN-ACK). Flows that negotiate ECN on
 * their own are marked by the policers instead of dropped.
 *
 * One copy is loaded per node and pinned; each pod gets its own attachments.
 */
#include "shaper.h"

/*
 * Knock-outs, for measuring what each part of the datapath costs on a busy
 * node (bench/knockout.sh, issue 25), never for use: build.rs turns
 * BRL_BPF_KNOCKOUT=part,... into -DKNOCKOUT_<PART>, and each one turns a
 * part into a pass-through. A build with any of them does not hold the
 * limits. The default build defines none, and its code is the same.
 */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef AF_PACKET
#define AF_PACKET 17
#endif
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef SOCK_DGRAM
#define SOCK_DGRAM 2
#endif
#ifndef SOL_SOCKET
#define SOL_SOCKET 1
#endif
#ifndef SO_MAX_PACING_RATE
#define SO_MAX_PACING_RATE 47
#endif
#define SOL_TCP 6
#define TCP_WINDOW_CLAMP 10
#define SOL_PACKET 263
#define PACKET_QDISC_BYPASS 20
#define SOL_XDP 283
#define PAGE_SIZE 4096

/* An IPv4 or IPv6 TCP skb longer than this carries data; pure ACKs, even
 * with timestamps and SACK blocks, are shorter. */
#define MIN_DATA_SKB_LEN 128

/* Cgroup levels refuse_raw_frames walks up from a socket's cgroup. */
#define MAX_CGROUP_LEVEL 16

/* Interfaces shaped on this node: one per pod attachment. */
#define MAX_IFACES 16384

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_STORAGE);
	__type(key, __u64); /* u64 key: one value per cgroup, shared by all programs */
	__type(value, struct pod_state);
} pod_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_IFACES);
	__type(key, struct iface_key);
	__type(value, struct iface_state);
} iface_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32); /* the host-side ifindex */
	__type(value, struct host_guard);
} host_guards SEC(".maps");

/* Pod cgroups whose AF_PACKET frames refuse_raw_frames drops. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u64);
	__type(value, __u32);
} raw_guarded SEC(".maps");

/* What the datapath remembers about one TCP socket that moves data on a
 * shaped interface. Sockets without one (loopback, pod-internal) are never
 * paced or clamped. */
struct flow_state {
	struct flow_class tx; /* what it sends */
	struct flow_class rx; /* what it receives */
	__u64 pacing;         /* the pacing rate last set: bytes/s, UNPACED, 0 if never set */
	__u32 ifindex;        /* the shaped interface it was seen on */
	__u32 cwnd_clamp;     /* the congestion window clamp last set; 0 if never set */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct flow_state);
} flow_state SEC(".maps");

/* The state of interface `ifindex` of the pod, if it is shaped. */
static __always_inline struct iface_state *iface_of(const struct pod_state *pod, __u32 ifindex)
{
	return pod ? lookup_iface(&iface_state, pod->cgroup_id, ifindex) : NULL;
}

/* Every netns numbers its loopback device 1. */
#define LOOPBACK_IFINDEX 1

/*
 * What a tunnel device adds to each packet the pod sends through it, beyond
 * the Ethernet header the hooks count already: VXLAN or Geneve over IPv4
 * (outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14). Exact for those; ipip
 * (20) and GRE (24) are charged a little more than they send, and what a
 * larger header sends beyond it (IPv6 outer, WireGuard) the guards police.
 */
#define ENCAP_BYTES 50

/*
 * The interface a packet leaving by `ifindex` is charged to: that one if it
 * is shaped; else, for a device the pod made (a tunnel, a macvlan) rather
 * than loopback, the pod's one shaped interface, which its outer frames
 * leave by. Sets *encap then: their headers are not in the skb yet. Without
 * this, tunnelled traffic passed the hooks uncharged and only the guards
 * held it, by dropping (a window of TCP through VXLAN at 1.070 of the limit).
 */
static __always_inline struct iface_state *egress_iface_of(const struct pod_state *pod, __u32 ifindex, __u32 *shaped,
							    bool *encap)
{
	struct iface_state *iface = iface_of(pod, ifindex);

	*shaped = ifindex;
	*encap = false;
	if (iface || !pod || !pod->sole_ifindex || ifindex == LOOPBACK_IFINDEX)
		return iface;
	*shaped = pod->sole_ifindex;
	*encap = true;
	return iface_of(pod, pod->sole_ifindex);
}

/* Whether a socket is TCP: a raw socket carrying TCP (SOCK_RAW with
 * IPPROTO_TCP) is not, and is charged like any other packet. */
static __always_inline bool is_tcp(const struct bpf_sock *sk)
{
	return sk && sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP_;
}

/*
 * Accounts a TCP skb moving on a shaped interface to its socket: creates
 * the socket's flow state (which makes it eligible for pacing and window
 * sizing), and classifies it (classify_flow). Done here, on the data path,
 * because ACK callbacks thin out exactly when flows are held back.
 */
static __always_inline void account_tcp(struct __sk_buff *skb, struct bpf_sock *sk, struct iface_state *iface,
					__u32 ifindex, __u64 now, __u64 wire, bool egress)
{
	struct flow_state *flow;
	__u64 rate = egress ? iface->egress.rate : iface->ingress.rate;

	if (rate == 0)
		return;
	flow = bpf_sk_storage_get(&flow_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!flow)
		return;
	flow->ifindex = ifindex;
	if (skb->len <= MIN_DATA_SKB_LEN)
		return;
	if (egress)
		classify_flow(&iface->senders, &flow->tx, rate, now, wire);
	else
		classify_flow(&iface->receivers, &flow->rx, rate, now, wire);
}

/* Whether a socket is a UDP one (a datagram socket of IPPROTO_UDP). */
static __always_inline bool is_udp(const struct bpf_sock *sk)
{
	return sk && sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP_;
}

/*
 * Counts a UDP socket that sends on a shaped interface among the senders
 * that take a share of the egress rate, as a TCP socket is. Without it a
 * TCP upload, paced at the whole rate as the only counted flow, kept the
 * bucket at empty, and UDP beside it (never borrowing) was dropped whole:
 * 6M of UDP beside a TCP upload from a 10M pod got 0.0 Mbit/s through
 * while the upload ran. Counted, it takes its share and TCP yields it.
 * Returns whether the socket is a light one (not counted), which may
 * borrow from the bucket as TCP does (shape_egress).
 */
static __always_inline bool account_udp(struct bpf_sock *sk, struct iface_state *iface, __u64 now, __u64 wire)
{
	struct flow_state *flow;

	if (iface->egress.rate == 0)
		return false;
	flow = bpf_sk_storage_get(&flow_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!flow)
		return false;
	classify_flow(&iface->senders, &flow->tx, iface->egress.rate, now, wire);
	return !is_counted(&flow->tx, now);
}

SEC("cgroup_skb/egress")
int shape_egress_prog(struct __sk_buff *skb)
{
	struct pod_state *pod = bpf_get_local_storage(&pod_state, 0);
	struct iface_state *iface;
	struct bpf_sock *sk;
	__u64 now, wire;
	__u32 shaped;
	bool tcp, encap, light_udp = false;

#ifdef KNOCKOUT_CGROUP_EGRESS
	return SKB_PASS;
#endif
	iface = egress_iface_of(pod, skb->ifindex, &shaped, &encap);
	if (!iface)
		return SKB_PASS;
	now = bpf_ktime_get_ns();
	if (encap)
		/* Each segment gets the tunnel's headers; the tunnel's MTU, not
		 * the interface's, decides fragmentation, and it is unknown here. */
		wire = wire_bytes(skb, false) + (__u64)(skb->gso_segs ? skb->gso_segs : 1) * ENCAP_BYTES;
	else
		wire = cgroup_wire_bytes(skb, iface_mtu(iface));
	sk = skb->sk ? bpf_sk_fullsock(skb->sk) : NULL;
	tcp = is_tcp(sk);
	if (tcp)
		account_tcp(skb, sk, iface, shaped, now, wire, true);
	else if (is_udp(sk))
		light_udp = account_udp(sk, iface, now, wire);
	return shape_egress(iface, skb, now, tcp, tcp || light_udp, wire);
}

SEC("cgroup_skb/ingress")
int shape_ingress_prog(struct __sk_buff *skb)
{
	struct pod_state *pod = bpf_get_local_storage(&pod_state, 0);
	struct iface_state *iface = iface_of(pod, skb->ifindex);
	struct bpf_sock *sk;
	__u64 now, wire;

#ifdef KNOCKOUT_CGROUP_INGRESS
	return SKB_PASS;
#endif
	if (!iface)
		return SKB_PASS;
	now = bpf_ktime_get_ns();
	wire = cgroup_wire_bytes(skb, iface_mtu(iface));
	sk = skb->sk ? bpf_sk_fullsock(skb->sk) : NULL;
	if (is_tcp(sk))
		account_tcp(skb, sk, iface, skb->ifindex, now, wire, false);
	return shape_ingress(iface, skb, now, wire);
}

/* Sizes a socket's receive window (rwnd_for). Set on every segment it
 * sends, ACKs included, before the window is written into it: the kernel
 * moves the clamp itself as receive autotuning grows the buffer (which
 * stays on: the buffer is never pinned), and a clamp set here applies to
 * this very segment. */
static __always_inline void clamp_receive_window(struct bpf_sock_ops *skops, struct iface_state *iface,
						 struct flow_state *flow, __u64 now)
{
	int rwnd;

#ifdef KNOCKOUT_WINDOW_CLAMP
	return;
#endif
	rwnd = rwnd_for(iface, now, is_counted(&flow->rx, now), skops->rtt_min, skops->mss_cache, skops->family == AF_INET6);
	bpf_setsockopt(skops, SOL_TCP, TCP_WINDOW_CLAMP, &rwnd, sizeof(rwnd));
}

/* Applies pacing_rate() and cwnd_clamp() to a socket, each with setsockopt
 * only on a change. The clamp is worked out on every call, not only when
 * the rate changes: it also follows the counted senders and the RTT, and
 * an unpaced socket's rate never changes. One clamp kept from a socket's
 * first callback, made while 8 senders of an upload that had just ended
 * were still counted, held a lone BBR flow 10 ms away to 6 segments, below
 * its rate, and so unpaced for good: 0.70 of 10M (rtt.rs). */
static __always_inline void pace_flow(struct bpf_sock_ops *skops, struct iface_state *iface,
				      struct flow_state *flow, __u64 now, __u64 pending)
{
	__u64 current, rate;
	__u32 rate32;
	int cwnd;

	current = flow->pacing ? flow->pacing : UNPACED;
	rate = pacing_rate(iface, now, current, is_counted(&flow->tx, now), skops->mss_cache,
			   skops->family == AF_INET6, pending);
	if (rate != current) {
		flow->pacing = rate;
		/* ~0U means "unpaced"; the largest real rate is ~34 Gbit/s. */
		rate32 = rate >= UNPACED ? 0xffffffffU : (__u32)rate;
		if (rate != UNPACED && rate32 == 0xffffffffU)
			rate32 = 0xfffffffeU;
		bpf_setsockopt(skops, SOL_SOCKET, SO_MAX_PACING_RATE, &rate32, sizeof(rate32));
	}
	cwnd = cwnd_clamp(rate, skops->rtt_min, skops->mss_cache, iface->egress.burst, counted_flows(&iface->senders),
			    iface->egress.rate);
	if (cwnd != flow->cwnd_clamp) {
		flow->cwnd_clamp = cwnd;
		bpf_setsockopt(skops, SOL_TCP, TCP_BPF_SNDCWND_CLAMP, &cwnd, sizeof(cwnd));
	}
}

/*
 * Whether a socket talks within its own pod: over loopback, or to one of the
 * pod's own addresses (its peer is then its own address). Such traffic never
 * crosses the pod's interface, and its sockets get no callbacks.
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
 * Re-evaluates a socket's pacing and receive window on every outgoing
 * segment (header-option length callback, which reserves no option space)
 * and its pacing on every ACK of sent data (RTT callback): the segment
 * callback stops an unpaced burst as soon as the bucket runs low, and the
 * ACK callback lifts pacing once the bucket has refilled, so the next
 * request after idle leaves at full speed.
 */
SEC("sockops")
int pace_tcp(struct bpf_sock_ops *skops)
{
	struct pod_state *pod = bpf_get_local_storage(&pod_state, 0);
	struct iface_state *iface;
	struct flow_state *flow;
	__u64 now;

#ifdef KNOCKOUT_SOCK_OPS
	return 1;
#endif
	if (!pod || !pod->cgroup_id)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* A sidecar and its app: no callbacks, no pacing, no clamp. */
		if (!is_local_peer(skops))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTT_CB_FLAG |
								 BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
	case BPF_SOCK_OPS_RTT_CB:
		break;
	default:
		return 1;
	}
	if (!skops->sk)
		return 1;
	/* No flow state: the socket never moved data on a shaped interface. */
	flow = bpf_sk_storage_get(&flow_state, skops->sk, 0, 0);
	if (!flow)
		return 1;
	iface = iface_of(pod, flow->ifindex);
	if (!iface)
		return 1;
	now = bpf_ktime_get_ns();
	if (skops->op == BPF_SOCK_OPS_HDR_OPT_LEN_CB) {
		/* Every outgoing segment, pure ACKs included. */
		if (iface->ingress.rate)
			clamp_receive_window(skops, iface, flow, now);
		if (iface->egress.rate && skops->skb_len)
			pace_flow(skops, iface, flow, now, skops->skb_len);
	} else if (iface->egress.rate) {
		pace_flow(skops, iface, flow, now, 0);
	}
	return 1;
}

/*
 * Every frame the pod emits, charged to its egress limit (guard_egress), in
 * two places: the host side of the pod's veth (tc ingress, keyed by that
 * interface's index), out of the pod's reach; and the pod's own interface
 * (tc egress, keyed by POD_SIDE_GUARD | the filter's classid, which ADD
 * allocates). An eBPF main CNI (Cilium, Calico eBPF) runs its own program
 * first on the host side and ends the filter chain there, so only the pod
 * side sees the pod's frames then. cls_bpf hands the filter's classid to
 * the program in skb->tc_classid (16 bits), 0 when it has none.
 */
#define POD_SIDE_GUARD 0x80000000U

SEC("classifier")
int guard_pod_egress(struct __sk_buff *skb)
{
	__u32 key = skb->tc_classid ? POD_SIDE_GUARD | skb->tc_classid : skb->ifindex;
	struct host_guard *guard = bpf_map_lookup_elem(&host_guards, &key);

#ifdef KNOCKOUT_GUARD
	return TC_ACT_UNSPEC;
#endif
	if (!guard)
		return TC_ACT_UNSPEC;
	return guard_egress(guard, skb, bpf_ktime_get_ns());
}

/* ---- The ingress queue, light flows first ---------------------------------
 *
 * The pod's ingress queue is a TBF on an ifb device in the pod's own netns
 * (src/datapath/ingress_queue.rs): every main CNI delivers the pod's
 * downloads through its interface's tc ingress, even one that skips the
 * host side with bpf_redirect_peer. There queue_pod_ingress passes each
 * frame through the queue's door (ingress_queues, keyed by the filter's
 * classid), and redirect_to_queue's filter hands it to the ifb, which
 * hands it back to the interface's receive path once the TBF lets it go.
 *
 * The TBF has a pfifo_fast child:
 * packets with priority TC_PRIO_INTERACTIVE leave before the rest. A light
 * flow toward the pod (light_in_queue: a request's response, a handshake,
 * a health check) gets that priority, so it does not wait behind the pod's
 * own download; every other flow is set to best effort, whatever priority
 * its sender gave it. Flows are remembered in an LRU map shared by every
 * pod.
 */
#define TC_PRIO_BESTEFFORT 0
#define TC_PRIO_INTERACTIVE 6
#define MAX_QUEUED_FLOWS 65536

struct flow_tuple {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_QUEUED_FLOWS);
	__type(key, struct flow_tuple);
	__type(value, struct queued_flow);
} queued_flows SEC(".maps");

/* The 5-tuple of an IPv4 or IPv6 TCP/UDP frame (ports 0 for other
 * protocols, fragments and extension headers); false if not IP. */
static __always_inline bool flow_tuple_of(struct __sk_buff *skb, struct flow_tuple *t)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	__u32 l4_off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr_min { __u8 vihl, tos; __u16 len, id, frag; __u8 ttl, proto; __u16 check; __u32 saddr, daddr; } *ip =
			data + ETH_HLEN;

		if ((void *)(ip + 1) > end)
			return false;
		t->saddr[0] = ip->saddr;
		t->daddr[0] = ip->daddr;
		t->proto = ip->proto;
		if (ip->frag & bpf_htons(0x3fff))
			return true;
		l4_off = ETH_HLEN + (ip->vihl & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr_min { __u32 vtcfl; __u16 len; __u8 next, hops; __u32 saddr[4], daddr[4]; } *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > end)
			return false;
		__builtin_memcpy(t->saddr, ip6->saddr, 16);
		__builtin_memcpy(t->daddr, ip6->daddr, 16);
		t->proto = ip6->next;
		l4_off = ETH_HLEN + 40;
	} else {
		return false;
	}
	if (t->proto == IPPROTO_TCP_ || t->proto == IPPROTO_UDP_) {
		__u16 ports[2];

		if (bpf_skb_load_bytes(skb, l4_off, ports, sizeof(ports)) == 0) {
			t->sport = ports[0];
			t->dport = ports[1];
		}
	}
	return true;
}

/* Whether a frame toward the pod belongs to a light flow (light_in_queue),
 * counting it; frames that are not IP count as light. Sets *tcp for TCP. */
static __always_inline bool light_flow(struct __sk_buff *skb, bool *tcp)
{
	struct flow_tuple key = {};
	struct queued_flow *f;
	__u64 window;

	*tcp = false;
	if (!flow_tuple_of(skb, &key))
		return true;
	*tcp = key.proto == IPPROTO_TCP_;
	window = bpf_ktime_get_ns() >> FLOW_WINDOW_SHIFT;
	f = bpf_map_lookup_elem(&queued_flows, &key);
	if (!f) {
		struct queued_flow fresh = { .window = window };

		bpf_map_update_elem(&queued_flows, &key, &fresh, BPF_ANY);
		f = bpf_map_lookup_elem(&queued_flows, &key);
		if (!f)
			return true;
	}
	return light_in_queue(f, window, skb->len);
}

/* The light frames each pod's queue has let into its first band in the
 * current window (light_band_has_room), keyed as the doors are. An LRU:
 * a pod's entry goes once its queue is gone and others need the room. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32);
	__type(value, struct light_window);
} light_windows SEC(".maps");

/* Whether this pod's first band has room for a light frame of `len` bytes. */
static __always_inline bool light_room(__u32 key, __u64 len, __u64 rate)
{
	struct light_window *w = bpf_map_lookup_elem(&light_windows, &key);
	__u64 window = bpf_ktime_get_ns() >> FLOW_WINDOW_SHIFT;

	if (!w) {
		struct light_window fresh = { .window = window };

		bpf_map_update_elem(&light_windows, &key, &fresh, BPF_ANY);
		w = bpf_map_lookup_elem(&light_windows, &key);
		if (!w)
			return false;
	}
	return light_band_has_room(w, window, len, rate);
}

/* Each pod interface's queue door (struct queue_gate), keyed by the
 * classid of its queue_pod_ingress filter. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32);
	__type(value, struct queue_gate);
} ingress_queues SEC(".maps");

/* An IP datagram in fragments: its addresses, protocol and ID. */
struct datagram_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 id;
	__u32 proto;
};

/* Datagrams whose first fragment a queue door turned away: their later
 * fragments are dropped too. Shared by every pod. */
#define MAX_TURNED_AWAY 4096
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_TURNED_AWAY);
	__type(key, struct datagram_key);
	__type(value, __u8);
} turned_away SEC(".maps");

/* Whether a frame (from its Ethernet header) is an IPv4 or IPv6 fragment,
 * and which; fills `d` for one. IPv6 fragments are recognised where the
 * fragment header follows the fixed header, as the IP layer sends them. */
static __always_inline enum fragment fragment_of(struct __sk_buff *skb, struct datagram_key *d)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct { __u8 vihl, tos; __u16 len, id, frag; __u8 ttl, proto; __u16 check; __u32 saddr, daddr; } *ip = data + ETH_HLEN;
		__u16 frag;

		if ((void *)(ip + 1) > end)
			return NOT_A_FRAGMENT;
		frag = bpf_ntohs(ip->frag);
		if (!(frag & 0x3fff))
			return NOT_A_FRAGMENT;
		d->saddr[0] = ip->saddr;
		d->daddr[0] = ip->daddr;
		d->id = ip->id;
		d->proto = ip->proto;
		return frag & 0x1fff ? LATER_FRAGMENT : FIRST_FRAGMENT;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct { __u32 vtcfl; __u16 len; __u8 next, hops; __u32 saddr[4], daddr[4];
			 __u8 frag_next, reserved; __u16 frag_off; __u32 id; } *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > end || ip6->next != 44)
			return NOT_A_FRAGMENT;
		__builtin_memcpy(d->saddr, ip6->saddr, 16);
		__builtin_memcpy(d->daddr, ip6->daddr, 16);
		d->id = ip6->id;
		d->proto = 44;
		return bpf_ntohs(ip6->frag_off) & 0xfff8 ? LATER_FRAGMENT : FIRST_FRAGMENT;
	}
	return NOT_A_FRAGMENT;
}

/* Whether a frame toward the pod is a TCP segment with no payload (an
 * ACK, a handshake, a FIN): IPv4 unfragmented, or IPv6 with TCP as its
 * first header. */
static __always_inline bool bare_tcp_segment(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	__u32 l4_off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct { __u8 vihl, tos; __u16 len, id, frag; __u8 ttl, proto; } *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > end || ip->proto != IPPROTO_TCP_ || (ip->frag & bpf_htons(0x3fff)))
			return false;
		l4_off = ETH_HLEN + (ip->vihl & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct { __u32 vtcfl; __u16 len; __u8 next, hops; } *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > end || ip6->next != IPPROTO_TCP_)
			return false;
		l4_off = ETH_HLEN + 40;
	} else {
		return false;
	}
	/* The TCP header's length is its data offset, in 32-bit words. */
	return skb->len == l4_off + (load_u8(skb, l4_off + 12) >> 4) * 4;
}

/* The pod's interface, tc ingress: the queue's door (queue_admit; a bare
 * TCP segment may skip the queue, queue_bypass), and the frame's band.
 * Frames it lets through go on to the next filter, redirect_to_queue,
 * whose mirred action puts them in the queue. */
SEC("classifier")
int queue_pod_ingress(struct __sk_buff *skb)
{
	__u32 key = skb->tc_classid;
	struct datagram_key datagram = {};
	struct iface_state *iface;
	__s64 tokens;
	__u64 refilled;
	struct queue_gate *q;
	enum fragment frag;
	__u64 wire, now;
	bool admitted, light, tcp, half;
	__u8 one = 1;

#ifdef KNOCKOUT_DOOR
	return TC_ACT_UNSPEC;
#endif
	q = key ? bpf_map_lookup_elem(&ingress_queues, &key) : NULL;
	if (!q)
		return TC_ACT_UNSPEC;
	iface = lookup_iface(&iface_state, q->cgroup_id, skb->ifindex);
	if (bare_tcp_segment(skb)) {
		wire = wire_bytes(skb, true);
		now = bpf_ktime_get_ns();
		bpf_spin_lock(&q->lock);
		admitted = queue_bypass(q, wire, now);
		tokens = q->queue.tokens;
		refilled = q->queue.last_ns;
		bpf_spin_unlock(&q->lock);
		/* Delivered now, past the redirect into the queue. */
		if (admitted) {
			if (iface)
				share_queue_level(iface, tokens, refilled);
			return TC_ACT_OK;
		}
	}
	frag = fragment_of(skb, &datagram);
	if (frag == LATER_FRAGMENT && bpf_map_lookup_elem(&turned_away, &datagram))
		return TC_ACT_SHOT;
	light = light_flow(skb, &tcp);
	/* The upper half of the queue is kept for TCP (whose windows keep
	 * the queue short) and light flows: a datagram's first fragment, and
	 * any frame of a heavy flow that is not TCP (a UDP flood; QUIC backs
	 * off from the drop), are turned away above half. Else a flood fills
	 * the queue, the TBF drops whatever arrives then, a response's SYN-ACK
	 * among it, and that response waits a 1 s retransmission (CI: p99
	 * 1021 ms beside 20M of UDP into a 10M pod). */
	half = frag == FIRST_FRAGMENT || (frag == NOT_A_FRAGMENT && !light && !tcp);
	wire = wire_bytes(skb, true);
	now = bpf_ktime_get_ns();
	bpf_spin_lock(&q->lock);
	admitted = queue_admit(q, wire, now, half);
	tokens = q->queue.tokens;
	refilled = q->queue.last_ns;
	bpf_spin_unlock(&q->lock);
	if (iface)
		share_queue_level(iface, tokens, refilled);
	if (!admitted) {
		if (frag == FIRST_FRAGMENT)
			bpf_map_update_elem(&turned_away, &datagram, &one, BPF_ANY);
		return TC_ACT_SHOT;
	}
	light = light && light_room(key, skb->len, q->queue.rate);
	skb->priority = light ? TC_PRIO_INTERACTIVE : TC_PRIO_BESTEFFORT;
	return TC_ACT_UNSPEC;
}

/* A classic (not direct-action) cls_bpf filter's program: every frame
 * matches, and the filter's mirred action redirects it to the queue's ifb.
 * mirred, not bpf_redirect: only mirred marks a frame as redirected from
 * ingress on every kernel, which the ifb requires (6.1 dropped them all). */
SEC("classifier")
int redirect_to_queue(struct __sk_buff *skb)
{
	return -1;
}

/*
 * Where the pod has no host-side peer (macvlan, ipvlan), nothing outside
 * the pod sees its frames. AF_PACKET sockets hand frames straight to the
 * device, past the IP output path and so past shape_egress; containerd
 * grants CAP_NET_RAW by default. On the pod's interface (a cls_bpf filter
 * on clsact egress, src/raw_guard.rs), this drops the frames of AF_PACKET
 * sockets whose cgroup is a shaped pod's (or below it): the sender's
 * sendmsg() fails with ENOBUFS. Processes of other cgroups in the pod's
 * netns (a DHCP client, arping from the node) are left alone. (Refusing
 * socket() itself needs the BPF LSM, which kernel lockdown forbids on many
 * nodes.)
 */
SEC("classifier")
int refuse_raw_frames(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	int level;

	if (!sk || sk->family != AF_PACKET)
		return TC_ACT_UNSPEC;
	for (level = 1; level <= MAX_CGROUP_LEVEL; level++) {
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, level);

		if (id == 0)
			break;
		if (bpf_map_lookup_elem(&raw_guarded, &id))
			return TC_ACT_SHOT;
	}
	return TC_ACT_UNSPEC;
}

/*
 * There too: PACKET_QDISC_BYPASS makes an AF_PACKET socket transmit past
 * the device's egress hook, and so past refuse_raw_frames; an AF_XDP socket
 * transmits past every hook. Both are refused with EPERM: an AF_XDP socket
 * cannot work without its SOL_XDP options.
 */
SEC("cgroup/setsockopt")
int refuse_raw_bypass(struct bpf_sockopt *ctx)
{
	if (ctx->level == SOL_PACKET && ctx->optname == PACKET_QDISC_BYPASS)
		return 0;
	if (ctx->level == SOL_XDP)
		return 0;
	/* Options longer than a page are not copied for us; let the kernel
	 * use the caller's buffer. */
	if (ctx->optlen > PAGE_SIZE)
		ctx->optlen = 0;
	return 1;
}
