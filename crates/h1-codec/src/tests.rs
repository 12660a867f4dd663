use super::*;

fn parse(s: &str, head: bool) -> (Result<Option<ResponseHead>, Error>, BytesMut) {
    let mut b = BytesMut::from(s.as_bytes());
    let r = parse_response(&mut b, head, 64 * 1024);
    (r, b)
}

#[test]
fn length_framed_response_leaves_the_body() {
    let (r, rest) = parse(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        false,
    );
    let h = r.unwrap().unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.framing, Framing::Length(5));
    assert!(h.keep_alive);
    assert_eq!(h.headers["x-a"], "b");
    assert_eq!(&rest[..], b"hello");
}

#[test]
fn partial_head_consumes_nothing() {
    let (r, rest) = parse("HTTP/1.1 200 OK\r\nContent-Len", false);
    assert!(r.unwrap().is_none());
    assert_eq!(&rest[..], b"HTTP/1.1 200 OK\r\nContent-Len");
}

#[test]
fn framing_rules() {
    let f = |s: &str, head| {
        parse(s, head)
            .0
            .map(|h| h.map(|h| (h.framing, h.keep_alive)))
    };
    assert_eq!(
        f("HTTP/1.1 204 No Content\r\n\r\n", false),
        Ok(Some((Framing::Empty, true)))
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
        Ok(Some((Framing::Empty, true)))
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\n\r\n", false),
        Ok(Some((Framing::Close, false)))
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false
        ),
        Ok(Some((Framing::Chunked, true)))
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false
        ),
        Ok(Some((Framing::Chunked, false)))
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
        Ok(Some((Framing::Close, false)))
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
            false
        ),
        Ok(Some((Framing::Length(3), false)))
    );
    assert_eq!(
        f("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", false),
        Ok(Some((Framing::Length(3), false)))
    );
    assert_eq!(
        f(
            "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: Keep-Alive\r\n\r\n",
            false
        ),
        Ok(Some((Framing::Length(3), true)))
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", false),
        Ok(Some((Framing::Length(3), true)))
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            false
        ),
        Err(Error::ContentLength)
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n", false),
        Err(Error::ContentLength)
    );
}

#[test]
fn oversized_head_is_refused() {
    let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
    b.extend_from_slice(&[b'a'; 200]);
    assert_eq!(
        parse_response(&mut b, false, 100).unwrap_err(),
        Error::HeadTooLarge(100)
    );
}

#[test]
fn chunked_body_with_trailers_and_pipelined_rest() {
    let mut b = BytesMut::from(&b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\nNEXT"[..]);
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    loop {
        match d.decode(&mut b).unwrap() {
            Chunk::Data(x) => out.extend_from_slice(&x),
            Chunk::Need => panic!("needs more"),
            Chunk::Done => break,
        }
    }
    assert_eq!(out, b"hello!");
    assert_eq!(&b[..], b"NEXT");
}

#[test]
fn chunked_errors() {
    for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"ffffffffffffffffff\r\n"] {
        let mut b = BytesMut::from(bad);
        let mut d = ChunkedDecoder::new();
        let r = loop {
            match d.decode(&mut b) {
                Ok(Chunk::Data(_)) => continue,
                other => break other,
            }
        };
        assert!(r.is_err(), "{:?} gave {r:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn request_head_encoding_sets_framing_once() {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("a.example"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let mut out = Vec::new();
    encode_request_head(
        &mut out,
        &Method::POST,
        "/x?y=1",
        &h,
        BodyFraming::Length(3),
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /x?y=1 HTTP/1.1\r\nhost: a.example\r\ncontent-length: 3\r\n\r\n"
    );
    let mut out = Vec::new();
    encode_request_head(
        &mut out,
        &Method::GET,
        "/",
        &HeaderMap::new(),
        BodyFraming::Chunked,
    );
    assert_eq!(out, b"GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
}

#[test]
fn forwarding_keeps_only_a_lone_chunked_coding_and_drops_its_length() {
    let fwd = |s: &str| {
        parse(s, false)
            .0
            .expect("parses")
            .expect("complete")
            .for_forwarding()
            .map(|h| h.headers)
    };
    let h = fwd("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n")
        .expect("chunked is forwarded");
    assert!(!h.contains_key(header::CONTENT_LENGTH));
    assert_eq!(h[header::TRANSFER_ENCODING], "chunked");
    let h = fwd("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").expect("plain length");
    assert_eq!(h[header::CONTENT_LENGTH], "3");
    for bad in [
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        assert!(
            matches!(fwd(bad), Err(Error::TransferCoding(_))),
            "{bad:?} must be refused"
        );
    }
}
