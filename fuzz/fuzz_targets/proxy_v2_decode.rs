//! Decode arbitrary bytes; on a complete header, re-encode it as v2 and check
//! that decoding the encoding gives the same header back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_protocol::{Decoded, decode, is_prefix_of_header};

fuzz_target!(|data: &[u8]| {
    let result = decode(data);
    if result.is_ok() {
        assert!(is_prefix_of_header(data));
    }
    if let Ok(Decoded::Complete { header, consumed }) = result {
        assert!(consumed <= data.len());
        // Any prefix shorter than the header must be a valid prefix.
        assert!(matches!(
            decode(&data[..consumed - 1]),
            Ok(Decoded::Incomplete { .. })
        ));
        let mut header = header;
        header.version = 2; // encode always writes v2
        let bytes = header.to_bytes().expect("a decoded header re-encodes");
        assert_eq!(bytes.len(), header.encoded_len());
        match decode(&bytes) {
            Ok(Decoded::Complete {
                header: again,
                consumed,
            }) => {
                assert_eq!(consumed, bytes.len());
                assert_eq!(again, header);
            }
            other => panic!("re-decode failed: {other:?}"),
        }
    }
});
