//! Version 1 (text) header decoding.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use crate::{Addresses, Command, Decoded, Error, Header, Transport, V1_MAX_LEN, V1_PREFIX};

const PROTOCOLS: [&str; 3] = ["TCP4", "TCP6", "UNKNOWN"];

fn bad(what: &str) -> Error {
    Error::BadV1(what.to_string())
}

/// Decode a v1 header; `buf` starts with `P`.
pub(crate) fn decode(buf: &[u8]) -> Result<Decoded, Error> {
    let pre = buf.len().min(V1_PREFIX.len());
    if buf[..pre] != V1_PREFIX[..pre] {
        return Err(Error::NotProxyProtocol);
    }
    let incomplete = Ok(Decoded::Incomplete { needed_total: None });
    if buf.len() < V1_PREFIX.len() {
        return incomplete;
    }
    let scan = &buf[..buf.len().min(V1_MAX_LEN)];
    let mut cr = None;
    for (i, &b) in scan.iter().enumerate().skip(V1_PREFIX.len()) {
        if b == b'\r' {
            cr = Some(i);
            break;
        }
        if !(0x20..=0x7e).contains(&b) {
            return Err(bad("invalid character"));
        }
    }
    let Some(cr) = cr else {
        if buf.len() >= V1_MAX_LEN {
            return Err(Error::TooLong);
        }
        check_partial(&buf[V1_PREFIX.len()..])?;
        return incomplete;
    };
    let line = &buf[V1_PREFIX.len()..cr];
    match buf.get(cr + 1) {
        None => {
            check_partial(line)?;
            incomplete
        }
        Some(b'\n') => {
            let consumed = cr + 2;
            if consumed > V1_MAX_LEN {
                return Err(Error::TooLong);
            }
            parse_line(line).map(|header| Decoded::Complete { header, consumed })
        }
        Some(_) => Err(bad("CR not followed by LF")),
    }
}

/// Check that `rest` (after "PROXY ", printable ASCII, no CRLF yet) can
/// still become a valid line.
fn check_partial(rest: &[u8]) -> Result<(), Error> {
    let mut fields = rest.split(|&b| b == b' ');
    let proto = fields.next().unwrap_or(&[]);
    let complete_proto = rest.contains(&b' ');
    let known = PROTOCOLS.iter().any(|p| {
        let p = p.as_bytes();
        if complete_proto {
            proto == p
        } else {
            p.starts_with(proto)
        }
    });
    if !known {
        return Err(bad("unknown protocol"));
    }
    if proto == b"UNKNOWN" {
        return Ok(());
    }
    let rest: Vec<&[u8]> = fields.collect();
    if rest.len() > 4 {
        return Err(bad("too many fields"));
    }
    // Only the last field may be empty (still being received).
    if rest.iter().rev().skip(1).any(|f| f.is_empty()) {
        return Err(bad("empty field"));
    }
    let ok_char = |b: &u8| b.is_ascii_hexdigit() || *b == b'.' || *b == b':';
    if !rest.iter().all(|f| f.iter().all(ok_char)) {
        return Err(bad("invalid character in address or port"));
    }
    Ok(())
}

fn port(s: &str) -> Result<u16, Error> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("invalid port"));
    }
    s.parse::<u16>().map_err(|_| bad("port out of range"))
}

fn parse_line(line: &[u8]) -> Result<Header, Error> {
    // Printable ASCII was checked by the caller.
    let line = std::str::from_utf8(line).map_err(|_| bad("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let (transport, addresses) = match fields.as_slice() {
        ["UNKNOWN", ..] => (Transport::Unspec, Addresses::Unspec),
        ["TCP4", src, dst, sport, dport] => {
            let src = Ipv4Addr::from_str(src).map_err(|_| bad("invalid IPv4 source"))?;
            let dst = Ipv4Addr::from_str(dst).map_err(|_| bad("invalid IPv4 destination"))?;
            (
                Transport::Stream,
                Addresses::Inet {
                    src: SocketAddrV4::new(src, port(sport)?),
                    dst: SocketAddrV4::new(dst, port(dport)?),
                },
            )
        }
        ["TCP6", src, dst, sport, dport] => {
            let src = Ipv6Addr::from_str(src).map_err(|_| bad("invalid IPv6 source"))?;
            let dst = Ipv6Addr::from_str(dst).map_err(|_| bad("invalid IPv6 destination"))?;
            (
                Transport::Stream,
                Addresses::Inet6 {
                    src: SocketAddrV6::new(src, port(sport)?, 0, 0),
                    dst: SocketAddrV6::new(dst, port(dport)?, 0, 0),
                },
            )
        }
        ["TCP4" | "TCP6", ..] => return Err(bad("wrong number of fields")),
        _ => return Err(bad("unknown protocol")),
    };
    Ok(Header {
        version: 1,
        command: Command::Proxy,
        transport,
        addresses,
        tlvs: Vec::new(),
    })
}
