// SPDX-License-Identifier: Apache-2.0
/* Tandem's node-side decapsulation (XDP): strips the outer header of IPIP
 * (IPv4 protocol 4/41, IPv6 next header 4/41) and GUE variant 1 (UDP to port
 * 6080, inner IP packet right after the UDP header) packets and passes the
 * inner packet to the kernel, which delivers it to the VIP on `lo`.
 *
 * Only packets whose outer destination is in `tunnel_dsts` are decapsulated;
 * while that map is empty (config.filter == 0) every such packet is. */
#include "common.h"

struct decap_config {
	__u32 filter; /* 1: only outer destinations in tunnel_dsts */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct tdm_addr);
	__type(value, __u8);
	__uint(max_entries, 64);
} tunnel_dsts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct decap_config);
	__uint(max_entries, 1);
} decap_config SEC(".maps");

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, 1);
} decap_stats SEC(".maps");

static __always_inline int accepted(struct tdm_addr *dst)
{
	__u32 zero = 0;
	struct decap_config *c = bpf_map_lookup_elem(&decap_config, &zero);
	if (!c || !c->filter)
		return 1;
	return bpf_map_lookup_elem(&tunnel_dsts, dst) != 0;
}

SEC("xdp")
int tandem_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 frame_len = data_end - data;
	__u32 l2len;
	__u16 l3;
	if (parse_l2(data, data_end, &l2len, &l3))
		return XDP_PASS;

	struct tdm_addr dst = {};
	__u32 outer;   /* bytes to strip */
	__u8 inner;    /* IPPROTO_IPIP or IPPROTO_IPV6 (for GUE: from the version) */
	__u8 proto;
	void *l4;
	if (l3 == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + l2len;
		if ((void *)(ip + 1) > data_end)
			return XDP_PASS;
		if (ip->ihl < 5 || (ip->frag_off & bpf_htons(0x3fff)))
			return XDP_PASS;
		proto = ip->protocol;
		outer = ip->ihl * 4;
		l4 = (void *)ip + outer;
		dst.addr[0] = ip->daddr;
	} else if (l3 == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l2len;
		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		proto = ip6->nexthdr;
		outer = sizeof(*ip6);
		l4 = ip6 + 1;
		__builtin_memcpy(dst.addr, &ip6->daddr, 16);
	} else {
		return XDP_PASS;
	}
	if (proto == IPPROTO_IPIP || proto == IPPROTO_IPV6) {
		inner = proto;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return XDP_PASS;
		if (udp->dest != bpf_htons(GUE_PORT))
			return XDP_PASS;
		__u8 *v = (void *)(udp + 1);
		if ((void *)(v + 1) > data_end)
			return XDP_PASS;
		/* GUE variant 1: the first nibble is the inner IP version. */
		if ((*v >> 4) == 4)
			inner = IPPROTO_IPIP;
		else if ((*v >> 4) == 6)
			inner = IPPROTO_IPV6;
		else
			return XDP_PASS;
		outer += sizeof(*udp);
	} else {
		return XDP_PASS;
	}
	if (!accepted(&dst))
		return XDP_PASS;

	/* Move the L2 header forward over the outer headers, then drop them. */
	struct ethhdr eth;
	struct vlan_hdr vlan = {};
	struct ethhdr *e = data;
	if ((void *)(e + 1) > data_end)
		return XDP_PASS;
	eth = *e;
	if (l2len > sizeof(eth)) {
		struct vlan_hdr *vh = (void *)(e + 1);
		if ((void *)(vh + 1) > data_end)
			return XDP_PASS;
		vlan = *vh;
	}
	if (outer > 60 + sizeof(struct udphdr))
		return XDP_PASS;
	if (bpf_xdp_adjust_head(ctx, outer))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	__be16 l3new = bpf_htons(inner == IPPROTO_IPIP ? ETH_P_IP : ETH_P_IPV6);
	e = data;
	if ((void *)(e + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(e->h_dest, eth.h_dest, 6);
	__builtin_memcpy(e->h_source, eth.h_source, 6);
	if (l2len > sizeof(eth)) {
		struct vlan_hdr *vh = (void *)(e + 1);
		if ((void *)(vh + 1) > data_end)
			return XDP_DROP;
		e->h_proto = eth.h_proto;
		vh->tci = vlan.tci;
		vh->proto = l3new;
	} else {
		e->h_proto = l3new;
	}
	__u32 zero = 0;
	struct counter *c = bpf_map_lookup_elem(&decap_stats, &zero);
	if (c) {
		c->packets += 1;
		c->bytes += frame_len;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
