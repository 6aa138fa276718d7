// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test harness for BPF_PROG_TEST_RUN. test_run gives cgroup programs a fresh,
 * zeroed cgroup storage on every call, so the harness keeps the interface
 * state in an array map the test can preset and read back, and takes "now"
 * from the test instead of the clock. Everything else is the production
 * logic of shaper.h.
 */
#include <stdbool.h>
#include "shaper.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The interface's state has a map of its own (harness_iface): kernels
 * before 6.x refuse a spin lock nested one level down in a map value. */
struct harness_input {
	__u64 now;
	/* The policies' inputs (harness_policy), */
	__u64 current_rate;
	__u64 pending;
	__u32 counted;
	__u32 rtt_us;
	__u32 mss;
	__u32 ipv6;
	struct flow_class flow;
	__u64 flow_len; /* classify `flow` as it moves this many bytes; 0: don't */
	/* and the outputs, with the wire bytes the last packet was charged. */
	__u64 out_rate;
	__u64 out_wire;
	__u32 out_rwnd;
	__u32 out_cwnd;
	/* harness_lookup: the pod cgroup its interfaces are keyed by. */
	__u64 cgroup_id;
	/* harness_door: whether the frame may use only the queue's lower half. */
	__u32 half;
	__u32 pad;
	/* harness_light: a flow toward the pod moving flow_len bytes at now;
	 * out_light: whether it is light. */
	struct queued_flow queued;
	__u64 out_light;
	/* and the pod's first band at the queue's rate current_rate, with
	 * out_room: whether it has room for flow_len more bytes. */
	struct light_window band;
	__u64 out_room;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct harness_input);
} harness SEC(".maps");

/* The host-side guard for harness_guard: a map value holds one spin lock,
 * so it has its own. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct host_guard);
} harness_guards SEC(".maps");

/* The ingress queue's door for harness_door. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct queue_gate);
} harness_doors SEC(".maps");

/* Interfaces for harness_lookup, keyed as in production. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct iface_key);
	__type(value, struct iface_state);
} harness_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct iface_state);
} harness_iface SEC(".maps");

static __always_inline struct harness_input *input(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&harness, &zero);
}

static __always_inline struct iface_state *input_iface(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&harness_iface, &zero);
}

/* The L4 protocol byte of the packet stands in for the socket's type. */
static __always_inline bool packet_is_tcp(struct __sk_buff *skb, __u32 l3_off)
{
	__u32 off = skb->protocol == bpf_htons(ETH_P_IPV6) ? 6 : 9;

	return load_u8(skb, l3_off + off) == IPPROTO_TCP_;
}

SEC("cgroup_skb/egress")
int harness_egress(struct __sk_buff *skb)
{
	struct harness_input *in = input();
	struct iface_state *iface = input_iface();

	if (!in || !iface)
		return SKB_DROP;
	in->out_wire = cgroup_wire_bytes(skb, iface_mtu(iface));
	return shape_egress(iface, skb, in->now, packet_is_tcp(skb, 0), packet_is_tcp(skb, 0), in->out_wire);
}

SEC("cgroup_skb/ingress")
int harness_ingress(struct __sk_buff *skb)
{
	struct harness_input *in = input();
	struct iface_state *iface = input_iface();

	if (!in || !iface)
		return SKB_DROP;
	in->out_wire = cgroup_wire_bytes(skb, iface_mtu(iface));
	return shape_ingress(iface, skb, in->now, in->out_wire);
}

/* The production egress path's interface lookup: only a shaped interface's
 * state is found; any other skb passes uncharged. */
SEC("cgroup_skb/egress")
int harness_lookup(struct __sk_buff *skb)
{
	struct harness_input *in = input();
	struct iface_state *iface;

	if (!in)
		return SKB_DROP;
	iface = lookup_iface(&harness_ifaces, in->cgroup_id, skb->ifindex);
	if (!iface)
		return SKB_PASS;
	return shape_egress(iface, skb, in->now, packet_is_tcp(skb, 0), packet_is_tcp(skb, 0), wire_bytes(skb, false));
}

/* The host-side guard, as tc runs it: the skb starts at its Ethernet header. */
SEC("classifier")
int harness_guard(struct __sk_buff *skb)
{
	struct harness_input *in = input();
	__u32 zero = 0;
	struct host_guard *guard = bpf_map_lookup_elem(&harness_guards, &zero);

	if (!in || !guard)
		return TC_ACT_SHOT;
	in->out_wire = wire_bytes(skb, true);
	return guard_egress(guard, skb, in->now);
}

/* The ingress queue's door, as queue_pod_ingress runs it on a frame it
 * queues (the skb starts at its Ethernet header): the door admits and
 * charges it, hands its model to the interface, and the window a receiver
 * would then be given is worked out from it. */
SEC("classifier")
int harness_door(struct __sk_buff *skb)
{
	struct harness_input *in = input();
	struct iface_state *iface = input_iface();
	__u32 zero = 0;
	struct queue_gate *q = bpf_map_lookup_elem(&harness_doors, &zero);
	__s64 tokens;
	__u64 refilled;
	bool admitted;

	if (!in || !iface || !q)
		return TC_ACT_SHOT;
	in->out_wire = wire_bytes(skb, true);
	bpf_spin_lock(&q->lock);
	admitted = queue_admit(q, in->out_wire, in->now, in->half);
	tokens = q->queue.tokens;
	refilled = q->queue.last_ns;
	bpf_spin_unlock(&q->lock);
	share_queue_level(iface, tokens, refilled);
	in->out_rwnd = rwnd_for(iface, in->now, in->counted, in->rtt_us, in->mss, in->ipv6);
	return admitted ? TC_ACT_UNSPEC : TC_ACT_SHOT;
}

/* The ingress queue door's light-flow test (light_in_queue) and its
 * first band's share (light_band_has_room). */
SEC("cgroup_skb/egress")
int harness_light(struct __sk_buff *skb)
{
	struct harness_input *in = input();

	if (!in)
		return SKB_DROP;
	in->out_light = light_in_queue(&in->queued, in->now >> FLOW_WINDOW_SHIFT, in->flow_len);
	in->out_room = light_band_has_room(&in->band, in->now >> FLOW_WINDOW_SHIFT, in->flow_len, in->current_rate);
	return SKB_PASS;
}

/* The sock_ops policies (pacing, receive windows) and the flow
 * classification are plain arithmetic on the state; sock_ops programs
 * cannot be test-run, so this evaluates them. */
SEC("cgroup_skb/egress")
int harness_policy(struct __sk_buff *skb)
{
	struct harness_input *in = input();
	struct iface_state *iface = input_iface();

	if (!in || !iface)
		return SKB_DROP;
	if (in->flow_len)
		classify_flow(&iface->senders, &in->flow, iface->egress.rate, in->now, in->flow_len);
	in->out_rate = pacing_rate(iface, in->now, in->current_rate, in->counted, in->mss, in->ipv6,
				   in->pending);
	in->out_rwnd = rwnd_for(iface, in->now, in->counted, in->rtt_us, in->mss, in->ipv6);
	in->out_cwnd = cwnd_clamp(in->out_rate, in->rtt_us, in->mss, iface->egress.burst, counted_flows(&iface->senders),
			    iface->egress.rate);
	return SKB_PASS;
}

/*
 * ---- Test instrument: a wire counter --------------------------------------
 * The testbed attaches this to the pod's interface (tc ingress) to count
 * what the wire delivered to the pod, per segment, as the limit counts it.
 */
struct wire_count {
	__u64 frames;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wire_count);
} wire_counts SEC(".maps");

SEC("classifier")
int count_wire(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct wire_count *c = bpf_map_lookup_elem(&wire_counts, &zero);

	if (c) {
		__sync_fetch_and_add(&c->frames, skb->gso_segs > 1 ? skb->gso_segs : 1);
		__sync_fetch_and_add(&c->bytes, wire_bytes(skb, true));
	}
	return TC_ACT_UNSPEC;
}

/* ---- An eBPF main CNI, emulated (src/testbed/main_cni.rs) -----------------
 *
 * What Cilium with BPF host routing and Calico in eBPF mode do on each
 * pod's host-side veth: a program at the front of its tc ingress (cls_bpf
 * at pref 1, or tcx first) that hands a frame for a known destination
 * straight to that destination's veth peer with bpf_redirect_peer (or
 * bpf_redirect), and passes the rest (ARP, multicast ND) with TC_ACT_OK.
 * Either verdict ends the filter chain: a later cls_bpf filter on that
 * hook never runs, and the destination veth's egress qdisc is skipped.
 */
struct cni_route_key {
	__u32 addr[4]; /* IPv4 in addr[0], the rest 0 */
	__u32 family;  /* 4 or 6 */
};

struct cni_route {
	__u32 ifindex; /* a host-side veth: the frame goes to its peer */
	__u32 peer;    /* 1: bpf_redirect_peer; 0: bpf_redirect (its egress) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct cni_route_key);
	__type(value, struct cni_route);
} cni_routes SEC(".maps");

SEC("classifier")
int ebpf_main_cni(struct __sk_buff *skb)
{
	struct cni_route_key key = {};
	struct cni_route *route;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 16, &key.addr[0], 4))
			return TC_ACT_OK;
		key.family = 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 24, key.addr, 16))
			return TC_ACT_OK;
		key.family = 6;
	} else {
		return TC_ACT_OK;
	}
	route = bpf_map_lookup_elem(&cni_routes, &key);
	if (!route)
		return TC_ACT_OK;
	return route->peer ? bpf_redirect_peer(route->ifindex, 0) : bpf_redirect(route->ifindex, 0);
}
