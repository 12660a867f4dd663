/* Shared definitions of Tandem's BPF programs. The structs below are the
 * map layouts; crates/xdp/src/pod.rs mirrors them (#[repr(C)]) and its unit
 * tests check the same sizes and offsets as the _Static_asserts here. */
#ifndef TANDEM_COMMON_H
#define TANDEM_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define GUE_PORT 6080
#define FAMILY_V4 4
#define FAMILY_V6 6

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* An address of either family: IPv4 in addr[0] (network order), rest 0. */
struct tdm_addr {
	__u32 addr[4];
};

static __always_inline int parse_l2(void *data, void *data_end, __u32 *l2len, __u16 *proto)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__u16 p = eth->h_proto;
	__u32 len = sizeof(*eth);
	if (p == bpf_htons(ETH_P_8021Q) || p == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = (void *)(eth + 1);
		if ((void *)(vh + 1) > data_end)
			return -1;
		p = vh->proto;
		len += sizeof(*vh);
	}
	*l2len = len;
	*proto = p;
	return 0;
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Checksum of a 20-byte IPv4 header (no options) with check = 0. */
static __always_inline __u16 ipv4_csum(struct iphdr *ip)
{
	__u16 *p = (__u16 *)ip;
	__u64 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += p[i];
	return csum_fold(sum);
}

#endif
