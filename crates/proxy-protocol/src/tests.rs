use super::*;
use proptest::prelude::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn complete(buf: &[u8]) -> (Header, usize) {
    match decode(buf) {
        Ok(Decoded::Complete { header, consumed }) => (header, consumed),
        other => panic!("expected Complete, got {other:?}"),
    }
}

fn roundtrip(h: &Header) {
    let bytes = h.to_bytes().unwrap();
    assert_eq!(bytes.len(), h.encoded_len());
    let (got, consumed) = complete(&bytes);
    assert_eq!(&got, h);
    assert_eq!(consumed, bytes.len());
}

/// Every strict prefix of `bytes` must be Incomplete.
fn all_prefixes_incomplete(bytes: &[u8]) {
    for n in 0..bytes.len() {
        match decode(&bytes[..n]) {
            Ok(Decoded::Incomplete { needed_total }) => {
                if let Some(t) = needed_total {
                    assert!(t > n && t <= bytes.len(), "prefix {n}: needed {t}");
                }
            }
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
}

/// PROXY TCP4 192.0.2.1:56324 -> 198.51.100.7:443, written by hand from the spec.
const KNOWN_V4: [u8; 28] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
    0x21, // version 2, PROXY
    0x11, // AF_INET, STREAM
    0x00, 0x0C, // 12 bytes of addresses follow
    192, 0, 2, 1, // src addr
    198, 51, 100, 7, // dst addr
    0xDC, 0x04, // src port 56324
    0x01, 0xBB, // dst port 443
];

#[test]
fn known_v4_bytes() {
    let h = Header::proxy(sa("192.0.2.1:56324"), sa("198.51.100.7:443"));
    assert_eq!(h.to_bytes().unwrap(), KNOWN_V4);
    let (got, consumed) = complete(&KNOWN_V4);
    assert_eq!(got, h);
    assert_eq!(consumed, 28);
    assert_eq!(got.source(), Some(sa("192.0.2.1:56324")));
    assert_eq!(got.destination(), Some(sa("198.51.100.7:443")));
    assert_eq!(got.transport, Transport::Stream);
    assert_eq!(got.command, Command::Proxy);
    // encode appends.
    let mut out = b"xy".to_vec();
    h.encode(&mut out).unwrap();
    assert_eq!(&out[2..], KNOWN_V4);
}

#[test]
fn roundtrip_v4_v6_local_tlvs() {
    roundtrip(&Header::proxy(sa("10.1.2.3:1"), sa("10.3.2.1:65535")));
    roundtrip(&Header::proxy(
        sa("[2001:db8::1]:443"),
        sa("[2001:db8::2]:8443"),
    ));
    roundtrip(&Header::local());
    roundtrip(
        &Header::proxy(sa("10.1.2.3:1000"), sa("10.3.2.1:443"))
            .with_tlv(tlv::AUTHORITY, "example.com")
            .with_tlv(tlv::ALPN, "h2")
            .with_tlv(tlv::UNIQUE_ID, vec![7u8; 128])
            .with_tlv(tlv::NOOP, [])
            .with_tlv(0xE0, vec![1, 2, 3]),
    );
    roundtrip(&Header::local().with_tlv(tlv::NETNS, "blue"));
    let mut udp = Header::proxy(sa("10.0.0.1:53"), sa("10.0.0.2:53"));
    udp.transport = Transport::Datagram;
    roundtrip(&udp);
    let mut unix = Header::local();
    unix.command = Command::Proxy;
    unix.transport = Transport::Stream;
    let mut src = [0u8; UNIX_PATH_LEN];
    src[..9].copy_from_slice(b"/run/a.sk");
    unix.addresses = Addresses::Unix {
        src,
        dst: [0u8; UNIX_PATH_LEN],
    };
    roundtrip(&unix);
}

#[test]
fn accessors() {
    let h = Header::proxy(sa("10.1.2.3:1000"), sa("10.3.2.1:443"))
        .with_tlv(tlv::AUTHORITY, "example.com")
        .with_tlv(tlv::ALPN, "h2")
        .with_tlv(tlv::UNIQUE_ID, "id-1")
        .with_tlv(tlv::AUTHORITY, "second.example");
    assert_eq!(h.authority(), Some("example.com"));
    assert_eq!(h.alpn(), Some(&b"h2"[..]));
    assert_eq!(h.unique_id(), Some(&b"id-1"[..]));
    assert_eq!(h.tlv(tlv::NETNS), None);
    let bad_utf8 = Header::local().with_tlv(tlv::AUTHORITY, vec![0xff]);
    assert_eq!(bad_utf8.authority(), None);
    assert_eq!(Header::local().source(), None);
    assert_eq!(Header::local().destination(), None);
}

#[test]
fn mixed_families_map_to_v6() {
    let h = Header::proxy(sa("192.0.2.1:1234"), sa("[2001:db8::1]:443"));
    let Addresses::Inet6 { src, dst } = &h.addresses else {
        panic!("{h:?}");
    };
    assert_eq!(src.ip().to_string(), "::ffff:192.0.2.1");
    assert_eq!(dst.port(), 443);
    assert_eq!(h.source(), Some(sa("192.0.2.1:1234")));
    assert_eq!(h.destination(), Some(sa("[2001:db8::1]:443")));
    roundtrip(&h);
    // Flow info and scope ids are not on the wire: dropped.
    let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 5, 7));
    let h = Header::proxy(scoped, sa("[fe80::2]:2"));
    roundtrip(&h);
}

#[test]
fn every_truncation_is_incomplete() {
    let headers = [
        Header::proxy(sa("192.0.2.1:56324"), sa("198.51.100.7:443")),
        Header::proxy(sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2")).with_tlv(tlv::ALPN, "h2"),
        Header::local().with_tlv(tlv::NOOP, vec![0; 40]),
        Header::proxy(sa("10.0.0.1:1"), sa("10.0.0.2:2"))
            .with_tlv(tlv::AUTHORITY, "a.example")
            .with_crc32c(),
    ];
    for h in &headers {
        all_prefixes_incomplete(&h.to_bytes().unwrap());
    }
    all_prefixes_incomplete(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n");
    all_prefixes_incomplete(b"PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 1 65535\r\n");
    all_prefixes_incomplete(b"PROXY UNKNOWN whatever\r\n");
    assert_eq!(decode(&[]), Ok(Decoded::Incomplete { needed_total: None }));
    assert_eq!(
        decode(&KNOWN_V4[..3]),
        Ok(Decoded::Incomplete {
            needed_total: Some(16)
        })
    );
    assert_eq!(
        decode(&KNOWN_V4[..20]),
        Ok(Decoded::Incomplete {
            needed_total: Some(28)
        })
    );
}

#[test]
fn application_bytes_left_alone() {
    let mut buf = KNOWN_V4.to_vec();
    buf.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\nGET / HTTP/1.1\r\n");
    let (_, consumed) = complete(&buf);
    assert_eq!(consumed, KNOWN_V4.len());
    let mut buf = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nPROXY TCP4".to_vec();
    let (_, consumed) = complete(&buf);
    assert_eq!(consumed, 32);
    buf.truncate(32);
    let (_, consumed) = complete(&buf);
    assert_eq!(consumed, 32);
}

#[test]
fn bad_signature() {
    assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(Error::NotProxyProtocol));
    assert_eq!(decode(b"\x16\x03\x01"), Err(Error::NotProxyProtocol));
    let mut b = KNOWN_V4;
    b[7] = b'X';
    assert_eq!(decode(&b), Err(Error::NotProxyProtocol));
    assert_eq!(decode(&b[..8]), Err(Error::NotProxyProtocol));
    assert_eq!(decode(b"PROXX"), Err(Error::NotProxyProtocol));
    assert_eq!(decode(b"\r\n\r\n\r"), Err(Error::NotProxyProtocol));
    assert!(is_prefix_of_header(b""));
    assert!(is_prefix_of_header(b"PRO"));
    assert!(is_prefix_of_header(b"PROXY TCP4 garbage"));
    assert!(is_prefix_of_header(&KNOWN_V4[..5]));
    assert!(is_prefix_of_header(&KNOWN_V4));
    assert!(!is_prefix_of_header(b"GET "));
    assert!(!is_prefix_of_header(b"PROXZ"));
    assert!(!is_prefix_of_header(&b[..8]));
}

#[test]
fn bad_version_command_family() {
    let mut b = KNOWN_V4;
    b[12] = 0x11; // version 1 nibble in binary
    assert_eq!(decode(&b), Err(Error::UnsupportedVersion(1)));
    assert_eq!(decode(&b[..13]), Err(Error::UnsupportedVersion(1)));
    b[12] = 0x31;
    assert_eq!(decode(&b), Err(Error::UnsupportedVersion(3)));
    b[12] = 0x22;
    assert_eq!(decode(&b), Err(Error::UnknownCommand(2)));
    b[12] = 0x21;
    b[13] = 0x41;
    assert_eq!(decode(&b), Err(Error::UnknownFamily(4)));
    b[13] = 0x13;
    assert_eq!(decode(&b), Err(Error::UnknownTransport(3)));
    b[13] = 0x10;
    assert_eq!(decode(&b), Err(Error::InvalidFamilyTransport(0x10)));
    b[13] = 0x01;
    assert_eq!(decode(&b), Err(Error::InvalidFamilyTransport(0x01)));
}

#[test]
fn local_is_lenient() {
    // LOCAL with an unknown family: skipped by length.
    let mut b = KNOWN_V4.to_vec();
    b[12] = 0x20;
    b[13] = 0x4f;
    b.extend_from_slice(b"app");
    let (h, consumed) = complete(&b);
    assert_eq!(consumed, 28);
    assert_eq!(h.command, Command::Local);
    assert_eq!(h.addresses, Addresses::Unspec);
    assert!(h.tlvs.is_empty());
    // LOCAL, AF_INET but a block too short: no addresses, no error.
    let mut b = KNOWN_V4[..16].to_vec();
    b[12] = 0x20;
    b[15] = 3;
    b.extend_from_slice(&[1, 2, 3]);
    let (h, consumed) = complete(&b);
    assert_eq!((h.addresses, consumed), (Addresses::Unspec, 19));
    // LOCAL with length 0.
    let mut b = KNOWN_V4[..16].to_vec();
    b[12] = 0x20;
    b[13] = 0x00;
    b[15] = 0;
    assert_eq!(complete(&b), (Header::local(), 16));
    // LOCAL with a real address block: kept.
    let mut b = KNOWN_V4;
    b[12] = 0x20;
    let (h, _) = complete(&b);
    assert_eq!(h.command, Command::Local);
    assert_eq!(h.source(), Some(sa("192.0.2.1:56324")));
}

#[test]
fn truncated_address_block() {
    let mut b = KNOWN_V4;
    b[15] = 11;
    assert_eq!(
        decode(&b),
        Err(Error::AddressBlockTooShort { family: 1, len: 11 })
    );
    // Reported as soon as the length field is in.
    assert_eq!(
        decode(&b[..16]),
        Err(Error::AddressBlockTooShort { family: 1, len: 11 })
    );
    let mut b = Header::proxy(sa("[::1]:1"), sa("[::2]:2"))
        .to_bytes()
        .unwrap();
    b[15] = 12;
    assert_eq!(
        decode(&b),
        Err(Error::AddressBlockTooShort { family: 2, len: 12 })
    );
}

#[test]
fn tlv_overrun() {
    let h = Header::proxy(sa("10.0.0.1:1"), sa("10.0.0.2:2")).with_tlv(tlv::ALPN, "h2");
    let mut b = h.to_bytes().unwrap();
    // TLV claims 3 bytes but only 2 are inside the header.
    b[28 + 2] = 3;
    b.push(b'x'); // application byte: must not be taken into the TLV
    assert_eq!(decode(&b), Err(Error::TlvTruncated { offset: 28 }));
    // A TLV header cut short (2 of 3 bytes) by the declared length.
    let mut b = KNOWN_V4.to_vec();
    b[15] = 14;
    b.extend_from_slice(&[0x01, 0x00]);
    assert_eq!(decode(&b), Err(Error::TlvTruncated { offset: 28 }));
}

#[test]
fn too_long_encode() {
    let h =
        Header::proxy(sa("10.0.0.1:1"), sa("10.0.0.2:2")).with_tlv(0xE0, vec![0; 65_535 - 12 - 3]);
    roundtrip(&h);
    let h = h.with_tlv(tlv::NOOP, []);
    assert_eq!(h.to_bytes(), Err(Error::TooLong));
    let mut out = vec![1];
    assert_eq!(h.encode(&mut out), Err(Error::TooLong));
    assert_eq!(out, [1]);
    let mut bad = Header::proxy(sa("10.0.0.1:1"), sa("10.0.0.2:2"));
    bad.transport = Transport::Unspec;
    assert_eq!(bad.to_bytes(), Err(Error::InvalidFamilyTransport(0x10)));
}

#[test]
fn crc32c_check_value() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
}

#[test]
fn crc32c_tlv_good_and_bad() {
    let h = Header::proxy(sa("192.0.2.1:56324"), sa("198.51.100.7:443"))
        .with_tlv(tlv::AUTHORITY, "example.com")
        .with_crc32c();
    let b = h.to_bytes().unwrap();
    let (got, _) = complete(&b);
    assert_eq!(got, h);
    // The value is the CRC of the header with the field zeroed.
    let mut zeroed = b.clone();
    let n = zeroed.len();
    zeroed[n - 4..].fill(0);
    assert_eq!(h.tlv(tlv::CRC32C), Some(&crc32c(&zeroed).to_be_bytes()[..]));
    // Any flipped bit in the header is caught.
    for i in [17usize, 26, 31, 40, n - 1] {
        let mut bad = b.clone();
        bad[i] ^= 0x01;
        assert_eq!(decode(&bad), Err(Error::Crc32cMismatch), "byte {i}");
    }
    // with_crc32c replaces an existing one; TLVs added later are covered too.
    let h2 = h.clone().with_crc32c();
    assert_eq!(h2, h);
    let later = h.with_tlv(tlv::ALPN, "h2");
    let (got, _) = complete(&later.to_bytes().unwrap());
    assert_eq!(got.alpn(), Some(&b"h2"[..]));
    // A CRC32C TLV of the wrong length.
    let bad = Header::local().with_tlv(tlv::CRC32C, [1, 2]);
    assert!(matches!(
        bad.to_bytes(),
        Err(Error::BadTlvLength { kind: 3, len: 2 })
    ));
    let mut b = Header::local()
        .with_tlv(tlv::NOOP, [1, 2])
        .to_bytes()
        .unwrap();
    b[16] = tlv::CRC32C;
    assert_eq!(decode(&b), Err(Error::BadTlvLength { kind: 3, len: 2 }));
}

#[test]
fn ssl_tlv_roundtrip() {
    let sub = [
        Tlv::new(tlv::SSL_VERSION, "TLSv1.3"),
        Tlv::new(tlv::SSL_CN, "client.example"),
    ];
    let t = ssl_tlv(ssl_client::SSL | ssl_client::CERT_CONN, 0, &sub);
    assert_eq!(t.kind, tlv::SSL);
    assert_eq!(&t.value[..5], &[0x03, 0, 0, 0, 0]);
    let h = Header::proxy(sa("10.0.0.1:1"), sa("10.0.0.2:2")).with_tlv(t.kind, t.value);
    roundtrip(&h);
    let info = h.ssl().unwrap().unwrap();
    assert_eq!(info.client, 0x03);
    assert_eq!(info.verify, 0);
    assert_eq!(info.sub, sub);
    assert!(matches!(
        parse_ssl_tlv(&[1, 0, 0]),
        Err(Error::BadTlvLength { .. })
    ));
    assert_eq!(
        parse_ssl_tlv(&[1, 0, 0, 0, 0, 0x21, 0, 5, b'x']),
        Err(Error::TlvTruncated { offset: 5 })
    );
}

#[test]
fn v1_valid() {
    let (h, n) = complete(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET");
    assert_eq!(n, 45);
    assert_eq!(h.version, 1);
    assert_eq!(h.command, Command::Proxy);
    assert_eq!(h.transport, Transport::Stream);
    assert_eq!(h.source(), Some(sa("192.0.2.1:56324")));
    assert_eq!(h.destination(), Some(sa("198.51.100.7:443")));
    let (h, _) = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n");
    assert_eq!(h.source(), Some(sa("[2001:db8::1]:0")));
    assert_eq!(h.destination(), Some(sa("[2001:db8::2]:65535")));
    let (h, n) = complete(b"PROXY UNKNOWN\r\n");
    assert_eq!(
        (h.addresses, h.transport, n),
        (Addresses::Unspec, Transport::Unspec, 15)
    );
    let (h, _) = complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
    assert_eq!(h.source(), None);
    // The longest possible line (TCP6 with full addresses) is 104 bytes.
    let long = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(complete(long).1, long.len());
    // Re-encoding a v1 header as v2.
    let (mut h, _) = complete(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n");
    assert_eq!(h.to_bytes().unwrap(), KNOWN_V4);
    h.version = 2;
    roundtrip(&h);
}

#[test]
fn v1_invalid() {
    let cases: &[&[u8]] = &[
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 65536\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 +1 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 \r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n",
        b"PROXY TCP4 192.0.2.1  198.51.100.7 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n",
        b"PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n",
        b"PROXY TCP4 256.0.2.1 198.51.100.7 1 2\r\n",
        b"PROXY TCP4 192.0.2 198.51.100.7 1 2\r\n",
        b"PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n",
        b"PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n",
        b"PROXY tcp4 192.0.2.1 198.51.100.7 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\rX",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\t\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 \r\n",
        b"PROXY  TCP4 192.0.2.1 198.51.100.7 1 2\r\n",
    ];
    for c in cases {
        assert!(
            matches!(decode(c), Err(Error::BadV1(_))),
            "{:?}: {:?}",
            String::from_utf8_lossy(c),
            decode(c)
        );
    }
    // Garbage is rejected before the CRLF arrives.
    assert!(matches!(decode(b"PROXY TCP4 hello"), Err(Error::BadV1(_))));
    assert!(matches!(decode(b"PROXY FOO"), Err(Error::BadV1(_))));
    // No CRLF within 107 bytes.
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(107, b'a');
    assert_eq!(decode(&long), Err(Error::TooLong));
    long.truncate(105);
    long.extend_from_slice(b"\r\n");
    assert_eq!(complete(&long).1, 107);
    long.insert(20, b'a');
    assert_eq!(decode(&long), Err(Error::TooLong));
}

// ---- property tests ----

fn arb_v4() -> impl Strategy<Value = SocketAddrV4> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddrV4::new(Ipv4Addr::from(ip), p))
}

fn arb_v6() -> impl Strategy<Value = SocketAddrV6> {
    (any::<[u8; 16]>(), any::<u16>())
        .prop_map(|(ip, p)| SocketAddrV6::new(Ipv6Addr::from(ip), p, 0, 0))
}

fn arb_path() -> impl Strategy<Value = [u8; UNIX_PATH_LEN]> {
    proptest::collection::vec(any::<u8>(), UNIX_PATH_LEN).prop_map(|v| {
        let mut a = [0u8; UNIX_PATH_LEN];
        a.copy_from_slice(&v);
        a
    })
}

fn arb_addresses() -> impl Strategy<Value = Addresses> {
    prop_oneof![
        Just(Addresses::Unspec),
        (arb_v4(), arb_v4()).prop_map(|(src, dst)| Addresses::Inet { src, dst }),
        (arb_v6(), arb_v6()).prop_map(|(src, dst)| Addresses::Inet6 { src, dst }),
        (arb_path(), arb_path()).prop_map(|(src, dst)| Addresses::Unix { src, dst }),
    ]
}

fn arb_tlvs() -> impl Strategy<Value = Vec<Tlv>> {
    proptest::collection::vec(
        (
            any::<u8>().prop_filter("not CRC32C", |k| *k != tlv::CRC32C),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(kind, value)| Tlv { kind, value }),
        0..6,
    )
}

fn arb_header() -> impl Strategy<Value = Header> {
    let proxy =
        (arb_addresses(), any::<bool>(), arb_tlvs()).prop_map(|(addresses, dgram, tlvs)| {
            let transport = match (&addresses, dgram) {
                (Addresses::Unspec, _) => Transport::Unspec,
                (_, false) => Transport::Stream,
                (_, true) => Transport::Datagram,
            };
            Header {
                version: 2,
                command: Command::Proxy,
                transport,
                addresses,
                tlvs,
            }
        });
    let local = (
        arb_addresses(),
        prop_oneof![
            Just(Transport::Unspec),
            Just(Transport::Stream),
            Just(Transport::Datagram)
        ],
        arb_tlvs(),
    )
        .prop_map(|(addresses, transport, tlvs)| Header {
            version: 2,
            command: Command::Local,
            transport,
            addresses,
            tlvs,
        });
    prop_oneof![proxy, local]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_roundtrip(h in arb_header(), crc in any::<bool>(), trailer in proptest::collection::vec(any::<u8>(), 0..8)) {
        let h = if crc { h.with_crc32c() } else { h };
        let mut bytes = h.to_bytes().unwrap();
        let len = bytes.len();
        prop_assert_eq!(len, h.encoded_len());
        bytes.extend_from_slice(&trailer);
        prop_assert_eq!(decode(&bytes), Ok(Decoded::Complete { header: h, consumed: len }));
    }

    #[test]
    fn prop_prefix_incomplete(h in arb_header(), cut in any::<prop::sample::Index>()) {
        let bytes = h.to_bytes().unwrap();
        let n = cut.index(bytes.len());
        let is_incomplete = matches!(decode(&bytes[..n]), Ok(Decoded::Incomplete { .. }));
        prop_assert!(is_incomplete);
        prop_assert!(is_prefix_of_header(&bytes[..n]));
    }

    #[test]
    fn prop_arbitrary_bytes_no_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&bytes);
        let _ = is_prefix_of_header(&bytes);
    }

    #[test]
    fn prop_signature_then_garbage_no_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        for prefix in [&V2_SIGNATURE[..], b"PROXY "] {
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(&tail);
            if let Ok(Decoded::Complete { header, consumed }) = decode(&bytes) {
                prop_assert!(consumed <= bytes.len());
                let mut h = header;
                h.version = 2;
                if let Ok(again) = h.to_bytes() {
                    prop_assert_eq!(complete(&again).0, h);
                }
            }
        }
    }
}
