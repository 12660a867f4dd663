//! Property tests of the server side (`parse_request`,
//! `encode_response_head`, `is_bodiless`) against an oracle written from
//! RFC 9112 (§2.2 message parsing, §3 request line and Host, §5 field
//! syntax, §6.1–6.3 framing, §9.3 persistence) and RFC 9110 (§7.2 Host,
//! §10.1.1 Expect), independently of `request.rs`.
//!
//! Where the RFC leaves the recipient a choice, the oracle takes the strict
//! one the node's edge promises (documented at each place): a
//! Transfer-Encoding other than one lone `chunked` line is refused (400),
//! Transfer-Encoding on HTTP/1.0 is refused, empty Content-Length list
//! elements are refused, TE + CL is read as chunked without its CL and the
//! connection closes after it.
//!
//! Bare LF line ends: RFC 9112 §2.2 lets a recipient "recognize a single
//! LF as a line terminator and ignore any preceding CR". httparse does, and
//! the oracle accepts it: the node never forwards the client's head bytes
//! (it writes its own CRLF head upstream), so no later parser can read the
//! same bytes differently. A bare CR is never a line end (§2.2: invalid),
//! and is refused.

use bytes::BytesMut;
use h1_codec::{
    Framing, RequestError, RequestFraming, RequestHead, RequestLimits, ResponseFraming,
    encode_response_head, is_bodiless, parse_request, parse_response,
};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

mod common;
use common::*;

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Field names the oracle gives a meaning to; "other" headers avoid them.
const SPECIAL: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "expect",
];

/// Host values labelled by hand from RFC 9110 §7.2 / RFC 3986 §3.2.2
/// (`uri-host [":" port]`): true = valid.
const HOSTS: &[(&str, bool)] = &[
    ("a.example", true),
    ("A.Example.COM", true),
    ("shop.example:8080", true),
    ("127.0.0.1", true),
    ("127.0.0.1:80", true),
    ("[::1]", true),
    ("[2001:db8::7]:443", true),
    ("[v1.fe80::a+en1]", true),
    ("xn--bcher-kva.example", true),
    ("a%2Db.example", true),
    ("under_score.example", true),
    ("a.example:", true),
    ("sub-delims!$&'()*+,;=.example", true),
    ("", true),
    ("a b", false),
    ("a/b", false),
    ("a.example/", false),
    ("user@a.example", false),
    ("a.example:8x", false),
    ("a.example:80:80", false),
    ("[::1", false),
    ("[]", false),
    ("[::1]x", false),
    ("a%zz.example", false),
    ("a%4", false),
    ("a?b", false),
    ("a#b", false),
    ("\"a\"", false),
    ("a\\b", false),
    ("<a>", false),
];

fn expect_value() -> impl Strategy<Value = String> {
    select(vec![
        "100-continue",
        "100-Continue",
        "100-CONTINUE",
        "foo",
        "100-continue-x",
        "101-continue",
    ])
    .prop_map(str::to_string)
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
            .prop_map(str::to_string),
        1 => token(12).prop_filter("not CONNECT or OPTIONS", |t| t != "CONNECT" && t != "OPTIONS"),
    ]
}

/// origin-form (`absolute-path ["?" query]`, RFC 9112 §3.2.1) or
/// absolute-form (§3.2.2).
fn target() -> impl Strategy<Value = String> {
    let query = vec(
        prop_oneof![
            8 => select(PCHAR).prop_map(|b| char::from(b).to_string()),
            1 => select(vec!["/", "?"]).prop_map(str::to_string),
        ],
        0..10,
    )
    .prop_map(|v| v.concat());
    let origin = (absolute_path(), proptest::option::of(query)).prop_map(|(p, q)| match q {
        Some(q) => format!("{p}?{q}"),
        None => p,
    });
    prop_oneof![
        6 => origin.clone(),
        1 => (select(vec!["http", "https", "HTTP"]), select(vec!["a.example", "a.example:8080", "[::1]:81"]), origin)
            .prop_map(|(s, a, p)| format!("{s}://{a}{p}")),
    ]
}

#[derive(Debug, Clone)]
struct RequestCase {
    /// Empty lines before the request line (§2.2), each CRLF or LF.
    empty_lines: Vec<&'static str>,
    method: String,
    target: String,
    http10: bool,
    lines: Vec<Line>,
    /// Line ends are a bare LF (§2.2 MAY) instead of CRLF.
    lf_only: bool,
    /// What follows the head: the body and the next request.
    after: Vec<u8>,
    read_sizes: Vec<usize>,
}

/// A Host line, mostly with a valid value.
fn host_line() -> impl Strategy<Value = Line> {
    let valid = HOSTS.iter().take_while(|(_, ok)| *ok).count();
    let value = prop_oneof![
        8 => (0..valid).prop_map(|i| HOSTS[i].0.to_string()),
        1 => select(HOSTS).prop_map(|h| h.0.to_string()),
    ];
    line(cased("host"), value)
}

fn request_case() -> impl Strategy<Value = RequestCase> {
    let other = line(
        token(20).prop_filter("not a special name", |n| {
            !SPECIAL.iter().any(|s| n.eq_ignore_ascii_case(s))
        }),
        field_value(),
    );
    let hosts =
        prop_oneof![8 => vec(host_line(), 1..=1), 1 => Just(vec![]), 1 => vec(host_line(), 2..=2)];
    // A second Content-Length is mostly the same value, to reach the
    // "identical values" rule as well as the conflict.
    let cl = vec(line(cased("content-length"), content_length_value()), 0..3).prop_flat_map(|v| {
        let first = v.first().map(|l| l.value.clone());
        (Just(v), any::<bool>()).prop_map(move |(mut v, same)| {
            if same && let Some(f) = &first {
                for l in v.iter_mut() {
                    l.value = f.clone();
                }
            }
            v
        })
    });
    let te = prop_oneof![
        4 => Just(vec![]),
        2 => vec(line(cased("transfer-encoding"), transfer_encoding_value()), 1..=1),
        1 => vec(line(cased("transfer-encoding"), transfer_encoding_value()), 2..=2),
    ];
    let conn = vec(line(cased("connection"), connection_value()), 0..3);
    let expect = vec(line(cased("expect"), expect_value()), 0..=1);
    (
        (
            vec(select(vec!["\r\n", "\n"]), 0..=2).prop_map(|mut v| {
                // Mostly none.
                if v.len() == 1 {
                    v.clear();
                }
                v
            }),
            method(),
            target(),
            any::<bool>(),
            prop_oneof![6 => Just(false), 1 => Just(true)],
        ),
        vec(other, 0..12),
        hosts,
        cl,
        te,
        conn,
        expect,
        vec(any::<u8>(), 0..64),
        vec(1usize..200, 1..6),
    )
        .prop_flat_map(
            |(
                (empty_lines, method, target, http10, lf_only),
                other,
                hosts,
                cl,
                te,
                conn,
                expect,
                after,
                read_sizes,
            )| {
                let mut lines = other;
                lines.extend(hosts);
                lines.extend(cl);
                lines.extend(te);
                lines.extend(conn);
                lines.extend(expect);
                (
                    Just(lines).prop_shuffle(),
                    Just((
                        empty_lines,
                        method,
                        target,
                        http10,
                        lf_only,
                        after,
                        read_sizes,
                    )),
                )
            },
        )
        .prop_map(
            |(lines, (empty_lines, method, target, http10, lf_only, after, read_sizes))| {
                RequestCase {
                    empty_lines,
                    method,
                    target,
                    http10,
                    lines,
                    lf_only,
                    after,
                    read_sizes,
                }
            },
        )
}

impl RequestCase {
    fn eol(&self) -> &'static str {
        if self.lf_only { "\n" } else { "\r\n" }
    }

    /// The empty lines before the request line.
    fn lead(&self) -> Vec<u8> {
        self.empty_lines.concat().into_bytes()
    }

    /// The head proper: request line, field lines, the empty line.
    fn head(&self) -> Vec<u8> {
        let eol = self.eol();
        let v = if self.http10 { "1.0" } else { "1.1" };
        let mut out = format!("{} {} HTTP/{v}{eol}", self.method, self.target);
        for l in &self.lines {
            out.push_str(&format!("{}:{}{}{}{eol}", l.name, l.lead, l.value, l.trail));
        }
        out.push_str(eol);
        out.into_bytes()
    }

    fn values(&self, name: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.name.eq_ignore_ascii_case(name))
            .map(|l| l.value.as_str())
            .collect()
    }

    /// Elements of a comma-separated list field (RFC 9110 §5.6.1), OWS
    /// trimmed, lower-cased.
    fn list(&self, name: &str) -> Vec<String> {
        self.values(name)
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim_matches([' ', '\t']).to_ascii_lowercase())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------

/// Why the oracle refuses a request (each a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No Host on 1.1, more than one Host line, or an invalid Host value.
    Host,
    /// A Transfer-Encoding other than one lone `chunked`.
    Coding,
    /// Transfer-Encoding on HTTP/1.0.
    CodingOnHttp10,
    /// An invalid or conflicting Content-Length.
    Length,
}

#[derive(Debug, PartialEq)]
struct Want {
    framing: RequestFraming,
    keep_alive: bool,
    expect_continue: bool,
    /// Lower-cased name and value, in the order received.
    headers: Vec<(String, String)>,
}

fn oracle(c: &RequestCase) -> Result<Want, Vec<Refusal>> {
    let mut refusals = Vec::new();
    // §3.2: a 1.1 request without Host, more than one Host field line, or
    // an invalid Host value: 400.
    let hosts = c.values("host");
    let host_ok = match hosts.as_slice() {
        [] => c.http10,
        [h] => HOSTS
            .iter()
            .find(|(v, _)| v == h)
            .is_some_and(|(_, ok)| *ok),
        _ => false,
    };
    if !host_ok {
        refusals.push(Refusal::Host);
    }
    let te_lines = c.values("transfer-encoding");
    let cl_lines = c.values("content-length");
    let conn = c.list("connection");
    // §9.3: "close" ends the connection in any version; otherwise 1.1
    // persists and 1.0 only with "keep-alive".
    let mut keep_alive =
        !conn.iter().any(|t| t == "close") && (!c.http10 || conn.iter().any(|t| t == "keep-alive"));
    let framing = if !te_lines.is_empty() {
        // §6.1: TE on 1.0 is faulty framing (refused here).
        if c.http10 {
            refusals.push(Refusal::CodingOnHttp10);
        }
        // §6.3 (4): a request whose final coding is not chunked is a 400;
        // this edge also refuses any coding before it and TE over two
        // lines (one lone `chunked` or nothing).
        let lone_chunked = matches!(te_lines.as_slice(), [v] if v.eq_ignore_ascii_case("chunked"));
        if !lone_chunked {
            refusals.push(Refusal::Coding);
        }
        // §6.1 / §6.3 (3): TE overrides CL; CL is removed and the
        // connection closes after the response.
        if !cl_lines.is_empty() {
            keep_alive = false;
        }
        RequestFraming::Chunked
    } else if !cl_lines.is_empty() {
        // §6.3 (5): every list element valid (1*DIGIT, RFC 9110 §8.6) and
        // all the same, else unrecoverable. Empty elements: refused.
        let mut n: Option<u64> = None;
        let mut ok = true;
        for t in c.list("content-length") {
            let v = (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse::<u64>().ok())
                .flatten();
            match (v, n) {
                (None, _) => ok = false,
                (Some(v), Some(p)) if v != p => ok = false,
                (Some(v), _) => n = Some(v),
            }
        }
        match n {
            Some(n) if ok => RequestFraming::Length(n),
            _ => {
                refusals.push(Refusal::Length);
                RequestFraming::None
            }
        }
    } else {
        // §6.3 (6): a request with neither has no body.
        RequestFraming::None
    };
    if !refusals.is_empty() {
        return Err(refusals);
    }
    // RFC 9110 §10.1.1: case-insensitive; ignored in HTTP/1.0.
    let expect_continue = !c.http10
        && c.values("expect")
            .first()
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let headers = c
        .lines
        .iter()
        .filter(|l| {
            !(framing == RequestFraming::Chunked && l.name.eq_ignore_ascii_case("content-length"))
        })
        .map(|l| (l.name.to_ascii_lowercase(), l.value.clone()))
        .collect();
    Ok(Want {
        framing,
        keep_alive,
        expect_continue,
        headers,
    })
}

fn refused_as(e: &RequestError, refusals: &[Refusal]) -> bool {
    let r = match e {
        RequestError::MissingHost | RequestError::DuplicateHost => Refusal::Host,
        RequestError::Header(name) if name == "host" => Refusal::Host,
        RequestError::TransferCoding(_) => Refusal::Coding,
        RequestError::TransferEncodingHttp10 => Refusal::CodingOnHttp10,
        RequestError::ContentLength => Refusal::Length,
        _ => return false,
    };
    refusals.contains(&r) && e.status() == StatusCode::BAD_REQUEST
}

fn check_head(c: &RequestCase, want: &Want, head: &RequestHead) -> Result<(), TestCaseError> {
    prop_assert_eq!(head.method.as_str(), c.method.as_str());
    // RFC 3986 §3.1: the scheme is case-insensitive (the URI type
    // lower-cases it).
    // Only an absolute-form target has a scheme; "://" inside an
    // origin-form path is just path.
    let target = match c.target.split_once("://") {
        Some((scheme, rest)) if !c.target.starts_with('/') => {
            format!("{}://{rest}", scheme.to_ascii_lowercase())
        }
        _ => c.target.clone(),
    };
    prop_assert_eq!(head.uri.to_string(), target);
    prop_assert_eq!(
        head.version,
        if c.http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        }
    );
    prop_assert_eq!(head.framing, want.framing);
    prop_assert_eq!(head.keep_alive, want.keep_alive);
    prop_assert_eq!(head.expect_continue, want.expect_continue);
    prop_assert_eq!(head.headers.len(), want.headers.len());
    // Every name's values, in the order received, duplicates kept.
    for (name, _) in &want.headers {
        let expected: Vec<&[u8]> = want
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes())
            .collect();
        let got: Vec<&[u8]> = head
            .headers
            .get_all(name.as_str())
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        prop_assert_eq!(got, expected, "values of {}", name);
    }
    Ok(())
}

const ROOMY: RequestLimits = RequestLimits {
    max_head: 64 * 1024,
    max_headers: 100,
};

/// The prefix with its leading empty lines gone: what `Ok(None)` may
/// leave (§2.2 lets the parser drop them as they arrive).
fn without_empty_lines(mut b: &[u8]) -> &[u8] {
    loop {
        match b {
            [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] => b = rest,
            _ => return b,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn request_head_parses_per_rfc9112(c in request_case()) {
        let lead = c.lead();
        let head = c.head();
        let mut wire = lead.clone();
        wire.extend_from_slice(&head);
        let head_end = wire.len();
        wire.extend_from_slice(&c.after);
        let want = oracle(&c);
        let shown = String::from_utf8_lossy(&wire[..head_end]).into_owned();

        // Whole message at once.
        let mut buf = BytesMut::from(&wire[..]);
        match (parse_request(&mut buf, ROOMY), &want) {
            (Ok(Some(h)), Ok(w)) => {
                check_head(&c, w, &h).map_err(|e| TestCaseError::fail(format!("{e} for {shown:?}")))?;
                // The body / next request is untouched.
                prop_assert_eq!(&buf[..], &c.after[..]);
            }
            (Err(e), Err(refusals)) => {
                prop_assert!(refused_as(&e, refusals), "{:?} for {:?}, oracle says {:?}", e, shown, refusals);
            }
            (got, want) => prop_assert!(false, "{:?} for {:?}, oracle says {:?}", got, shown, want),
        }

        // Every strict prefix: Ok(None), nothing consumed but the empty
        // lines before the request line.
        for cut in 0..head_end {
            let mut buf = BytesMut::from(&wire[..cut]);
            let r = parse_request(&mut buf, ROOMY);
            prop_assert!(matches!(r, Ok(None)), "prefix {} of {:?}: {:?}", cut, shown, r);
            prop_assert_eq!(&buf[..], without_empty_lines(&wire[..cut]));
        }

        // Fed in reads: Ok(None) until the head is complete, then the same
        // answer, and the buffer holds exactly what was read after it.
        let mut buf = BytesMut::new();
        let mut done = false;
        let mut at = 0;
        let mut i = 0;
        while at < wire.len() && !done {
            let n = c.read_sizes[i % c.read_sizes.len()];
            let end = (at + n).min(wire.len());
            buf.extend_from_slice(&wire[at..end]);
            at = end;
            i += 1;
            match (parse_request(&mut buf, ROOMY), &want) {
                (Ok(None), _) => prop_assert!(at < head_end, "no head after {} of {} bytes", at, head_end),
                (Ok(Some(h)), Ok(w)) => {
                    prop_assert!(at >= head_end);
                    check_head(&c, w, &h)?;
                    prop_assert_eq!(&buf[..], &wire[head_end..at]);
                    done = true;
                }
                (Err(e), Err(refusals)) => {
                    prop_assert!(at >= head_end);
                    prop_assert!(refused_as(&e, refusals));
                    done = true;
                }
                (got, _) => prop_assert!(false, "{:?} after {} bytes of {:?}", got, at, shown),
            }
        }
        prop_assert!(done);
    }

    /// The limits: the head exactly at `max_head` bytes and `max_headers`
    /// lines passes them; one byte or one line less is a 431, for a byte
    /// past the limit also while the head is still incomplete.
    #[test]
    fn request_limits(c in request_case(), cut in any::<prop::sample::Index>()) {
        let lead = c.lead();
        let head = c.head();
        let mut wire = lead.clone();
        wire.extend_from_slice(&head);
        let head_end = wire.len();
        wire.extend_from_slice(&c.after);
        let exact = RequestLimits { max_head: head.len(), max_headers: c.lines.len() };
        let outcome = |limits: RequestLimits, bytes: &[u8]| {
            let mut buf = BytesMut::from(bytes);
            parse_request(&mut buf, limits).map(|h| h.map(|h| (h.framing, h.keep_alive)))
        };
        let roomy = outcome(ROOMY, &wire);
        prop_assert_eq!(outcome(exact, &wire), roomy.clone());

        let small = RequestLimits { max_head: head.len() - 1, ..exact };
        let r = parse_request(&mut BytesMut::from(&wire[..]), small);
        prop_assert!(matches!(r, Err(RequestError::HeadTooLarge(n)) if n == head.len() - 1), "{:?}", r);
        prop_assert_eq!(r.err().map(|e| e.status()), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));

        // Incomplete and already over the limit: 431 without waiting. At
        // the limit: wait.
        let k = cut.index(head.len() - 1);
        let limit = RequestLimits { max_head: k, ..ROOMY };
        let r = parse_request(&mut BytesMut::from(&wire[..lead.len() + k + 1]), limit);
        prop_assert!(matches!(r, Err(RequestError::HeadTooLarge(n)) if n == k), "{:?}", r);
        let r = parse_request(&mut BytesMut::from(&wire[..lead.len() + k]), limit);
        prop_assert!(matches!(r, Ok(None)), "{:?}", r);

        if !c.lines.is_empty() {
            let fewer = RequestLimits { max_headers: c.lines.len() - 1, ..ROOMY };
            let r = parse_request(&mut BytesMut::from(&wire[..]), fewer);
            prop_assert!(matches!(r, Err(RequestError::TooManyHeaders(n)) if n == c.lines.len() - 1), "{:?}", r);
            prop_assert_eq!(r.err().map(|e| e.status()), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        prop_assert!(head_end <= wire.len());
    }
}

/// The generated cases reach every outcome of the oracle: the property
/// above is not passing on accepted GETs alone.
#[test]
fn request_cases_cover_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = request_case();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3000 {
        let c = strategy.new_tree(&mut runner).expect("a case").current();
        let outcome = match oracle(&c) {
            Ok(w) => format!(
                "{:?} ka={} expect={} lf={} lead={} http10={}",
                std::mem::discriminant(&w.framing),
                w.keep_alive,
                w.expect_continue,
                c.lf_only,
                !c.empty_lines.is_empty(),
                c.http10
            ),
            Err(r) => format!("{r:?}"),
        };
        seen.insert(outcome);
    }
    let all = format!("{seen:#?}");
    for want in [
        "[Host]",
        "[Coding]",
        "[CodingOnHttp10]",
        "[Length]",
        "ka=true expect=true",
        "ka=false expect=false",
        "lf=true",
        "lead=true",
    ] {
        assert!(all.contains(want), "no {want} in {all}");
    }
    for framing in [
        RequestFraming::None,
        RequestFraming::Length(0),
        RequestFraming::Chunked,
    ] {
        let d = format!("{:?}", std::mem::discriminant(&framing));
        assert!(all.contains(&d), "no {framing:?} in {all}");
    }
}

// ---------------------------------------------------------------------------
// Smuggling shapes and other refusals, one by one
// ---------------------------------------------------------------------------

fn parse(wire: &[u8]) -> (Result<Option<RequestHead>, RequestError>, BytesMut) {
    let mut buf = BytesMut::from(wire);
    let r = parse_request(&mut buf, ROOMY);
    (r, buf)
}

fn refused(wire: &str) -> RequestError {
    match parse(wire.as_bytes()).0 {
        Err(e) => {
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{wire:?}: {e}");
            e
        }
        Ok(h) => panic!("{wire:?} accepted: {h:?}"),
    }
}

fn accepted(wire: &str) -> RequestHead {
    match parse(wire.as_bytes()) {
        (Ok(Some(h)), _) => h,
        (other, _) => panic!("{wire:?}: {other:?}"),
    }
}

#[test]
fn te_and_cl_is_chunked_without_cl_and_closes() {
    for wire in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n",
        // An invalid CL next to TE is removed all the same (TE overrides).
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5, 6\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n",
    ] {
        let (r, rest) = parse(wire.as_bytes());
        let h = r.unwrap().unwrap();
        assert_eq!(h.framing, RequestFraming::Chunked, "{wire:?}");
        assert!(!h.headers.contains_key("content-length"), "{wire:?}");
        assert!(!h.keep_alive, "{wire:?}");
        assert_eq!(&rest[..], b"0\r\n\r\nGET /x HTTP/1.1\r\n");
    }
}

#[test]
fn transfer_codings_other_than_a_lone_chunked_are_refused() {
    for te in [
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunkedx\r\n",
        "Transfer-Encoding: \"chunked\"\r\n",
        "Transfer-Encoding: chunked;a=b\r\n",
        "Transfer-Encoding: \r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: \r\n",
    ] {
        let wire = format!("POST / HTTP/1.1\r\nHost: a\r\n{te}\r\n");
        assert!(
            matches!(refused(&wire), RequestError::TransferCoding(_)),
            "{wire:?}"
        );
    }
    // Any case and OWS around a lone chunked are fine.
    let h = accepted("POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:\t CHUNKED \r\n\r\n");
    assert_eq!(h.framing, RequestFraming::Chunked);
    assert!(h.keep_alive);
}

#[test]
fn transfer_encoding_on_http10_is_refused() {
    for wire in [
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
    ] {
        assert_eq!(refused(wire), RequestError::TransferEncodingHttp10);
    }
}

#[test]
fn bad_or_conflicting_content_lengths_are_refused() {
    for cl in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: 5,\r\n",
        "Content-Length: ,5\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: 1\t0\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 5a\r\n",
        "Content-Length: 5.0\r\n",
        "Content-Length: \r\n",
        "Content-Length: 18446744073709551616\r\n",
    ] {
        let wire = format!("POST / HTTP/1.1\r\nHost: a\r\n{cl}\r\n");
        assert_eq!(refused(&wire), RequestError::ContentLength, "{wire:?}");
    }
    // The same value repeated (§6.3 (5)) and leading zeros are one length.
    for cl in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: 005\r\n",
        "Content-Length:5 \r\n",
    ] {
        let wire = format!("POST / HTTP/1.1\r\nHost: a\r\n{cl}\r\n");
        assert_eq!(
            accepted(&wire).framing,
            RequestFraming::Length(5),
            "{wire:?}"
        );
    }
}

#[test]
fn host_must_be_one_valid_host() {
    assert_eq!(
        refused("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        RequestError::DuplicateHost
    );
    assert_eq!(
        refused("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
        RequestError::DuplicateHost
    );
    assert_eq!(
        refused("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
        RequestError::DuplicateHost
    );
    assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), RequestError::MissingHost);
    assert_eq!(
        refused("GET http://a.example/ HTTP/1.1\r\n\r\n"),
        RequestError::MissingHost
    );
    // HTTP/1.0 needs none.
    accepted("GET / HTTP/1.0\r\n\r\n");
    for (host, ok) in HOSTS {
        let wire = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        if *ok {
            accepted(&wire);
        } else {
            assert_eq!(
                refused(&wire),
                RequestError::Header("host".into()),
                "{wire:?}"
            );
        }
    }
}

#[test]
fn obs_fold_and_space_before_colon_are_refused() {
    for wire in [
        // §5.2: obs-fold in a request: 400 (or replaced by SP; refused here).
        "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        "GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        // §5.1: whitespace between name and colon: MUST 400.
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 5\r\n\r\n",
    ] {
        assert!(matches!(refused(wire), RequestError::Head(_)), "{wire:?}");
    }
}

#[test]
fn bare_lf_is_a_line_end_and_bare_cr_is_not() {
    // §2.2 MAY: see the module doc for why accepting is safe here.
    let crlf = accepted("POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n");
    for wire in [
        "POST /p HTTP/1.1\nHost: a\nContent-Length: 3\n\n",
        "POST /p HTTP/1.1\r\nHost: a\nContent-Length: 3\r\n\n",
        "POST /p HTTP/1.1\nHost: a\r\nContent-Length: 3\n\r\n",
        "\nPOST /p HTTP/1.1\nHost: a\nContent-Length: 3\n\n",
    ] {
        let (r, rest) = parse(format!("{wire}abc").as_bytes());
        let h = r.unwrap().unwrap();
        assert_eq!(
            (
                &h.method,
                &h.uri,
                h.version,
                &h.headers,
                h.framing,
                h.keep_alive
            ),
            (
                &crlf.method,
                &crlf.uri,
                crlf.version,
                &crlf.headers,
                crlf.framing,
                crlf.keep_alive
            ),
            "{wire:?}"
        );
        assert_eq!(&rest[..], b"abc");
    }
    // §2.2: a bare CR is invalid wherever it is.
    for wire in [
        "GET / HTTP/1.1\rHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
        "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n",
        // Before the request line too: not an empty line.
        "\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "\r\n\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(
            matches!(parse(wire.as_bytes()).0, Err(RequestError::Head(_))),
            "{wire:?}"
        );
    }
    // A CR at the end of what arrived may be the start of a CRLF.
    let (r, rest) = parse(b"\r\n\r");
    assert!(matches!(r, Ok(None)));
    assert_eq!(&rest[..], b"\r");
}

#[test]
fn control_bytes_and_bad_request_lines_are_refused() {
    for wire in [
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX\0: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        " GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET / http/1.1\r\nHost: a\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(parse(wire.as_bytes()).0.is_err(), "{wire:?}");
    }
    // obs-text in a value is allowed (§5.5) and kept as bytes.
    let (r, _) = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: \x80\xff\r\n\r\n");
    assert_eq!(r.unwrap().unwrap().headers["x"].as_bytes(), b"\x80\xff");
}

#[test]
fn request_target_forms_follow_the_method() {
    // §3.2.1: origin-form has no fragment (the URI parser would silently
    // drop it, routing `/a#/../b` as `/a`).
    assert_eq!(
        refused("GET /a#f HTTP/1.1\r\nHost: a\r\n\r\n"),
        RequestError::Target
    );
    assert_eq!(
        refused("GET http://a.example/a#f HTTP/1.1\r\nHost: a\r\n\r\n"),
        RequestError::Target
    );
    // §3.2.4: asterisk-form is for OPTIONS only.
    let h = accepted("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(h.uri, "*");
    assert_eq!(
        refused("GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
        RequestError::Target
    );
    // §3.2.3: authority-form is for CONNECT only.
    let h = accepted("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n");
    assert_eq!(h.uri.authority().map(|a| a.as_str()), Some("a.example:443"));
    assert_eq!(
        refused("GET a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
        RequestError::Target
    );
    // §3.2.2: absolute-form.
    let h = accepted("GET http://a.example:8080/p?q HTTP/1.1\r\nHost: a.example:8080\r\n\r\n");
    assert_eq!(h.uri, "http://a.example:8080/p?q");
    for wire in [
        &b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(
            parse(wire).0.is_err(),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }
}

#[test]
fn keep_alive_and_expect() {
    let ka = |wire: &str| accepted(wire).keep_alive;
    assert!(ka("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!ka(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, Close\r\n\r\n"
    ));
    assert!(!ka(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
    ));
    assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
    assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    assert!(!ka(
        "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
    ));
    let ex = |wire: &str| accepted(wire).expect_continue;
    assert!(ex(
        "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
    ));
    assert!(!ex(
        "PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    ));
    assert!(!ex(
        "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue-x\r\n\r\n"
    ));
}

#[test]
fn limits_at_the_edges() {
    let head = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    let limits = |max_head, max_headers| RequestLimits {
        max_head,
        max_headers,
    };
    let run = |wire: &str, l| parse_request(&mut BytesMut::from(wire.as_bytes()), l);
    assert!(matches!(run(head, limits(head.len(), 3)), Ok(Some(_))));
    assert_eq!(
        run(head, limits(head.len() - 1, 3)).err(),
        Some(RequestError::HeadTooLarge(head.len() - 1))
    );
    assert_eq!(
        run(head, limits(head.len(), 2)).err(),
        Some(RequestError::TooManyHeaders(2))
    );
    // Too many lines is a 431 before the head is complete.
    assert_eq!(
        run(
            "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC",
            limits(1000, 2)
        )
        .err(),
        Some(RequestError::TooManyHeaders(2))
    );
    // Empty lines before the request line do not count.
    let led = format!("\r\n\n{head}");
    assert!(matches!(run(&led, limits(head.len(), 3)), Ok(Some(_))));
    // Past the header slots kept on the stack.
    for n in [127usize, 128, 129, 300] {
        let mut wire = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 1..n {
            wire.push_str(&format!("X-{i}: {i}\r\n"));
        }
        wire.push_str("\r\n");
        let h = run(&wire, limits(64 * 1024, n)).unwrap().unwrap();
        assert_eq!(h.headers.len(), n);
        assert_eq!(h.headers["x-1"], "1");
        assert_eq!(
            run(&wire, limits(64 * 1024, n - 1)).err(),
            Some(RequestError::TooManyHeaders(n - 1))
        );
    }
}

// ---------------------------------------------------------------------------
// Response heads
// ---------------------------------------------------------------------------

fn header_map(framing_names: bool) -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        6 => token(20),
        if framing_names { 2 } else { 0 } => select(vec![
            "content-length", "Transfer-Encoding", "connection", "Content-Length",
        ]).prop_map(str::to_string),
    ];
    header_map_of(name, 12)
}

fn response_framing() -> impl Strategy<Value = ResponseFraming> {
    prop_oneof![
        Just(ResponseFraming::Bodiless),
        Just(ResponseFraming::Chunked),
        Just(ResponseFraming::Close),
        any::<u64>().prop_map(ResponseFraming::Length),
        (0u64..100_000).prop_map(ResponseFraming::Length),
    ]
}

fn status() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        3 => select(vec![100u16, 101, 103, 200, 201, 204, 206, 301, 304, 404, 431, 500, 503]),
        1 => 100u16..=999,
    ]
    .prop_map(|s| StatusCode::from_u16(s).expect("100..=999"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn response_head_reads_back(
        status in status(),
        h in header_map(true),
        extra in header_map(true),
        framing in response_framing(),
        prefix in vec(any::<u8>(), 0..8),
        body in vec(any::<u8>(), 0..16),
    ) {
        let mut out = prefix.clone();
        let extra: Vec<(&HeaderName, &HeaderValue)> = extra.iter().collect();
        encode_response_head(&mut out, status, &h, &extra, framing);
        // Appends: whatever was in the buffer stays.
        prop_assert!(out.starts_with(&prefix));
        let wire = &out[prefix.len()..];
        let shown = String::from_utf8_lossy(wire).into_owned();

        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut raw);
        let n = resp.parse(wire).map_err(|e| TestCaseError::fail(format!("{e}: {shown:?}")))?;
        prop_assert_eq!(n, httparse::Status::Complete(wire.len()));
        prop_assert_eq!(resp.version, Some(1));
        prop_assert_eq!(resp.code, Some(status.as_u16()));
        prop_assert_eq!(resp.reason, Some(status.canonical_reason().unwrap_or("Unknown")));

        // The map's headers then the extra ones, in order; their framing
        // headers only for Bodiless; then this framing's own header.
        let is_framing = |n: &str| n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding");
        let mut want: Vec<(String, Vec<u8>)> = h
            .iter()
            .chain(extra.iter().copied())
            .filter(|(n, _)| framing == ResponseFraming::Bodiless || !is_framing(n.as_str()))
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        match framing {
            ResponseFraming::Bodiless | ResponseFraming::Close => {}
            ResponseFraming::Length(n) => want.push(("content-length".into(), n.to_string().into_bytes())),
            ResponseFraming::Chunked => want.push(("transfer-encoding".into(), b"chunked".to_vec())),
        }
        let got: Vec<(String, Vec<u8>)> = resp
            .headers
            .iter()
            .map(|x| (x.name.to_ascii_lowercase(), x.value.to_vec()))
            .collect();
        prop_assert_eq!(got, want, "{}", shown);

        // The crate's own response parser frames the body as chosen (a
        // client reading it as the RFC says agrees with the node).
        if framing != ResponseFraming::Bodiless {
            let mut buf = BytesMut::from(wire);
            buf.extend_from_slice(&body);
            let parsed = parse_response(&mut buf, false, 64 * 1024)
                .map_err(|e| TestCaseError::fail(format!("{e}: {shown:?}")))?
                .ok_or_else(|| TestCaseError::fail("incomplete"))?;
            let no_body = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
            let expected = match framing {
                _ if no_body => Framing::Empty,
                ResponseFraming::Length(n) => Framing::Length(n),
                ResponseFraming::Chunked => Framing::Chunked,
                _ => Framing::Close,
            };
            prop_assert_eq!(parsed.framing, expected, "{}", shown);
            prop_assert_eq!(&buf[..], &body[..]);
        }
    }

    #[test]
    fn bodiless_per_rfc9110(
        m in prop_oneof![
            select(vec![Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::OPTIONS]),
            token(8).prop_filter_map("a method", |t| Method::from_bytes(t.as_bytes()).ok()),
        ],
        status in status(),
    ) {
        // RFC 9110 §6.4.1 / RFC 9112 §6.3 (1).
        let want = m == Method::HEAD
            || (100..200).contains(&status.as_u16())
            || status.as_u16() == 204
            || status.as_u16() == 304;
        prop_assert_eq!(is_bodiless(&m, status), want);
    }
}
