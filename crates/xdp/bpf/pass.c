// SPDX-License-Identifier: Apache-2.0
/* XDP_PASS, for the peer of a veth that receives XDP_TX'd or redirected
 * frames in native mode (the veth driver delivers those only to a peer with
 * an XDP program). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int tandem_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
