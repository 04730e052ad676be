//! Fuzz target: bytes from a SPDY/3.1 client. The first byte picks the mode: frames (the
//! session's decode loop, with one header decompression context for the connection, fed in
//! pieces) or a header block alone, which must round-trip through the encoder when it decodes.
#![no_main]

use bungeo_api::streaming::spdy::frame::{self, HeaderDecoder, HeaderEncoder};
use bytes::BytesMut;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let mut buf = BytesMut::new();
        let mut headers = HeaderDecoder::new();
        // Pieces of a size the first byte chooses, as reads off a socket would split them.
        let piece = usize::from(mode >> 1).max(1);
        for chunk in rest.chunks(piece) {
            buf.extend_from_slice(chunk);
            loop {
                match frame::decode(&mut buf, &mut headers) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    } else {
        let mut decoder = HeaderDecoder::new();
        let Ok(decoded) = decoder.decode(rest) else {
            return;
        };
        // Values with NUL are several values of one name: they cannot round-trip one by one.
        if decoded
            .iter()
            .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return;
        }
        let mut encoder = HeaderEncoder::new();
        let mut fresh = HeaderDecoder::new();
        let mut out = Vec::new();
        let pairs: Vec<(&str, &str)> = decoded
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        encoder.encode(&pairs, &mut out).expect("headers compress");
        let again = fresh.decode(&out).expect("our own header block decodes");
        // Names go out lowercase, as SPDY/3 requires.
        let expected: Vec<(String, String)> = decoded
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        assert_eq!(again, expected);
    }
});
