//! Generators shared by the property tests of both sides of the codec
//! (`prop.rs`: responses, `prop_request.rs`: requests).
#![allow(dead_code)]

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

pub const TCHAR: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A `token` (RFC 9110 §5.6.2).
pub fn token(max: usize) -> impl Strategy<Value = String> {
    vec(select(TCHAR), 1..=max).prop_map(|b| String::from_utf8(b).expect("tchars are ASCII"))
}

/// A field value: visible ASCII with inner spaces and tabs, no leading or
/// trailing whitespace (those are OWS, not part of the value). May be empty.
pub fn field_value() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        8 => (0x21u8..=0x7e).prop_map(char::from),
        1 => Just(' '),
        1 => Just('\t'),
    ];
    vec(ch, 0..40).prop_map(|cs| {
        let s: String = cs.into_iter().collect();
        s.trim_matches([' ', '\t']).to_string()
    })
}

pub fn cased(name: &'static str) -> impl Strategy<Value = String> {
    select(vec![0u8, 1, 2]).prop_map(move |c| match c {
        0 => name.to_string(),
        1 => name.to_ascii_uppercase(),
        _ => name
            .split('-')
            .map(|p| {
                let mut s = p.to_string();
                if let Some(f) = s.get_mut(0..1) {
                    f.make_ascii_uppercase();
                }
                s
            })
            .collect::<Vec<_>>()
            .join("-"),
    })
}

pub fn ows() -> impl Strategy<Value = &'static str> {
    select(vec!["", "", " ", "\t", "  ", " \t"])
}

#[derive(Debug, Clone)]
pub struct Line {
    /// As written on the wire (any case).
    pub name: String,
    /// The value without OWS.
    pub value: String,
    /// OWS before and after the value.
    pub lead: &'static str,
    pub trail: &'static str,
}

pub fn line(
    name: impl Strategy<Value = String>,
    value: impl Strategy<Value = String>,
) -> impl Strategy<Value = Line> {
    (name, value, ows(), ows()).prop_map(|(name, value, lead, trail)| Line {
        name,
        value,
        lead,
        trail,
    })
}

/// `Connection` values: the tokens `close` and `keep-alive` in any case and
/// list position, and near misses that are neither.
pub fn connection_value() -> impl Strategy<Value = String> {
    select(vec![
        "close",
        "Close",
        "keep-alive",
        "Keep-Alive",
        "upgrade",
        "keep-alive, close",
        "close, keep-alive",
        "Upgrade, Close",
        "te",
        "x-close",
        "keep-alivex",
        "closed",
        ",close,",
    ])
    .prop_map(str::to_string)
}

/// Header maps of up to `max` lines named by `names`, with field values
/// (pairs the `http` crate refuses are left out).
pub fn header_map_of(
    names: impl Strategy<Value = String>,
    max: usize,
) -> impl Strategy<Value = http::HeaderMap> {
    vec((names, field_value()), 0..max).prop_map(|v| {
        let mut h = http::HeaderMap::new();
        for (n, val) in v {
            if let (Ok(n), Ok(val)) = (
                http::HeaderName::from_bytes(n.as_bytes()),
                http::HeaderValue::from_str(&val),
            ) {
                h.append(n, val);
            }
        }
        h
    })
}

/// Characters a path segment may hold as they are (RFC 3986 `pchar`).
pub const PCHAR: &[u8] = b"abcxyzABCXYZ0189-._~!$&'()*+,;=:@";

/// A path segment: `pchar`s and percent-encoded octets (RFC 3986 §3.3).
pub fn path_segment() -> impl Strategy<Value = String> + Clone {
    vec(
        prop_oneof![
            8 => select(PCHAR).prop_map(|b| char::from(b).to_string()),
            1 => (0u8..=255).prop_map(|b| format!("%{b:02X}")),
        ],
        0..8,
    )
    .prop_map(|v| v.concat())
}

/// An absolute path of one to four segments.
pub fn absolute_path() -> impl Strategy<Value = String> + Clone {
    vec(path_segment(), 1..5).prop_map(|v| format!("/{}", v.join("/")))
}

/// `Content-Length` values: numbers, lists of the same number, leading
/// zeros, and malformed ones (signs, hex, lists of different numbers,
/// overflow, non-ASCII digits, parameters).
pub fn content_length_value() -> impl Strategy<Value = String> {
    let n = prop_oneof![0u64..2000, any::<u64>()];
    prop_oneof![
        6 => n.clone().prop_map(|n| n.to_string()),
        1 => n.clone().prop_map(|n| format!("{n}, {n}")),
        1 => n.clone().prop_map(|n| format!("{n},{n} ,\t{n}")),
        1 => n.prop_map(|n| format!("00{n}")),
        2 => select(vec![
            "", "+3", "-1", "0x10", "1 2", "abc", "1.0", "3,", ",3", "3, ,3", "3,4",
            "18446744073709551616", "99999999999999999999", "١", "3;q=1",
        ]).prop_map(str::to_string),
    ]
}

/// `Transfer-Encoding` values: `chunked` in any case, codings before or
/// after it, lists with empty elements, lookalikes.
pub fn transfer_encoding_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec!["chunked", "Chunked", "CHUNKED"]),
        2 => select(vec![
            "gzip", "gzip, chunked", "gzip,chunked", "deflate ,\tchunked", "chunked, chunked",
            "chunked,", ",chunked", "xchunked", "chunkedx", "x-chunked", "identity",
            "chunked;q=1", "chunked , gzip", "chunked, gzip", "",
        ]),
    ]
    .prop_map(str::to_string)
}
