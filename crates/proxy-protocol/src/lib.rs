#![forbid(unsafe_code)]
//! PROXY protocol (HAProxy's `proxy-protocol.txt`) codec, sans-IO.
//!
//! * [`decode`] reads version 2 (binary) and version 1 (text) headers from the
//!   start of a buffer, and tells apart a complete header, a valid prefix that
//!   needs more bytes ([`Decoded::Incomplete`]), and bytes that can never be a
//!   header ([`Error`]). Bytes after the header belong to the application and
//!   are never consumed.
//! * [`Header::encode`] writes version 2 only.
//!
//! # Example
//!
//! ```
//! use proxy_protocol::{decode, Decoded, Header};
//! let h = Header::proxy("192.0.2.1:56324".parse().unwrap(), "198.51.100.7:443".parse().unwrap())
//!     .with_tlv(proxy_protocol::tlv::AUTHORITY, "example.com");
//! let mut wire = h.to_bytes().unwrap();
//! wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
//! match decode(&wire).unwrap() {
//!     Decoded::Complete { header, consumed } => {
//!         assert_eq!(header, h);
//!         assert_eq!(&wire[consumed..], b"GET / HTTP/1.1\r\n");
//!         assert_eq!(header.authority(), Some("example.com"));
//!     }
//!     Decoded::Incomplete { .. } => unreachable!(),
//! }
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

mod crc32c;
mod v1;

pub use crc32c::crc32c;

/// The 12-byte signature that starts every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Length of the fixed part of a version 2 header (signature, version and
/// command, family and transport, length).
pub const V2_FIXED_LEN: usize = 16;

/// Maximum length of a version 1 header line, including the CRLF.
pub const V1_MAX_LEN: usize = 107;

/// Length of the AF_INET address block.
const INET_LEN: usize = 12;
/// Length of the AF_INET6 address block.
const INET6_LEN: usize = 36;
/// Length of the AF_UNIX address block.
const UNIX_LEN: usize = 216;

/// Length of one AF_UNIX path field.
pub const UNIX_PATH_LEN: usize = 108;

/// The command of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// The connection was made by the proxy itself (e.g. a health check):
    /// the receiver must use the real connection endpoints.
    Local,
    /// The connection is relayed on behalf of another client.
    Proxy,
}

/// The transport protocol of the proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Unspecified or unknown.
    Unspec,
    /// SOCK_STREAM (TCP).
    Stream,
    /// SOCK_DGRAM (UDP).
    Datagram,
}

impl Transport {
    fn nibble(self) -> u8 {
        match self {
            Transport::Unspec => 0,
            Transport::Stream => 1,
            Transport::Datagram => 2,
        }
    }

    fn from_nibble(n: u8) -> Option<Self> {
        match n {
            0 => Some(Transport::Unspec),
            1 => Some(Transport::Stream),
            2 => Some(Transport::Datagram),
            _ => None,
        }
    }
}

/// The addresses carried by a header.
///
/// Version 2 does not carry IPv6 flow info or scope ids: decoded
/// [`SocketAddrV6`] values have them set to 0, and encoding drops them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addresses {
    /// AF_UNSPEC: no address information.
    Unspec,
    /// AF_INET.
    Inet {
        /// Source (client) address.
        src: SocketAddrV4,
        /// Destination (the address the client connected to).
        dst: SocketAddrV4,
    },
    /// AF_INET6.
    Inet6 {
        /// Source (client) address.
        src: SocketAddrV6,
        /// Destination (the address the client connected to).
        dst: SocketAddrV6,
    },
    /// AF_UNIX: two 108-byte, NUL-padded path fields.
    Unix {
        /// Source path.
        src: [u8; UNIX_PATH_LEN],
        /// Destination path.
        dst: [u8; UNIX_PATH_LEN],
    },
}

impl Addresses {
    fn family_nibble(&self) -> u8 {
        match self {
            Addresses::Unspec => 0,
            Addresses::Inet { .. } => 1,
            Addresses::Inet6 { .. } => 2,
            Addresses::Unix { .. } => 3,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Addresses::Unspec => 0,
            Addresses::Inet { .. } => INET_LEN,
            Addresses::Inet6 { .. } => INET6_LEN,
            Addresses::Unix { .. } => UNIX_LEN,
        }
    }
}

/// A Type-Length-Value extension of a version 2 header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlv {
    /// The type byte (see [`tlv`] for the registered ones).
    pub kind: u8,
    /// The value (at most 65535 bytes to be encodable).
    pub value: Vec<u8>,
}

impl Tlv {
    /// A TLV of the given kind and value.
    pub fn new(kind: u8, value: impl Into<Vec<u8>>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }
}

/// Registered TLV types.
pub mod tlv {
    /// Application-Layer Protocol Negotiation (the negotiated protocol).
    pub const ALPN: u8 = 0x01;
    /// Authority: the host name given by the client (e.g. TLS SNI), UTF-8.
    pub const AUTHORITY: u8 = 0x02;
    /// CRC32c checksum of the whole header (4 bytes, big-endian).
    pub const CRC32C: u8 = 0x03;
    /// No-op, for padding; its value is to be ignored.
    pub const NOOP: u8 = 0x04;
    /// An opaque unique connection id, up to 128 bytes.
    pub const UNIQUE_ID: u8 = 0x05;
    /// TLS information; see [`crate::ssl_tlv`].
    pub const SSL: u8 = 0x20;
    /// Network namespace name (US-ASCII).
    pub const NETNS: u8 = 0x30;
    /// SSL sub-TLV: TLS version string (e.g. "TLSv1.3").
    pub const SSL_VERSION: u8 = 0x21;
    /// SSL sub-TLV: the client certificate's Common Name.
    pub const SSL_CN: u8 = 0x22;
    /// SSL sub-TLV: the cipher name.
    pub const SSL_CIPHER: u8 = 0x23;
    /// SSL sub-TLV: the certificate's signature algorithm.
    pub const SSL_SIG_ALG: u8 = 0x24;
    /// SSL sub-TLV: the certificate's key algorithm.
    pub const SSL_KEY_ALG: u8 = 0x25;
}

/// Bits of the SSL TLV's `client` flags byte.
pub mod ssl_client {
    /// The client connected over SSL/TLS.
    pub const SSL: u8 = 0x01;
    /// The client provided a certificate over the current connection.
    pub const CERT_CONN: u8 = 0x02;
    /// The client provided a certificate at least once over the TLS session.
    pub const CERT_SESS: u8 = 0x04;
}

/// A PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// The wire version it was decoded from (1 or 2). [`Header::encode`]
    /// always writes version 2, whatever this says.
    pub version: u8,
    /// LOCAL or PROXY.
    pub command: Command,
    /// The transport protocol.
    pub transport: Transport,
    /// The addresses.
    pub addresses: Addresses,
    /// TLVs, in wire order (always empty for version 1).
    pub tlvs: Vec<Tlv>,
}

/// Decoded contents of an SSL TLV (type 0x20).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SslInfo {
    /// `client` flags, see [`ssl_client`].
    pub client: u8,
    /// Certificate verification result: 0 if verified successfully.
    pub verify: u32,
    /// Sub-TLVs (e.g. [`tlv::SSL_VERSION`]).
    pub sub: Vec<Tlv>,
}

/// Build an SSL TLV (type 0x20): the `client` flags byte, `verify` as a
/// big-endian u32, then the sub-TLVs.
///
/// A sub-TLV value longer than 65535 bytes cannot be represented; it makes
/// the resulting value longer than 65535 bytes too, so encoding a header
/// carrying it fails with [`Error::TooLong`].
pub fn ssl_tlv(client_flags: u8, verify: u32, sub: &[Tlv]) -> Tlv {
    let mut value = Vec::with_capacity(5 + sub.iter().map(|t| 3 + t.value.len()).sum::<usize>());
    value.push(client_flags);
    value.extend_from_slice(&verify.to_be_bytes());
    for t in sub {
        let len = u16::try_from(t.value.len()).unwrap_or(u16::MAX);
        value.push(t.kind);
        value.extend_from_slice(&len.to_be_bytes());
        value.extend_from_slice(&t.value);
    }
    Tlv {
        kind: tlv::SSL,
        value,
    }
}

/// Parse the value of an SSL TLV (type 0x20).
///
/// # Errors
///
/// [`Error::BadTlvLength`] if the value is shorter than 5 bytes,
/// [`Error::TlvTruncated`] (with the offset inside `value`) if a sub-TLV
/// overruns it.
pub fn parse_ssl_tlv(value: &[u8]) -> Result<SslInfo, Error> {
    let (&client, rest) = value.split_first().ok_or(Error::BadTlvLength {
        kind: tlv::SSL,
        len: value.len(),
    })?;
    let verify = rest
        .first_chunk::<4>()
        .map(|b| u32::from_be_bytes(*b))
        .ok_or(Error::BadTlvLength {
            kind: tlv::SSL,
            len: value.len(),
        })?;
    let sub = parse_tlvs(value, 5)?.into_iter().map(|(t, _)| t).collect();
    Ok(SslInfo {
        client,
        verify,
        sub,
    })
}

/// Errors from decoding or encoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The bytes do not start with a v1 or v2 signature.
    #[error("not a PROXY protocol header")]
    NotProxyProtocol,
    /// The v2 version nibble is not 2.
    #[error("unsupported PROXY protocol version {0}")]
    UnsupportedVersion(u8),
    /// The v2 command nibble is neither LOCAL (0) nor PROXY (1).
    #[error("unknown command {0:#x}")]
    UnknownCommand(u8),
    /// The v2 address family nibble is not 0..=3 (PROXY command only).
    #[error("unknown address family {0:#x}")]
    UnknownFamily(u8),
    /// The v2 transport nibble is not 0..=2 (PROXY command only).
    #[error("unknown transport {0:#x}")]
    UnknownTransport(u8),
    /// A family/transport byte that the spec says must be rejected (e.g.
    /// AF_INET with an unspecified transport), with the PROXY command.
    #[error("invalid family/transport byte {0:#04x}")]
    InvalidFamilyTransport(u8),
    /// The declared length is shorter than the family's address block.
    #[error("address block of {len} bytes too short for family {family}")]
    AddressBlockTooShort {
        /// The family nibble (1 = INET, 2 = INET6, 3 = UNIX).
        family: u8,
        /// The declared length of addresses and TLVs.
        len: usize,
    },
    /// A TLV overruns the header; `offset` is where the TLV starts.
    #[error("TLV at offset {offset} overruns the header")]
    TlvTruncated {
        /// Offset of the TLV from the start of the header (or of the SSL
        /// TLV's value, for sub-TLVs).
        offset: usize,
    },
    /// A TLV whose value has an invalid length for its type.
    #[error("TLV {kind:#04x} has an invalid length {len}")]
    BadTlvLength {
        /// The TLV type.
        kind: u8,
        /// Its value's length.
        len: usize,
    },
    /// A malformed version 1 header.
    #[error("malformed v1 header: {0}")]
    BadV1(String),
    /// Too long: a v1 line over 107 bytes, or, on encode, addresses and TLVs
    /// over 65535 bytes.
    #[error("header too long")]
    TooLong,
    /// The CRC32C TLV does not match the header.
    #[error("CRC32c checksum mismatch")]
    Crc32cMismatch,
}

/// The result of [`decode`].
// A short-lived return value, so the size of the inline `Header` (up to
// ~300 bytes with UNIX addresses) is not worth a heap allocation per decode.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole header was read from the first `consumed` bytes; the rest of
    /// the buffer belongs to the application.
    Complete {
        /// The header.
        header: Header,
        /// Its length on the wire.
        consumed: usize,
    },
    /// The buffer is a valid prefix of a header: read more bytes.
    Incomplete {
        /// A lower bound on the total header length if known (16 until the
        /// v2 length field is read, then the exact total); `None` for an
        /// empty buffer or a v1 line without its CRLF yet.
        needed_total: Option<usize>,
    },
}

const V1_PREFIX: &[u8] = b"PROXY ";

/// Quick check: could `buf` (of any length, including empty) be the start
/// of a v1 or v2 header? Only the signatures are checked (`"PROXY "` and the
/// 12-byte v2 signature), not the rest.
pub fn is_prefix_of_header(buf: &[u8]) -> bool {
    let v2 = buf.len().min(V2_SIGNATURE.len());
    let v1 = buf.len().min(V1_PREFIX.len());
    buf[..v2] == V2_SIGNATURE[..v2] || buf[..v1] == V1_PREFIX[..v1]
}

/// Decode a header from the start of `buf`.
///
/// Returns [`Decoded::Complete`] when a whole header is present,
/// [`Decoded::Incomplete`] when `buf` is a valid prefix of a header (never an
/// error for a truncation of a valid header), and an [`Error`] when `buf`
/// cannot be the start of a PROXY header or is malformed. Errors that can be
/// seen from a prefix (signature, version, command, family, a length too
/// short for the addresses) are reported as soon as the bytes are there.
///
/// # Errors
///
/// See [`Error`].
pub fn decode(buf: &[u8]) -> Result<Decoded, Error> {
    match buf.first() {
        None => Ok(Decoded::Incomplete { needed_total: None }),
        Some(b'\r') => decode_v2(buf),
        Some(b'P') => v1::decode(buf),
        Some(_) => Err(Error::NotProxyProtocol),
    }
}

fn decode_v2(buf: &[u8]) -> Result<Decoded, Error> {
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] != V2_SIGNATURE[..sig] {
        return Err(Error::NotProxyProtocol);
    }
    let incomplete = Ok(Decoded::Incomplete {
        needed_total: Some(V2_FIXED_LEN),
    });
    let Some(&ver_cmd) = buf.get(12) else {
        return incomplete;
    };
    let version = ver_cmd >> 4;
    if version != 2 {
        return Err(Error::UnsupportedVersion(version));
    }
    let command = match ver_cmd & 0x0f {
        0 => Command::Local,
        1 => Command::Proxy,
        c => return Err(Error::UnknownCommand(c)),
    };
    let Some(&fam) = buf.get(13) else {
        return incomplete;
    };
    let family = fam >> 4;
    let transport_nibble = fam & 0x0f;
    // Address block length for a known family.
    let addr_len = match family {
        0 => Some(0),
        1 => Some(INET_LEN),
        2 => Some(INET6_LEN),
        3 => Some(UNIX_LEN),
        _ => None,
    };
    if command == Command::Proxy {
        if addr_len.is_none() {
            return Err(Error::UnknownFamily(family));
        }
        if Transport::from_nibble(transport_nibble).is_none() {
            return Err(Error::UnknownTransport(transport_nibble));
        }
        if !matches!(fam, 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32) {
            return Err(Error::InvalidFamilyTransport(fam));
        }
    }
    let Some(len_bytes) = buf.get(14..16) else {
        return incomplete;
    };
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    if command == Command::Proxy
        && let Some(a) = addr_len
        && len < a
    {
        return Err(Error::AddressBlockTooShort { family, len });
    }
    let total = V2_FIXED_LEN + len;
    let Some(header_bytes) = buf.get(..total) else {
        return Ok(Decoded::Incomplete {
            needed_total: Some(total),
        });
    };
    let block = &header_bytes[V2_FIXED_LEN..];

    let (transport, addresses, tlvs) = match command {
        Command::Proxy => {
            // Checked above: the family is known and the block long enough.
            let a = addr_len.unwrap_or(0);
            let addresses = parse_addresses(family, &block[..a]);
            let tlvs = parse_tlvs(header_bytes, V2_FIXED_LEN + a)?;
            let transport = Transport::from_nibble(transport_nibble).unwrap_or(Transport::Unspec);
            (transport, addresses, tlvs)
        }
        Command::Local => {
            // The receiver ignores LOCAL's address block; be lenient: keep
            // what parses, drop what does not.
            let transport = Transport::from_nibble(transport_nibble).unwrap_or(Transport::Unspec);
            match addr_len {
                Some(a) if block.len() >= a => {
                    let addresses = parse_addresses(family, &block[..a]);
                    let tlvs = parse_tlvs(header_bytes, V2_FIXED_LEN + a).unwrap_or_default();
                    (transport, addresses, tlvs)
                }
                _ => (transport, Addresses::Unspec, Vec::new()),
            }
        }
    };

    // Verify CRC32c if present.
    if let Some((t, value_offset)) = tlvs.iter().find(|(t, _)| t.kind == tlv::CRC32C) {
        let expected: [u8; 4] = t
            .value
            .as_slice()
            .try_into()
            .map_err(|_| Error::BadTlvLength {
                kind: tlv::CRC32C,
                len: t.value.len(),
            })?;
        let crc = crc_with_zeroed(header_bytes, *value_offset);
        if crc != u32::from_be_bytes(expected) {
            return Err(Error::Crc32cMismatch);
        }
    }

    Ok(Decoded::Complete {
        header: Header {
            version: 2,
            command,
            transport,
            addresses,
            tlvs: tlvs.into_iter().map(|(t, _)| t).collect(),
        },
        consumed: total,
    })
}

/// CRC32c of `bytes` with the 4 bytes at `zero_at` taken as zero.
fn crc_with_zeroed(bytes: &[u8], zero_at: usize) -> u32 {
    let (before, after) = bytes.split_at(zero_at.min(bytes.len()));
    let after = after.get(4..).unwrap_or(&[]);
    let mut c = crc32c::Crc32c::new();
    c.update(before);
    c.update(&[0; 4]);
    c.update(after);
    c.finish()
}

/// Parse an address block of exactly the family's length.
fn parse_addresses(family: u8, b: &[u8]) -> Addresses {
    fn port(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }
    match family {
        1 if b.len() >= INET_LEN => Addresses::Inet {
            src: SocketAddrV4::new(Ipv4Addr::new(b[0], b[1], b[2], b[3]), port(b, 8)),
            dst: SocketAddrV4::new(Ipv4Addr::new(b[4], b[5], b[6], b[7]), port(b, 10)),
        },
        2 if b.len() >= INET6_LEN => {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&b[..16]);
            d.copy_from_slice(&b[16..32]);
            Addresses::Inet6 {
                src: SocketAddrV6::new(Ipv6Addr::from(s), port(b, 32), 0, 0),
                dst: SocketAddrV6::new(Ipv6Addr::from(d), port(b, 34), 0, 0),
            }
        }
        3 if b.len() >= UNIX_LEN => {
            let mut src = [0u8; UNIX_PATH_LEN];
            let mut dst = [0u8; UNIX_PATH_LEN];
            src.copy_from_slice(&b[..UNIX_PATH_LEN]);
            dst.copy_from_slice(&b[UNIX_PATH_LEN..UNIX_LEN]);
            Addresses::Unix { src, dst }
        }
        _ => Addresses::Unspec,
    }
}

/// Parse TLVs from `bytes[start..]`; returns each TLV with the offset of its
/// value in `bytes`.
fn parse_tlvs(bytes: &[u8], start: usize) -> Result<Vec<(Tlv, usize)>, Error> {
    let mut out = Vec::new();
    let mut at = start;
    while at < bytes.len() {
        let Some(&[kind, hi, lo]) = bytes.get(at..at + 3) else {
            return Err(Error::TlvTruncated { offset: at });
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let Some(value) = bytes.get(at + 3..at + 3 + len) else {
            return Err(Error::TlvTruncated { offset: at });
        };
        out.push((Tlv::new(kind, value), at + 3));
        at += 3 + len;
    }
    Ok(out)
}

fn to_v6(a: SocketAddr) -> SocketAddrV6 {
    match a {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0),
    }
}

fn unmap(a: &SocketAddrV6) -> SocketAddr {
    match a.ip().to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
        None => SocketAddr::V6(*a),
    }
}

impl Header {
    /// A v2 PROXY header for a stream (TCP) connection from `src` to `dst`.
    ///
    /// If the families differ, the IPv4 one is mapped to an IPv4-mapped IPv6
    /// address. IPv6 flow info and scope ids are dropped (not on the wire).
    pub fn proxy(src: SocketAddr, dst: SocketAddr) -> Header {
        let addresses = match (src, dst) {
            (SocketAddr::V4(src), SocketAddr::V4(dst)) => Addresses::Inet { src, dst },
            (src, dst) => Addresses::Inet6 {
                src: to_v6(src),
                dst: to_v6(dst),
            },
        };
        Header {
            version: 2,
            command: Command::Proxy,
            transport: Transport::Stream,
            addresses,
            tlvs: Vec::new(),
        }
    }

    /// A v2 LOCAL header with no addresses (e.g. for health checks).
    pub fn local() -> Header {
        Header {
            version: 2,
            command: Command::Local,
            transport: Transport::Unspec,
            addresses: Addresses::Unspec,
            tlvs: Vec::new(),
        }
    }

    /// Append a TLV.
    pub fn with_tlv(mut self, kind: u8, value: impl Into<Vec<u8>>) -> Header {
        self.tlvs.push(Tlv::new(kind, value));
        self
    }

    /// Replace any CRC32C TLV by one at the end with the correct checksum.
    ///
    /// [`Header::encode`] recomputes the checksum of a CRC32C TLV anyway, so
    /// TLVs added afterwards are still covered; computing it here makes the
    /// header equal to its decoded form.
    pub fn with_crc32c(mut self) -> Header {
        self.tlvs.retain(|t| t.kind != tlv::CRC32C);
        self.tlvs.push(Tlv::new(tlv::CRC32C, [0u8; 4]));
        if let Ok(bytes) = self.to_bytes()
            && let Some(crc) = bytes.get(bytes.len() - 4..)
            && let Some(last) = self.tlvs.last_mut()
        {
            last.value = crc.to_vec();
        }
        self
    }

    /// The source address; IPv4-mapped IPv6 addresses are returned as IPv4.
    /// `None` for unspecified or UNIX addresses.
    pub fn source(&self) -> Option<SocketAddr> {
        match &self.addresses {
            Addresses::Inet { src, .. } => Some(SocketAddr::V4(*src)),
            Addresses::Inet6 { src, .. } => Some(unmap(src)),
            Addresses::Unspec | Addresses::Unix { .. } => None,
        }
    }

    /// The destination address; IPv4-mapped IPv6 addresses are returned as
    /// IPv4. `None` for unspecified or UNIX addresses.
    pub fn destination(&self) -> Option<SocketAddr> {
        match &self.addresses {
            Addresses::Inet { dst, .. } => Some(SocketAddr::V4(*dst)),
            Addresses::Inet6 { dst, .. } => Some(unmap(dst)),
            Addresses::Unspec | Addresses::Unix { .. } => None,
        }
    }

    /// The value of the first TLV of type `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|t| t.kind == kind)
            .map(|t| t.value.as_slice())
    }

    /// The AUTHORITY TLV, if present and valid UTF-8.
    pub fn authority(&self) -> Option<&str> {
        self.tlv(tlv::AUTHORITY)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The ALPN TLV.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tlv(tlv::ALPN)
    }

    /// The UNIQUE_ID TLV.
    pub fn unique_id(&self) -> Option<&[u8]> {
        self.tlv(tlv::UNIQUE_ID)
    }

    /// The parsed SSL TLV, if present.
    pub fn ssl(&self) -> Option<Result<SslInfo, Error>> {
        self.tlv(tlv::SSL).map(parse_ssl_tlv)
    }

    /// Length of the v2 encoding (whether or not it is encodable).
    pub fn encoded_len(&self) -> usize {
        V2_FIXED_LEN
            + self.addresses.encoded_len()
            + self.tlvs.iter().map(|t| 3 + t.value.len()).sum::<usize>()
    }

    /// Append the version 2 encoding to `out` (whatever `self.version` is).
    ///
    /// A CRC32C TLV, if present, gets its checksum computed.
    ///
    /// # Errors
    ///
    /// [`Error::TooLong`] if addresses and TLVs exceed 65535 bytes;
    /// [`Error::InvalidFamilyTransport`] for a PROXY header whose addresses
    /// and transport make a combination the spec forbids (e.g. AF_INET with
    /// [`Transport::Unspec`]); [`Error::BadTlvLength`] for a CRC32C TLV whose
    /// value is not 4 bytes. On error `out` is unchanged.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let len = u16::try_from(self.encoded_len() - V2_FIXED_LEN).map_err(|_| Error::TooLong)?;
        let fam = (self.addresses.family_nibble() << 4) | self.transport.nibble();
        if self.command == Command::Proxy
            && !matches!(fam, 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32)
        {
            return Err(Error::InvalidFamilyTransport(fam));
        }
        if let Some(t) = self
            .tlvs
            .iter()
            .find(|t| t.kind == tlv::CRC32C && t.value.len() != 4)
        {
            return Err(Error::BadTlvLength {
                kind: tlv::CRC32C,
                len: t.value.len(),
            });
        }
        let start = out.len();
        out.reserve(self.encoded_len());
        out.extend_from_slice(&V2_SIGNATURE);
        out.push(match self.command {
            Command::Local => 0x20,
            Command::Proxy => 0x21,
        });
        out.push(fam);
        out.extend_from_slice(&len.to_be_bytes());
        match &self.addresses {
            Addresses::Unspec => {}
            Addresses::Inet { src, dst } => {
                out.extend_from_slice(&src.ip().octets());
                out.extend_from_slice(&dst.ip().octets());
                out.extend_from_slice(&src.port().to_be_bytes());
                out.extend_from_slice(&dst.port().to_be_bytes());
            }
            Addresses::Inet6 { src, dst } => {
                out.extend_from_slice(&src.ip().octets());
                out.extend_from_slice(&dst.ip().octets());
                out.extend_from_slice(&src.port().to_be_bytes());
                out.extend_from_slice(&dst.port().to_be_bytes());
            }
            Addresses::Unix { src, dst } => {
                out.extend_from_slice(src);
                out.extend_from_slice(dst);
            }
        }
        let mut crc_at = None;
        for t in &self.tlvs {
            out.push(t.kind);
            // Fits: the total (and so each value) is <= 65535, checked above.
            out.extend_from_slice(&(t.value.len() as u16).to_be_bytes());
            if t.kind == tlv::CRC32C && crc_at.is_none() {
                crc_at = Some(out.len() - start);
                out.extend_from_slice(&[0; 4]);
            } else {
                out.extend_from_slice(&t.value);
            }
        }
        if let Some(at) = crc_at {
            let crc = crc_with_zeroed(&out[start..], at);
            out[start + at..start + at + 4].copy_from_slice(&crc.to_be_bytes());
        }
        Ok(())
    }

    /// The version 2 encoding as a new vector; see [`Header::encode`].
    ///
    /// # Errors
    ///
    /// As [`Header::encode`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
