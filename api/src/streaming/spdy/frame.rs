//! SPDY/3.1 frames: the 8-byte frame header, the control frames Kubernetes' clients send and
//! expect, and header blocks compressed with one zlib stream per direction primed with the
//! SPDY/3 dictionary (draft 3, section 2.6.10.1).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// The largest frame payload the 24-bit length field allows.
pub const MAX_LENGTH: usize = (1 << 24) - 1;
/// Largest inflated header block accepted: a few KiB of zlib inflate a thousandfold, so
/// without a bound one frame could take all the daemon's memory.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SETTINGS id of SETTINGS_INITIAL_WINDOW_SIZE.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// The stream window every stream starts with until SETTINGS says otherwise.
pub const DEFAULT_WINDOW: i64 = 64 * 1024;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;
pub const RST_FLOW_CONTROL_ERROR: u32 = 7;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// Header names and values of a SYN_STREAM, SYN_REPLY or HEADERS frame, in order.
pub type Headers = Vec<(String, String)>;

/// The SPDY/3 header compression dictionary: length-prefixed common header names and values,
/// then common strings without prefixes. Built from its parts so it stays readable.
pub fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
            "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
            "charset=iso-8859-1,utf-,*,enq=0."
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Why bytes are not a valid SPDY/3.1 frame sequence.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("control frame type {kind} is {len} bytes, too short")]
    Short { kind: u16, len: usize },
    #[error("header block: {0}")]
    Headers(String),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        flags: u8,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame type this server has no use for (CREDENTIAL, NOOP): skipped.
    Unknown {
        kind: u16,
    },
}

/// Header compression state of one direction: a single zlib stream for the connection.
pub struct HeaderEncoder {
    z: Compress,
    raw: Vec<u8>,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderEncoder {
    pub fn new() -> Self {
        let mut z = Compress::new(Compression::best(), true);
        // A fresh stream accepts a dictionary; failure here would be a bug in flate2.
        let _ = z.set_dictionary(dictionary());
        HeaderEncoder { z, raw: Vec::new() }
    }

    /// Appends the compressed block of `headers` to `out`, ending in a sync flush as the
    /// peer's inflater expects after each block.
    pub fn encode(
        &mut self,
        headers: &[(&str, &str)],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        self.raw.clear();
        self.raw.put_u32(headers.len() as u32);
        for (k, v) in headers {
            self.raw.put_u32(k.len() as u32);
            self.raw.extend(k.bytes().map(|b| b.to_ascii_lowercase()));
            self.raw.put_u32(v.len() as u32);
            self.raw.extend_from_slice(v.as_bytes());
        }
        let mut input: &[u8] = &self.raw;
        loop {
            out.reserve(input.len() + 128);
            let before = self.z.total_in();
            self.z
                .compress_vec(input, out, FlushCompress::Sync)
                .map_err(|e| FrameError::Headers(format!("compress: {e}")))?;
            input = &input[(self.z.total_in() - before) as usize..];
            // Room left over means zlib had nothing more to flush.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// Header decompression state of one direction.
pub struct HeaderDecoder {
    z: Decompress,
    out: Vec<u8>,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecoder {
    pub fn new() -> Self {
        HeaderDecoder {
            z: Decompress::new(true),
            out: Vec::with_capacity(1024),
        }
    }

    /// Inflates one header block and parses its name/value pairs.
    pub fn decode(&mut self, mut block: &[u8]) -> Result<Headers, FrameError> {
        self.out.clear();
        loop {
            if self.out.capacity() - self.out.len() < 1024 {
                self.out.reserve(4096);
            }
            let before_in = self.z.total_in();
            let before_out = self.out.len();
            match self
                .z
                .decompress_vec(block, &mut self.out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => {
                    return Err(FrameError::Headers("the zlib stream ended".into()));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(dictionary())
                        .map_err(|e| FrameError::Headers(format!("dictionary: {e}")))?;
                }
                Err(e) => return Err(FrameError::Headers(format!("inflate: {e}"))),
            }
            if self.out.len() > MAX_HEADER_BLOCK {
                return Err(FrameError::Headers(format!(
                    "header block inflates to more than {MAX_HEADER_BLOCK} bytes"
                )));
            }
            let used = (self.z.total_in() - before_in) as usize;
            block = &block[used..];
            if block.is_empty() && self.out.len() < self.out.capacity() {
                break;
            }
            if used == 0 && self.out.len() == before_out && self.out.len() < self.out.capacity() {
                return Err(FrameError::Headers("inflate made no progress".into()));
            }
        }
        parse_block(&self.out)
    }
}

fn parse_block(mut b: &[u8]) -> Result<Headers, FrameError> {
    let bad = || FrameError::Headers("truncated name/value block".into());
    let take_str = |b: &mut &[u8]| -> Result<String, FrameError> {
        if b.len() < 4 {
            return Err(bad());
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return Err(bad());
        }
        let s = String::from_utf8_lossy(&b[..n]).into_owned();
        b.advance(n);
        Ok(s)
    };
    if b.len() < 4 {
        return Err(bad());
    }
    let count = b.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take_str(&mut b)?;
        let value = take_str(&mut b)?;
        // Several values of one name are NUL-separated.
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    Ok(headers)
}

/// The first value of header `name` (names are lowercase on the wire).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Takes one complete frame off the front of `buf`, or None when more bytes are needed.
pub fn decode(
    buf: &mut BytesMut,
    headers: &mut HeaderDecoder,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
    if buf.len() < 8 + len {
        buf.reserve(8 + len - buf.len());
        return Ok(None);
    }
    let mut head = buf.split_to(8);
    let body = buf.split_to(len);
    let word = head.get_u32();
    let flags = head.get_u8();
    if word & 0x8000_0000 == 0 {
        return Ok(Some(Frame::Data {
            stream: word & 0x7fff_ffff,
            flags,
            data: body.freeze(),
        }));
    }
    let version = ((word >> 16) & 0x7fff) as u16;
    let kind = (word & 0xffff) as u16;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let need = |n: usize| {
        if len < n {
            Err(FrameError::Short { kind, len })
        } else {
            Ok(())
        }
    };
    let mut b = &body[..];
    let frame = match kind {
        TYPE_SYN_STREAM => {
            need(10)?;
            let stream = b.get_u32() & 0x7fff_ffff;
            let associated = b.get_u32() & 0x7fff_ffff;
            let priority = b.get_u8() >> 5;
            b.advance(1);
            Frame::SynStream {
                stream,
                associated,
                priority,
                flags,
                headers: headers.decode(b)?,
            }
        }
        TYPE_SYN_REPLY => {
            need(4)?;
            let stream = b.get_u32() & 0x7fff_ffff;
            Frame::SynReply {
                stream,
                flags,
                headers: headers.decode(b)?,
            }
        }
        TYPE_HEADERS => {
            need(4)?;
            let stream = b.get_u32() & 0x7fff_ffff;
            Frame::Headers {
                stream,
                flags,
                headers: headers.decode(b)?,
            }
        }
        TYPE_RST_STREAM => {
            need(8)?;
            Frame::RstStream {
                stream: b.get_u32() & 0x7fff_ffff,
                status: b.get_u32(),
            }
        }
        TYPE_SETTINGS => {
            need(4)?;
            let n = b.get_u32() as usize;
            need(4 + n.saturating_mul(8))?;
            let entries = (0..n)
                .map(|_| {
                    let w = b.get_u32();
                    ((w >> 24) as u8, w & 0x00ff_ffff, b.get_u32())
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        TYPE_PING => {
            need(4)?;
            Frame::Ping { id: b.get_u32() }
        }
        TYPE_GOAWAY => {
            need(4)?;
            let last_good = b.get_u32() & 0x7fff_ffff;
            let status = if b.len() >= 4 { b.get_u32() } else { 0 };
            Frame::GoAway { last_good, status }
        }
        TYPE_WINDOW_UPDATE => {
            need(8)?;
            Frame::WindowUpdate {
                stream: b.get_u32() & 0x7fff_ffff,
                delta: b.get_u32() & 0x7fff_ffff,
            }
        }
        other => Frame::Unknown { kind: other },
    };
    Ok(Some(frame))
}

/// Appends a DATA frame header for `len` payload bytes.
pub fn put_data_header(out: &mut Vec<u8>, stream: u32, flags: u8, len: usize) {
    out.put_u32(stream & 0x7fff_ffff);
    out.put_u32((u32::from(flags) << 24) | (len as u32 & 0x00ff_ffff));
}

fn put_control(out: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32((u32::from(flags) << 24) | (body.len() as u32 & 0x00ff_ffff));
    out.extend_from_slice(body);
}

/// Appends a SYN_REPLY for `stream` with `headers`.
pub fn put_syn_reply(
    out: &mut Vec<u8>,
    enc: &mut HeaderEncoder,
    stream: u32,
    flags: u8,
    headers: &[(&str, &str)],
) -> Result<(), FrameError> {
    let mut body = Vec::with_capacity(64);
    body.put_u32(stream & 0x7fff_ffff);
    enc.encode(headers, &mut body)?;
    put_control(out, TYPE_SYN_REPLY, flags, &body);
    Ok(())
}

/// Appends a SYN_STREAM (used by tests' clients).
pub fn put_syn_stream(
    out: &mut Vec<u8>,
    enc: &mut HeaderEncoder,
    stream: u32,
    flags: u8,
    headers: &[(&str, &str)],
) -> Result<(), FrameError> {
    let mut body = Vec::with_capacity(64);
    body.put_u32(stream & 0x7fff_ffff);
    body.put_u32(0);
    body.put_u16(0);
    enc.encode(headers, &mut body)?;
    put_control(out, TYPE_SYN_STREAM, flags, &body);
    Ok(())
}

pub fn put_rst_stream(out: &mut Vec<u8>, stream: u32, status: u32) {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    body[4..].copy_from_slice(&status.to_be_bytes());
    put_control(out, TYPE_RST_STREAM, 0, &body);
}

pub fn put_settings(out: &mut Vec<u8>, entries: &[(u8, u32, u32)]) {
    let mut body = Vec::with_capacity(4 + 8 * entries.len());
    body.put_u32(entries.len() as u32);
    for (flags, id, value) in entries {
        body.put_u32((u32::from(*flags) << 24) | (id & 0x00ff_ffff));
        body.put_u32(*value);
    }
    put_control(out, TYPE_SETTINGS, 0, &body);
}

pub fn put_ping(out: &mut Vec<u8>, id: u32) {
    put_control(out, TYPE_PING, 0, &id.to_be_bytes());
}

pub fn put_goaway(out: &mut Vec<u8>, last_good: u32, status: u32) {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&(last_good & 0x7fff_ffff).to_be_bytes());
    body[4..].copy_from_slice(&status.to_be_bytes());
    put_control(out, TYPE_GOAWAY, 0, &body);
}

pub fn put_window_update(out: &mut Vec<u8>, stream: u32, delta: u32) {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    body[4..].copy_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
    put_control(out, TYPE_WINDOW_UPDATE, 0, &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(d.ends_with(b"utf-,*,enq=0."));
        // zlib's dictionary id is the Adler-32 of the dictionary.
        let (mut a, mut b) = (1u32, 0u32);
        for &x in d {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        let mut enc = HeaderEncoder::new();
        let mut out = Vec::new();
        enc.encode(&[("a", "b")], &mut out).unwrap();
        // FDICT is set and DICTID follows the two header bytes.
        assert_ne!(out[1] & 0x20, 0);
        assert_eq!(
            u32::from_be_bytes([out[2], out[3], out[4], out[5]]),
            (b << 16) | a
        );
    }

    #[test]
    fn a_header_block_inflating_past_the_limit_is_refused() {
        let mut enc = HeaderEncoder::new();
        let mut out = Vec::new();
        let big = "a".repeat(MAX_HEADER_BLOCK);
        enc.encode(&[("x", &big)], &mut out).unwrap();
        assert!(
            out.len() < MAX_HEADER_BLOCK / 100,
            "compressed to {}",
            out.len()
        );
        let err = HeaderDecoder::new().decode(&out).unwrap_err();
        assert!(err.to_string().contains("inflates to more than"), "{err}");
        let mut small = Vec::new();
        HeaderEncoder::new()
            .encode(&[("x", &"a".repeat(MAX_HEADER_BLOCK / 2))], &mut small)
            .unwrap();
        assert_eq!(HeaderDecoder::new().decode(&small).unwrap().len(), 1);
    }

    #[test]
    fn header_blocks_inflate_with_an_independent_inflater_and_the_dictionary() {
        let mut enc = HeaderEncoder::new();
        let mut out = Vec::new();
        enc.encode(&[("streamType", "stdout"), ("port", "8080")], &mut out)
            .unwrap();
        // A separate raw zlib inflater, given the dictionary when it asks for it.
        let mut z = Decompress::new(true);
        let mut plain = Vec::with_capacity(4096);
        let err = z
            .decompress_vec(&out, &mut plain, FlushDecompress::Sync)
            .unwrap_err();
        assert!(err.needs_dictionary().is_some());
        z.set_dictionary(dictionary()).unwrap();
        let used = z.total_in() as usize;
        z.decompress_vec(&out[used..], &mut plain, FlushDecompress::Sync)
            .unwrap();
        let mut want = Vec::new();
        want.put_u32(2);
        for s in ["streamtype", "stdout", "port", "8080"] {
            want.put_u32(s.len() as u32);
            want.extend_from_slice(s.as_bytes());
        }
        assert_eq!(plain, want);
    }

    #[test]
    fn frames_round_trip_and_header_state_spans_frames() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let mut wire = Vec::new();
        put_syn_stream(&mut wire, &mut enc, 1, 0, &[("streamtype", "error")]).unwrap();
        put_syn_stream(
            &mut wire,
            &mut enc,
            3,
            FLAG_FIN,
            &[("streamtype", "stdin"), ("x", "a\0b")],
        )
        .unwrap();
        put_syn_reply(&mut wire, &mut enc, 3, 0, &[]).unwrap();
        put_data_header(&mut wire, 3, FLAG_FIN, 5);
        wire.extend_from_slice(b"hello");
        put_rst_stream(&mut wire, 5, RST_CANCEL);
        put_settings(&mut wire, &[(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)]);
        put_ping(&mut wire, 7);
        put_goaway(&mut wire, 3, 0);
        put_window_update(&mut wire, 3, 4096);
        // Fed a byte at a time: partial frames wait for the rest.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(f) = decode(&mut buf, &mut dec).unwrap() {
                frames.push(f);
            }
        }
        assert!(buf.is_empty());
        let h = |v: &[(&str, &str)]| -> Headers {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    stream: 1,
                    associated: 0,
                    priority: 0,
                    flags: 0,
                    headers: h(&[("streamtype", "error")])
                },
                Frame::SynStream {
                    stream: 3,
                    associated: 0,
                    priority: 0,
                    flags: FLAG_FIN,
                    headers: h(&[("streamtype", "stdin"), ("x", "a"), ("x", "b")])
                },
                Frame::SynReply {
                    stream: 3,
                    flags: 0,
                    headers: vec![]
                },
                Frame::Data {
                    stream: 3,
                    flags: FLAG_FIN,
                    data: Bytes::from_static(b"hello")
                },
                Frame::RstStream {
                    stream: 5,
                    status: RST_CANCEL
                },
                Frame::Settings {
                    flags: 0,
                    entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)]
                },
                Frame::Ping { id: 7 },
                Frame::GoAway {
                    last_good: 3,
                    status: 0
                },
                Frame::WindowUpdate {
                    stream: 3,
                    delta: 4096
                },
            ]
        );
    }

    #[test]
    fn large_header_blocks_round_trip() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let big = "v".repeat(100_000);
        let mut wire = Vec::new();
        put_syn_reply(&mut wire, &mut enc, 1, 0, &[("big", &big)]).unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        match decode(&mut buf, &mut dec).unwrap() {
            Some(Frame::SynReply { headers, .. }) => assert_eq!(headers[0].1.len(), 100_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_versions_are_refused() {
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(
            decode(&mut buf, &mut HeaderDecoder::new()),
            Err(FrameError::Version(2))
        );
    }
}
