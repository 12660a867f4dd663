// SPDX-License-Identifier: Apache-2.0
/* Tandem's director data plane (XDP).
 *
 * For a packet to a VIP (address, port, protocol): find its flow in the flow
 * table, or pick a node from the VIP's Maglev ring and remember it; then send
 * it to the node by L2 DSR (rewrite MACs, XDP_TX) or encapsulated in IPIP or
 * GUE (outer IP [+ UDP 6080], XDP_TX). An encapsulated packet that would
 * exceed the director->node MTU is answered with ICMP "fragmentation needed"
 * / ICMPv6 "packet too big". Everything else is passed to the kernel. */
#include "common.h"

/* linux/icmp.h pulls in libc headers; the two ICMP headers we build: */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 unused;
	__be16 mtu;
};
struct icmp6hdr {
	__u8 icmp6_type;
	__u8 icmp6_code;
	__sum16 icmp6_cksum;
	__be32 icmp6_mtu;
};
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_PKT_TOOBIG 2

#define FWD_L2DSR 0
#define FWD_IPIP 1
#define FWD_GUE 2

#define VIP_F_HASH_SOURCE 1

#define G_FLOW_MISSES 0
#define G_NO_NODE 1
#define G_ICMP_TOO_BIG 2
#define G_PASSED 3
#define G_COUNT 8

/* ICMP quotes: as much of the packet as RFC 1812 (576-byte reply) and RFC
 * 4443 (1280-byte reply) allow. */
#define ICMP4_QUOTE_MAX 548
#define ICMP6_QUOTE_MAX 1232

struct vip_key {
	__u32 addr[4];
	__u16 port;  /* network order */
	__u8 proto;  /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family; /* FAMILY_V4 / FAMILY_V6 */
};
_Static_assert(sizeof(struct vip_key) == 20, "vip_key layout");

struct vip_meta {
	__u32 ring;
	__u32 table_size;
	__u8 forwarding;
	__u8 flags;
	__u16 pad;
};
_Static_assert(sizeof(struct vip_meta) == 12, "vip_meta layout");

struct flow_key {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport; /* network order */
	__u16 dport; /* network order */
	__u8 proto;
	__u8 family;
	__u16 pad;
};
_Static_assert(sizeof(struct flow_key) == 40, "flow_key layout");
_Static_assert(__builtin_offsetof(struct flow_key, sport) == 32, "flow_key layout");

struct node_entry {
	__u32 addr[4];
	__u8 mac[6];
	__u8 family;
	__u8 present;
};
_Static_assert(sizeof(struct node_entry) == 24, "node_entry layout");

struct counter {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct counter) == 16, "counter layout");

struct config {
	__u32 tun_v4;
	__u32 tun_v6[4];
	__u8 mac[6];
	__u16 mtu;
	__u32 max_table_size;
	__u8 has_v4;
	__u8 has_v6;
	__u8 pad[2];
};
_Static_assert(sizeof(struct config) == 36, "config layout");
_Static_assert(__builtin_offsetof(struct config, mac) == 20, "config layout");
_Static_assert(__builtin_offsetof(struct config, max_table_size) == 28, "config layout");

/* Sizes are placeholders: the loader sets them from Options before load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct vip_key);
	__type(value, struct vip_meta);
	__uint(max_entries, 64);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 64);
} ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_entry);
	__uint(max_entries, 64);
} nodes SEC(".maps");

/* One flow table shared by all CPUs (not per-CPU): veth and most virtual
 * NICs do not pin a flow to one CPU, and a per-CPU table would let a flow
 * that moves CPU re-hash to another node after a pool change. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, __u32);
	__uint(max_entries, 1024);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, 64);
} vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, 64);
} node_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, G_COUNT);
} globals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
} config SEC(".maps");

static __always_inline void count_global(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&globals, &which);
	if (v)
		*v += 1;
}

static __always_inline void count(void *map, __u32 index, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(map, &index);
	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

static __always_inline int pass(void)
{
	count_global(G_PASSED);
	return XDP_PASS;
}

static __always_inline __u32 rotl(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rotl(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rotl(h, 13);
	return h * 5 + 0xe6546b64;
}

/* Murmur3-style hash of the 5-tuple, or of the source address only. */
static __always_inline __u32 flow_hash(const struct flow_key *fk, int source_only)
{
	__u32 h = 0x7a6e6d54;
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = mix(h, fk->src[i]);
	if (!source_only) {
#pragma unroll
		for (int i = 0; i < 4; i++)
			h = mix(h, fk->dst[i]);
		h = mix(h, ((__u32)fk->sport << 16) | fk->dport);
		h = mix(h, fk->proto);
	}
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The node of `hash` in the VIP's ring, or -1. */
static __always_inline __s64 ring_pick(const struct vip_meta *vm, const struct config *cfg, __u32 hash)
{
	if (vm->table_size == 0 || vm->table_size > cfg->max_table_size)
		return -1;
	__u32 idx = vm->ring * cfg->max_table_size + hash % vm->table_size;
	__u32 *n = bpf_map_lookup_elem(&ring, &idx);
	if (!n)
		return -1;
	return *n;
}

static __always_inline struct node_entry *present_node(__u32 index)
{
	struct node_entry *n = bpf_map_lookup_elem(&nodes, &index);
	if (!n || !n->present)
		return 0;
	return n;
}

static __always_inline __u16 csum_loop(void *start, void *data_end, __u32 max_words, __u64 sum)
{
	__u8 *p = start;
	for (__u32 i = 0; i < max_words; i++) {
		if ((void *)(p + 2) > data_end) {
			if ((void *)(p + 1) <= data_end)
				sum += *p; /* odd trailing byte, zero padded */
			break;
		}
		sum += *(__u16 *)p;
		p += 2;
	}
	return csum_fold(sum);
}

static __always_inline int mac_is_zero(const __u8 *m)
{
	return (m[0] | m[1] | m[2] | m[3] | m[4] | m[5]) == 0;
}

struct l2_save {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
	struct vlan_hdr vlan;
};

static __always_inline int save_l2(void *data, void *data_end, __u32 l2len, struct l2_save *s)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(s->dst, eth->h_dest, 6);
	__builtin_memcpy(s->src, eth->h_source, 6);
	s->proto = eth->h_proto;
	if (l2len > sizeof(*eth)) {
		struct vlan_hdr *vh = (void *)(eth + 1);
		if ((void *)(vh + 1) > data_end)
			return -1;
		s->vlan = *vh;
	}
	return 0;
}

/* Writes an Ethernet (+ VLAN) header at the frame's start, with L3 type
 * `l3`. Returns -1 if the frame is too short. */
static __always_inline int write_l2(void *data, void *data_end, __u32 l2len, const struct l2_save *s,
				    const __u8 *dst, const __u8 *src, __be16 l3)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, dst, 6);
	__builtin_memcpy(eth->h_source, src, 6);
	if (l2len > sizeof(*eth)) {
		struct vlan_hdr *vh = (void *)(eth + 1);
		if ((void *)(vh + 1) > data_end)
			return -1;
		eth->h_proto = s->proto;
		vh->tci = s->vlan.tci;
		vh->proto = l3;
	} else {
		eth->h_proto = l3;
	}
	return 0;
}

/* Answers an IPv4 packet with ICMP "fragmentation needed" (type 3 code 4),
 * quoting its start, back out of the interface it came in on. */
static __always_inline int icmp4_too_big(struct xdp_md *ctx, __u32 l2len, __u16 next_mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct l2_save s = {};
	if (save_l2(data, data_end, l2len, &s))
		return XDP_DROP;
	struct iphdr *ip = data + l2len;
	if ((void *)(ip + 1) > data_end)
		return XDP_DROP;
	__u32 saddr = ip->saddr, daddr = ip->daddr;

	const int hdrs = sizeof(struct iphdr) + sizeof(struct icmphdr);
	if (bpf_xdp_adjust_head(ctx, -hdrs))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	__s64 quote = (__s64)(data_end - data) - l2len - hdrs;
	if (quote > ICMP4_QUOTE_MAX) {
		if (bpf_xdp_adjust_tail(ctx, -(int)(quote - ICMP4_QUOTE_MAX)))
			return XDP_DROP;
		quote = ICMP4_QUOTE_MAX;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
	}
	if (quote < (__s64)sizeof(struct iphdr) + 8)
		return XDP_DROP;
	if (write_l2(data, data_end, l2len, &s, s.src, s.dst, bpf_htons(ETH_P_IP)))
		return XDP_DROP;
	struct iphdr *oip = data + l2len;
	struct icmphdr *icmp = (void *)(oip + 1);
	if ((void *)(icmp + 1) > data_end)
		return XDP_DROP;
	oip->version = 4;
	oip->ihl = 5;
	oip->tos = 0;
	oip->tot_len = bpf_htons(hdrs + quote);
	oip->id = 0;
	oip->frag_off = 0;
	oip->ttl = 64;
	oip->protocol = IPPROTO_ICMP;
	oip->check = 0;
	oip->saddr = daddr;
	oip->daddr = saddr;
	oip->check = ipv4_csum(oip);

	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->unused = 0;
	icmp->mtu = bpf_htons(next_mtu);
	icmp->checksum = csum_loop(icmp, data_end, (sizeof(*icmp) + ICMP4_QUOTE_MAX) / 2, 0);
	count_global(G_ICMP_TOO_BIG);
	return XDP_TX;
}

/* Answers an IPv6 packet with ICMPv6 "packet too big". */
static __always_inline int icmp6_too_big(struct xdp_md *ctx, __u32 l2len, __u32 next_mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct l2_save s = {};
	if (save_l2(data, data_end, l2len, &s))
		return XDP_DROP;
	struct ipv6hdr *ip6 = data + l2len;
	if ((void *)(ip6 + 1) > data_end)
		return XDP_DROP;
	struct in6_addr saddr = ip6->saddr, daddr = ip6->daddr;

	const int hdrs = sizeof(struct ipv6hdr) + sizeof(struct icmp6hdr);
	if (bpf_xdp_adjust_head(ctx, -hdrs))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	__s64 quote = (__s64)(data_end - data) - l2len - hdrs;
	if (quote > ICMP6_QUOTE_MAX) {
		if (bpf_xdp_adjust_tail(ctx, -(int)(quote - ICMP6_QUOTE_MAX)))
			return XDP_DROP;
		quote = ICMP6_QUOTE_MAX;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
	}
	if (quote < (__s64)sizeof(struct ipv6hdr) + 8)
		return XDP_DROP;
	if (write_l2(data, data_end, l2len, &s, s.src, s.dst, bpf_htons(ETH_P_IPV6)))
		return XDP_DROP;
	struct ipv6hdr *oip = data + l2len;
	struct icmp6hdr *icmp = (void *)(oip + 1);
	if ((void *)(icmp + 1) > data_end)
		return XDP_DROP;
	__u16 plen = sizeof(*icmp) + quote;
	oip->version = 6;
	oip->priority = 0;
	oip->flow_lbl[0] = 0;
	oip->flow_lbl[1] = 0;
	oip->flow_lbl[2] = 0;
	oip->payload_len = bpf_htons(plen);
	oip->nexthdr = IPPROTO_ICMPV6;
	oip->hop_limit = 64;
	oip->saddr = daddr;
	oip->daddr = saddr;

	icmp->icmp6_type = ICMPV6_PKT_TOOBIG;
	icmp->icmp6_code = 0;
	icmp->icmp6_cksum = 0;
	icmp->icmp6_mtu = bpf_htonl(next_mtu);
	__u64 sum = 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		sum += (daddr.in6_u.u6_addr32[i] & 0xffff) + (daddr.in6_u.u6_addr32[i] >> 16);
		sum += (saddr.in6_u.u6_addr32[i] & 0xffff) + (saddr.in6_u.u6_addr32[i] >> 16);
	}
	sum += bpf_htons(plen);
	sum += bpf_htons(IPPROTO_ICMPV6);
	icmp->icmp6_cksum = csum_loop(icmp, data_end, (sizeof(*icmp) + ICMP6_QUOTE_MAX) / 2, sum);
	count_global(G_ICMP_TOO_BIG);
	return XDP_TX;
}

/* Puts an outer IPv4/IPv6 header (and a UDP header for GUE) in front of the
 * IP packet that follows the L2 header, addressed to `node`. */
static __always_inline int encap(struct xdp_md *ctx, __u32 l2len, const struct config *cfg,
				 const struct node_entry *node, int gue, __u8 inner_proto,
				 __u16 inner_len, __u32 hash)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct l2_save s = {};
	if (save_l2(data, data_end, l2len, &s))
		return XDP_DROP;
	const __u8 *src_mac = cfg->mac;
	if (mac_is_zero(cfg->mac))
		src_mac = s.dst;
	__u16 udp_len = inner_len + sizeof(struct udphdr);

	if (node->family == FAMILY_V4) {
		int overhead = sizeof(struct iphdr) + (gue ? sizeof(struct udphdr) : 0);
		if (bpf_xdp_adjust_head(ctx, -overhead))
			return XDP_DROP;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (write_l2(data, data_end, l2len, &s, node->mac, src_mac, bpf_htons(ETH_P_IP)))
			return XDP_DROP;
		struct iphdr *ip = data + l2len;
		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0;
		ip->tot_len = bpf_htons(inner_len + overhead);
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000); /* DF */
		ip->ttl = 64;
		ip->protocol = gue ? IPPROTO_UDP : inner_proto;
		ip->check = 0;
		ip->saddr = cfg->tun_v4;
		ip->daddr = node->addr[0];
		ip->check = ipv4_csum(ip);
		if (gue) {
			struct udphdr *udp = (void *)(ip + 1);
			if ((void *)(udp + 1) > data_end)
				return XDP_DROP;
			udp->source = bpf_htons(0xc000 | (hash & 0x3fff));
			udp->dest = bpf_htons(GUE_PORT);
			udp->len = bpf_htons(udp_len);
			udp->check = 0;
		}
	} else {
		int overhead = sizeof(struct ipv6hdr) + (gue ? sizeof(struct udphdr) : 0);
		if (bpf_xdp_adjust_head(ctx, -overhead))
			return XDP_DROP;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (write_l2(data, data_end, l2len, &s, node->mac, src_mac, bpf_htons(ETH_P_IPV6)))
			return XDP_DROP;
		struct ipv6hdr *ip6 = data + l2len;
		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		ip6->version = 6;
		ip6->priority = 0;
		ip6->flow_lbl[0] = (hash >> 16) & 0x0f;
		ip6->flow_lbl[1] = hash >> 8;
		ip6->flow_lbl[2] = hash;
		ip6->payload_len = bpf_htons(gue ? udp_len : inner_len);
		ip6->nexthdr = gue ? IPPROTO_UDP : inner_proto;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, cfg->tun_v6, 16);
		__builtin_memcpy(&ip6->daddr, node->addr, 16);
		if (gue) {
			/* Zero UDP checksum over IPv6 for a tunnel (RFC 6935). */
			struct udphdr *udp = (void *)(ip6 + 1);
			if ((void *)(udp + 1) > data_end)
				return XDP_DROP;
			udp->source = bpf_htons(0xc000 | (hash & 0x3fff));
			udp->dest = bpf_htons(GUE_PORT);
			udp->len = bpf_htons(udp_len);
			udp->check = 0;
		}
	}
	return XDP_TX;
}

SEC("xdp")
int tandem_director(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 frame_len = data_end - data;
	__u32 l2len;
	__u16 l3;
	if (parse_l2(data, data_end, &l2len, &l3))
		return pass();

	struct flow_key fk = {};
	void *l4;
	__u16 inner_len;
	int df = 0;
	if (l3 == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + l2len;
		if ((void *)(ip + 1) > data_end)
			return pass();
		if (ip->ihl < 5 || (ip->frag_off & bpf_htons(0x3fff)))
			return pass(); /* bad header, or a fragment */
		l4 = (void *)ip + ip->ihl * 4;
		fk.src[0] = ip->saddr;
		fk.dst[0] = ip->daddr;
		fk.proto = ip->protocol;
		fk.family = FAMILY_V4;
		inner_len = bpf_ntohs(ip->tot_len);
		df = !!(ip->frag_off & bpf_htons(0x4000));
	} else if (l3 == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l2len;
		if ((void *)(ip6 + 1) > data_end)
			return pass();
		l4 = ip6 + 1;
		__builtin_memcpy(fk.src, &ip6->saddr, 16);
		__builtin_memcpy(fk.dst, &ip6->daddr, 16);
		fk.proto = ip6->nexthdr; /* extension headers: not a VIP, passed */
		fk.family = FAMILY_V6;
		inner_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
	} else {
		return pass();
	}
	if (fk.proto != IPPROTO_TCP && fk.proto != IPPROTO_UDP)
		return pass();
	__be16 *ports = l4;
	if ((void *)(ports + 2) > data_end)
		return pass();
	fk.sport = ports[0];
	fk.dport = ports[1];

	struct vip_key vk = {};
	__builtin_memcpy(vk.addr, fk.dst, 16);
	vk.port = fk.dport;
	vk.proto = fk.proto;
	vk.family = fk.family;
	struct vip_meta *vm = bpf_map_lookup_elem(&vips, &vk);
	if (!vm)
		return pass();
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return pass();
	count(&vip_stats, vm->ring, frame_len);

	struct node_entry *node = 0;
	__u32 node_idx = 0;
	__u32 *pinned = bpf_map_lookup_elem(&flows, &fk);
	if (pinned) {
		node_idx = *pinned;
		node = present_node(node_idx);
	} else {
		count_global(G_FLOW_MISSES);
	}
	if (!node) {
		/* A new flow (or an evicted one), or its node was removed. */
		__s64 pick = ring_pick(vm, cfg, flow_hash(&fk, vm->flags & VIP_F_HASH_SOURCE));
		if (pick < 0) {
			count_global(G_NO_NODE);
			return XDP_DROP;
		}
		node_idx = pick;
		node = present_node(node_idx);
		if (!node) {
			count_global(G_NO_NODE);
			return XDP_DROP;
		}
		bpf_map_update_elem(&flows, &fk, &node_idx, BPF_ANY);
	}

	if (vm->forwarding == FWD_L2DSR) {
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > data_end)
			return XDP_DROP;
		if (mac_is_zero(cfg->mac))
			__builtin_memcpy(eth->h_source, eth->h_dest, 6);
		else
			__builtin_memcpy(eth->h_source, cfg->mac, 6);
		__builtin_memcpy(eth->h_dest, node->mac, 6);
		count(&node_stats, node_idx, frame_len);
		return XDP_TX;
	}

	int gue = vm->forwarding == FWD_GUE;
	if ((node->family == FAMILY_V4 && !cfg->has_v4) || (node->family == FAMILY_V6 && !cfg->has_v6)) {
		/* No tunnel source address of the node's family. */
		count_global(G_NO_NODE);
		return XDP_DROP;
	}
	__u32 overhead = (node->family == FAMILY_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr)) +
			 (gue ? sizeof(struct udphdr) : 0);
	if ((__u32)inner_len + overhead > cfg->mtu) {
		__u32 next_mtu = cfg->mtu > overhead ? cfg->mtu - overhead : 0;
		if (fk.family == FAMILY_V4) {
			if (df)
				return icmp4_too_big(ctx, l2len, next_mtu);
			/* No DF: sent as is; the link may drop it. */
		} else {
			return icmp6_too_big(ctx, l2len, next_mtu);
		}
	}
	__u8 inner_proto = fk.family == FAMILY_V4 ? IPPROTO_IPIP : IPPROTO_IPV6;
	/* The 5-tuple's hash gives GUE's source port / IPv6's flow label
	 * entropy for ECMP between director and node. */
	__u32 hash = flow_hash(&fk, 0);
	int action = encap(ctx, l2len, cfg, node, gue, inner_proto, inner_len, hash);
	if (action == XDP_TX)
		count(&node_stats, node_idx, frame_len);
	return action;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
