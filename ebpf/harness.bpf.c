// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test harness for BPF_PROG_TEST_RUN. test_run gives cgroup programs a fresh,
 * zeroed cgroup storage on every call, so the harness keeps the pod state in
 * an array map the test can preset and read back, and takes "now" from the
 * test instead of the clock. Everything else is the production logic.
 */
#include <stdbool.h>
#include "shaper.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct harness_input {
	struct pod_state pod;
	__u64 now;
	/* harness_pacing: the pacing policy's inputs, */
	__u64 current_rate;
	__u64 pending;
	__u64 last_window;
	__u64 last_bytes;
	__u64 window;
	__u32 bulk;
	/* and its outputs; the receive-window policy's too. */
	__u32 out_is_bulk;
	__u64 out_rate;
	__u32 out_rwnd;
	__u32 out_is_bulk_receiver;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct harness_input);
} harness SEC(".maps");

static __always_inline struct harness_input *input(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&harness, &zero);
}

SEC("cgroup_skb/egress")
int harness_egress(struct __sk_buff *skb)
{
	struct harness_input *in = input();

	__u8 proto = 0;

	if (!in)
		return SKB_DROP;
	if (!crosses_pod_interface(&in->pod, skb))
		return SKB_PASS;

	/* The IPv4 protocol byte stands in for the socket's protocol. */
	bpf_skb_load_bytes(skb, 9, &proto, 1);
	return shape_egress(&in->pod, skb, in->now, proto == 6);
}

SEC("cgroup_skb/ingress")
int harness_ingress(struct __sk_buff *skb)
{
	struct harness_input *in = input();

	if (!in)
		return SKB_DROP;
	return shape_ingress(&in->pod, skb, in->now);
}

/* The egress pacing policy (pace_tcp's decisions) is plain arithmetic on the
 * pod state; sock_ops programs cannot be test-run, so this evaluates it. */
SEC("cgroup_skb/egress")
int harness_pacing(struct __sk_buff *skb)
{
	struct harness_input *in = input();

	if (!in)
		return SKB_DROP;
	in->out_is_bulk = is_bulk_sender(&in->pod, in->last_window, in->last_bytes, in->window);
	in->out_rate = pacing_rate(&in->pod, in->now, in->current_rate, in->bulk, in->pending);
	in->out_rwnd = rwnd_for(&in->pod, in->bulk);
	in->out_is_bulk_receiver = is_bulk_receiver(&in->pod, in->last_window, in->last_bytes, in->window);
	return SKB_PASS;
}

/*
 * ---- Test-only: IPv6 egress ------------------------------------------------
 * As harness_egress, but the IPv6 next-header byte stands in for the
 * socket's protocol, so IPv6 packets run through the production
 * shape_egress too (tests/datapath_test_run.rs).
 */
SEC("cgroup_skb/egress")
int harness_egress6(struct __sk_buff *skb)
{
	struct harness_input *in = input();
	__u8 next_header = 0;

	if (!in)
		return SKB_DROP;
	if (!crosses_pod_interface(&in->pod, skb))
		return SKB_PASS;
	bpf_skb_load_bytes(skb, 6, &next_header, 1);
	return shape_egress(&in->pod, skb, in->now, next_header == 6);
}
