//! The map keys and values, byte for byte as in `bpf/director.c` and
//! `bpf/decap.c` (whose `_Static_assert`s check the same sizes and offsets
//! as the tests below).
//!
//! aya reads and writes map entries as plain bytes of types that implement
//! its `Pod` trait, which is `unsafe` to implement: the implementer promises
//! that every bit pattern is a valid value and that there is no padding
//! (uninitialised bytes) in the type. Every struct here is `#[repr(C)]`, made
//! only of integers and integer arrays, with explicit padding fields, so both
//! hold. This is the only module of the crate that allows `unsafe`.
#![allow(unsafe_code)]

/// `struct vip_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct VipKeyC {
    /// IPv4 in `addr[0]`, network order; IPv6 as 16 bytes.
    pub addr: [u32; 4],
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// `struct vip_meta`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct VipMetaC {
    pub ring: u32,
    pub table_size: u32,
    pub forwarding: u8,
    pub flags: u8,
    pub pad: u16,
}

/// `struct flow_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct FlowKeyC {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: u16,
}

/// `struct node_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NodeC {
    pub addr: [u32; 4],
    pub mac: [u8; 6],
    pub family: u8,
    pub present: u8,
}

/// `struct counter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CounterC {
    pub packets: u64,
    pub bytes: u64,
}

/// `struct config` (director).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfigC {
    pub tun_v4: u32,
    pub tun_v6: [u32; 4],
    pub mac: [u8; 6],
    pub mtu: u16,
    pub max_table_size: u32,
    pub has_v4: u8,
    pub has_v6: u8,
    pub pad: [u8; 2],
}

/// `struct tdm_addr` (decap's accepted tunnel destinations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct AddrC {
    pub addr: [u32; 4],
}

/// `struct decap_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DecapConfigC {
    pub filter: u32,
}

// SAFETY: see the module comment: repr(C), integer fields only, no implicit
// padding (checked by the size tests below), every bit pattern valid.
unsafe impl aya::Pod for VipKeyC {}
// SAFETY: as above.
unsafe impl aya::Pod for VipMetaC {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowKeyC {}
// SAFETY: as above.
unsafe impl aya::Pod for NodeC {}
// SAFETY: as above.
unsafe impl aya::Pod for CounterC {}
// SAFETY: as above.
unsafe impl aya::Pod for ConfigC {}
// SAFETY: as above.
unsafe impl aya::Pod for AddrC {}
// SAFETY: as above.
unsafe impl aya::Pod for DecapConfigC {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Same numbers as the `_Static_assert`s in bpf/director.c; the field
    /// sums prove there is no implicit padding.
    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(size_of::<VipKeyC>(), 20);
        assert_eq!(offset_of!(VipKeyC, port), 16);
        assert_eq!(offset_of!(VipKeyC, proto), 18);
        assert_eq!(offset_of!(VipKeyC, family), 19);

        assert_eq!(size_of::<VipMetaC>(), 12);
        assert_eq!(offset_of!(VipMetaC, forwarding), 8);
        assert_eq!(offset_of!(VipMetaC, flags), 9);

        assert_eq!(size_of::<FlowKeyC>(), 40);
        assert_eq!(offset_of!(FlowKeyC, dst), 16);
        assert_eq!(offset_of!(FlowKeyC, sport), 32);
        assert_eq!(offset_of!(FlowKeyC, dport), 34);
        assert_eq!(offset_of!(FlowKeyC, proto), 36);
        assert_eq!(offset_of!(FlowKeyC, family), 37);

        assert_eq!(size_of::<NodeC>(), 24);
        assert_eq!(offset_of!(NodeC, mac), 16);
        assert_eq!(offset_of!(NodeC, family), 22);
        assert_eq!(offset_of!(NodeC, present), 23);

        assert_eq!(size_of::<CounterC>(), 16);

        assert_eq!(size_of::<ConfigC>(), 36);
        assert_eq!(offset_of!(ConfigC, tun_v6), 4);
        assert_eq!(offset_of!(ConfigC, mac), 20);
        assert_eq!(offset_of!(ConfigC, mtu), 26);
        assert_eq!(offset_of!(ConfigC, max_table_size), 28);
        assert_eq!(offset_of!(ConfigC, has_v4), 32);

        assert_eq!(size_of::<AddrC>(), 16);
        assert_eq!(size_of::<DecapConfigC>(), 4);
    }
}
