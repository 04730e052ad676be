//! SPDY/3.1 client framing and sessions, as moby/spdystream (kubelet, containerd, kubectl)
//! speaks it over an upgraded HTTP connection.
//!
//! Frames: a control frame is `1 | version(15) = 3 | type(16) | flags(8) | length(24)`, a
//! data frame `0 | stream id(31) | flags(8) | length(24)`. Header blocks (SYN_STREAM,
//! SYN_REPLY, HEADERS) are `count(32)` then `len(32) name len(32) value` pairs, names in
//! lower case, several values of one name joined by NUL, all compressed with zlib primed with
//! the SPDY/3 dictionary: one compression context per direction for the whole session, each
//! block ended with a sync flush. Client streams have odd ids, server streams even ones; a
//! PING is answered with the same id when its parity is the peer's.
//!
//! Flow control: spdystream neither sends WINDOW_UPDATE nor honours it, and kubectl is built
//! on it, so a server that waits for the client's window updates stalls kubectl after 64 KiB.
//! [`FlowControl::Kubectl`] behaves exactly like that client; [`FlowControl::Spdy31`]
//! sends WINDOW_UPDATE for what it has consumed (per stream and for the session) and honours
//! the server's windows once the server shows it keeps them (a SETTINGS initial window or a
//! WINDOW_UPDATE).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::http::{StreamUrl, upgrade};
use super::{Error, Result};

/// SPDY version in every control frame.
pub const VERSION: u16 = 3;
/// SYN_STREAM.
pub const TYPE_SYN_STREAM: u16 = 1;
/// SYN_REPLY.
pub const TYPE_SYN_REPLY: u16 = 2;
/// RST_STREAM.
pub const TYPE_RST_STREAM: u16 = 3;
/// SETTINGS.
pub const TYPE_SETTINGS: u16 = 4;
/// PING.
pub const TYPE_PING: u16 = 6;
/// GOAWAY.
pub const TYPE_GOAWAY: u16 = 7;
/// HEADERS.
pub const TYPE_HEADERS: u16 = 8;
/// WINDOW_UPDATE.
pub const TYPE_WINDOW_UPDATE: u16 = 9;
/// FLAG_FIN on control and data frames.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// RST_STREAM status PROTOCOL_ERROR.
pub const RST_PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status REFUSED_STREAM.
pub const RST_REFUSED_STREAM: u32 = 3;
/// RST_STREAM status CANCEL.
pub const RST_CANCEL: u32 = 5;
/// SETTINGS id of the initial stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// The initial stream and session windows of SPDY/3.1.
pub const DEFAULT_WINDOW: i64 = 64 * 1024;
/// The largest payload written in one DATA frame (what Go's io.Copy writes at once).
pub const MAX_DATA_FRAME: usize = 32 * 1024;
/// How long a SYN_STREAM waits for its SYN_REPLY (kubectl's createStreamResponseTimeout).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The words of the SPDY/3 header dictionary, each prefixed with its length on the wire.
const DICTIONARY_WORDS: &[&str] = &[
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
/// The free text that ends the SPDY/3 dictionary.
const DICTIONARY_TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411\
412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved \
Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server \
Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov \
Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,\
image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivate\
max-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// The SPDY/3 zlib dictionary (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICTIONARY_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        d
    })
}

/// Header fields of a SYN_STREAM, SYN_REPLY or HEADERS frame: lower-case names, in order.
pub type Headers = Vec<(String, String)>;

/// The value of `name` in `headers` (names are lower case on the wire).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The compressing side of a session's header context.
pub struct HeaderCompressor {
    z: Compress,
}

impl HeaderCompressor {
    /// A fresh context primed with the dictionary (best compression, as Go's framer).
    pub fn new() -> Result<Self> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(dictionary())
            .map_err(|e| Error::Compression(format!("set the dictionary: {e}")))?;
        Ok(Self { z })
    }

    /// The compressed header block for `headers`, ended with a sync flush. Names are
    /// lower-cased (spdystream refuses others); values of a repeated name are joined by NUL
    /// (it refuses a name twice).
    pub fn compress(&mut self, headers: &[(&str, &str)]) -> Result<Vec<u8>> {
        let mut merged: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => {
                    v.push('\0');
                    v.push_str(value);
                }
                None => merged.push((name, value.to_string())),
            }
        }
        let mut block = Vec::new();
        block.extend_from_slice(&(merged.len() as u32).to_be_bytes());
        for (name, value) in &merged {
            block.extend_from_slice(&(name.len() as u32).to_be_bytes());
            block.extend_from_slice(name.as_bytes());
            block.extend_from_slice(&(value.len() as u32).to_be_bytes());
            block.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Compression(e.to_string()))?;
            consumed += (self.z.total_in() - before) as usize;
            // A sync flush is complete once it leaves output space unused.
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The decompressing side of a session's header context.
pub struct HeaderDecompressor {
    z: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecompressor {
    /// A fresh context; the dictionary is given when the stream asks for it.
    pub fn new() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }

    /// Decompresses one header block and parses it.
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers> {
        let mut out = Vec::with_capacity(block.len() * 4 + 256);
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let (before_in, before_out) = (self.z.total_in(), out.len());
            match self
                .z
                .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(dictionary())
                        .map_err(|e| Error::Compression(format!("set the dictionary: {e}")))?;
                }
                Err(e) => return Err(Error::Compression(e.to_string())),
            }
            consumed += (self.z.total_in() - before_in) as usize;
            if consumed == block.len() && out.len() < out.capacity() {
                break;
            }
            if consumed == block.len() && out.len() == before_out {
                break;
            }
        }
        parse_header_block(&out)
    }
}

fn parse_header_block(b: &[u8]) -> Result<Headers> {
    let bad = || Error::Protocol("truncated header block".into());
    let mut pos = 0;
    let u32_at = |pos: &mut usize| -> Result<usize> {
        let v = b.get(*pos..*pos + 4).ok_or_else(bad)?;
        *pos += 4;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize)
    };
    let count = u32_at(&mut pos)?;
    let mut headers = Vec::new();
    for _ in 0..count {
        let n = u32_at(&mut pos)?;
        let name = b.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        let n = u32_at(&mut pos)?;
        let value = b.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        let name = String::from_utf8_lossy(name).into_owned();
        if name != name.to_ascii_lowercase() {
            return Err(Error::Protocol(format!(
                "header name {name:?} is not lower case"
            )));
        }
        for v in value.split(|c| *c == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(headers)
}

/// One SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// Stream id (odd from a client).
        stream_id: u32,
        /// Associated-to stream id (0: none).
        associated: u32,
        /// Priority 0 (highest) to 7.
        priority: u8,
        /// Flags (FIN, UNIDIRECTIONAL).
        flags: u8,
        /// Header fields.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream id.
        stream_id: u32,
        /// Flags (FIN).
        flags: u8,
        /// Header fields.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream id.
        stream_id: u32,
        /// Status code.
        status: u32,
    },
    /// Session settings: (flags, id, value).
    Settings {
        /// Frame flags (CLEAR_SETTINGS).
        flags: u8,
        /// Entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// Liveness check.
    Ping {
        /// Ping id.
        id: u32,
    },
    /// End of the session.
    GoAway {
        /// Last stream the sender accepted.
        last_good: u32,
        /// Status code.
        status: u32,
    },
    /// More header fields for a stream.
    Headers {
        /// Stream id.
        stream_id: u32,
        /// Flags (FIN).
        flags: u8,
        /// Header fields.
        headers: Headers,
    },
    /// Credit for more DATA on a stream (0: the session).
    WindowUpdate {
        /// Stream id.
        stream_id: u32,
        /// Credit in bytes.
        delta: u32,
    },
    /// Stream data.
    Data {
        /// Stream id.
        stream_id: u32,
        /// Flags (FIN).
        flags: u8,
        /// Payload.
        data: Bytes,
    },
    /// A control frame type this client does not know (SPDY says: ignore it).
    Unknown {
        /// Its type.
        frame_type: u16,
    },
}

/// Serialises `frame`, compressing its headers with `z`.
pub fn encode(frame: &Frame, z: &mut HeaderCompressor) -> Result<Vec<u8>> {
    fn control(frame_type: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + payload.len());
        out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        out.extend_from_slice(&frame_type.to_be_bytes());
        out.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
    let compress = |z: &mut HeaderCompressor, h: &Headers| -> Result<Vec<u8>> {
        let pairs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        z.compress(&pairs)
    };
    Ok(match frame {
        Frame::SynStream {
            stream_id,
            associated,
            priority,
            flags,
            headers,
        } => {
            let mut p = Vec::new();
            p.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
            p.extend_from_slice(&(associated & 0x7fff_ffff).to_be_bytes());
            p.push((priority & 0x07) << 5);
            p.push(0); // credential slot
            p.extend_from_slice(&compress(z, headers)?);
            control(TYPE_SYN_STREAM, *flags, &p)
        }
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        } => {
            let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
            p.extend_from_slice(&compress(z, headers)?);
            control(TYPE_SYN_REPLY, *flags, &p)
        }
        Frame::Headers {
            stream_id,
            flags,
            headers,
        } => {
            let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
            p.extend_from_slice(&compress(z, headers)?);
            control(TYPE_HEADERS, *flags, &p)
        }
        Frame::RstStream { stream_id, status } => {
            let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
            p.extend_from_slice(&status.to_be_bytes());
            control(TYPE_RST_STREAM, 0, &p)
        }
        Frame::Settings { flags, entries } => {
            let mut p = (entries.len() as u32).to_be_bytes().to_vec();
            for (f, id, value) in entries {
                p.extend_from_slice(&((u32::from(*f) << 24) | (id & 0xff_ffff)).to_be_bytes());
                p.extend_from_slice(&value.to_be_bytes());
            }
            control(TYPE_SETTINGS, *flags, &p)
        }
        Frame::Ping { id } => control(TYPE_PING, 0, &id.to_be_bytes()),
        Frame::GoAway { last_good, status } => {
            let mut p = (last_good & 0x7fff_ffff).to_be_bytes().to_vec();
            p.extend_from_slice(&status.to_be_bytes());
            control(TYPE_GOAWAY, 0, &p)
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
            p.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
            control(TYPE_WINDOW_UPDATE, 0, &p)
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            if data.len() > 0xff_ffff {
                return Err(Error::Protocol(format!(
                    "DATA payload of {} bytes",
                    data.len()
                )));
            }
            let mut out = Vec::with_capacity(8 + data.len());
            out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
            out.extend_from_slice(&((u32::from(*flags) << 24) | data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            out
        }
        Frame::Unknown { frame_type } => {
            return Err(Error::Protocol(format!(
                "cannot encode unknown frame type {frame_type}"
            )));
        }
    })
}

/// Reads one frame; `None` at a clean end of the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    z: &mut HeaderDecompressor,
) -> Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(Error::Io("read a frame".into(), e)),
    }
    r.read_exact(&mut head[1..])
        .await
        .map_err(|e| Error::Io("read a frame header".into(), e))?;
    let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| Error::Io(format!("read a frame payload of {len} bytes"), e))?;
    if word & 0x8000_0000 == 0 {
        return Ok(Some(Frame::Data {
            stream_id: word & 0x7fff_ffff,
            flags,
            data: Bytes::from(payload),
        }));
    }
    let version = ((word >> 16) & 0x7fff) as u16;
    if version != VERSION {
        return Err(Error::Protocol(format!(
            "control frame of SPDY version {version}"
        )));
    }
    let frame_type = (word & 0xffff) as u16;
    let short = || Error::Protocol(format!("control frame type {frame_type} too short ({len})"));
    let u32_at = |i: usize| -> Result<u32> {
        payload
            .get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(short)
    };
    Ok(Some(match frame_type {
        TYPE_SYN_STREAM => {
            let block = payload.get(10..).ok_or_else(short)?;
            Frame::SynStream {
                stream_id: u32_at(0)? & 0x7fff_ffff,
                associated: u32_at(4)? & 0x7fff_ffff,
                priority: payload[8] >> 5,
                flags,
                headers: z.decompress(block)?,
            }
        }
        TYPE_SYN_REPLY => Frame::SynReply {
            stream_id: u32_at(0)? & 0x7fff_ffff,
            flags,
            headers: z.decompress(payload.get(4..).ok_or_else(short)?)?,
        },
        TYPE_HEADERS => Frame::Headers {
            stream_id: u32_at(0)? & 0x7fff_ffff,
            flags,
            headers: z.decompress(payload.get(4..).ok_or_else(short)?)?,
        },
        TYPE_RST_STREAM => Frame::RstStream {
            stream_id: u32_at(0)? & 0x7fff_ffff,
            status: u32_at(4)?,
        },
        TYPE_SETTINGS => {
            let n = u32_at(0)? as usize;
            let mut entries = Vec::with_capacity(n.min(64));
            for i in 0..n {
                let idf = u32_at(4 + i * 8)?;
                entries.push(((idf >> 24) as u8, idf & 0xff_ffff, u32_at(8 + i * 8)?));
            }
            Frame::Settings { flags, entries }
        }
        TYPE_PING => Frame::Ping { id: u32_at(0)? },
        TYPE_GOAWAY => Frame::GoAway {
            last_good: u32_at(0)? & 0x7fff_ffff,
            status: u32_at(4)?,
        },
        TYPE_WINDOW_UPDATE => Frame::WindowUpdate {
            stream_id: u32_at(0)? & 0x7fff_ffff,
            delta: u32_at(4)? & 0x7fff_ffff,
        },
        other => Frame::Unknown { frame_type: other },
    }))
}

/// How the client treats SPDY/3.1 flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlowControl {
    /// As kubectl (spdystream): no WINDOW_UPDATE sent, the server's windows ignored.
    #[default]
    Kubectl,
    /// WINDOW_UPDATE for consumed data; the server's windows honoured once it shows it
    /// keeps them.
    Spdy31,
}

/// How a stream's read side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server sent FIN.
    Fin,
    /// The server reset the stream with this status.
    Reset(u32),
    /// The connection ended.
    ConnectionClosed,
}

struct StreamState {
    data_tx: Option<mpsc::Sender<Bytes>>,
    reply_tx: Option<oneshot::Sender<Result<Headers>>>,
    /// What the server still accepts on this stream.
    send_window: i64,
    end: Option<StreamEnd>,
}

struct State {
    next_id: u32,
    streams: HashMap<u32, StreamState>,
    going_away: bool,
    closed: Option<String>,
    /// The server showed it keeps windows.
    windows_kept: bool,
    initial_send_window: i64,
    session_send_window: i64,
    pings_answered: u64,
}

struct Shared {
    state: Mutex<State>,
    window: Notify,
    flow: FlowControl,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not hide the session state from the test's report.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Frames to the writer task: control frames skip the queue of data.
struct Outgoing {
    control: mpsc::UnboundedSender<Frame>,
    data: mpsc::Sender<Frame>,
}

/// A SPDY/3.1 client session over an upgraded connection.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    out: Arc<Outgoing>,
    tasks: Arc<Tasks>,
    protocol: Option<String>,
}

/// The session's tasks, aborted when the last handle goes: the connection closes with them.
struct Tasks(Mutex<Vec<JoinHandle<()>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        let tasks = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        for t in tasks.iter() {
            t.abort();
        }
    }
}

impl Session {
    /// Upgrades `url` (POST, as kubectl) to SPDY/3.1 offering `protocols` in
    /// `X-Stream-Protocol-Version` headers (one per protocol); the session and the protocol
    /// the server chose (none if it sent no header).
    pub async fn connect(url: &StreamUrl, protocols: &[&str], flow: FlowControl) -> Result<Self> {
        let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        for p in protocols {
            headers.push(("X-Stream-Protocol-Version", p));
        }
        let (tcp, head, rest) = upgrade("POST", url, &headers).await?;
        let upgraded = head
            .value("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
        if !upgraded {
            return Err(Error::Protocol(format!(
                "{url}: 101 without `Upgrade: SPDY/3.1`: {:?}",
                head.headers
            )));
        }
        let protocol = head.value("x-stream-protocol-version").map(str::to_string);
        if let Some(p) = &protocol
            && !protocols.contains(&p.as_str())
        {
            return Err(Error::Protocol(format!(
                "{url}: the server chose {p:?}, which was not offered"
            )));
        }
        let (r, w) = tcp.into_split();
        let reader = BufReader::with_capacity(256 * 1024, std::io::Cursor::new(rest).chain(r));
        Self::start(reader, w, protocol, flow)
    }

    /// Runs a session over any byte stream (the WebSocket tunnel uses this).
    pub fn start<R, W>(
        reader: R,
        writer: W,
        protocol: Option<String>,
        flow: FlowControl,
    ) -> Result<Self>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_id: 1,
                streams: HashMap::new(),
                going_away: false,
                closed: None,
                windows_kept: false,
                initial_send_window: DEFAULT_WINDOW,
                session_send_window: DEFAULT_WINDOW,
                pings_answered: 0,
            }),
            window: Notify::new(),
            flow,
        });
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(16);
        let compressor = HeaderCompressor::new()?;
        let writer_task = tokio::spawn(write_loop(
            writer,
            compressor,
            control_rx,
            data_rx,
            shared.clone(),
        ));
        let reader_task = tokio::spawn(read_loop(reader, shared.clone(), control_tx.clone()));
        Ok(Self {
            shared,
            out: Arc::new(Outgoing {
                control: control_tx,
                data: data_tx,
            }),
            tasks: Arc::new(Tasks(Mutex::new(vec![writer_task, reader_task]))),
            protocol,
        })
    }

    /// Ties `tasks` (carrying the session's bytes) to the session's lifetime.
    pub fn with_tasks(self, tasks: Vec<JoinHandle<()>>) -> Self {
        self.tasks
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tasks);
        self
    }

    /// The protocol the server chose in its 101 answer.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// PINGs from the server this session has answered.
    pub fn pings_answered(&self) -> u64 {
        self.shared.lock().pings_answered
    }

    /// Opens a stream with `headers` and waits for the server's SYN_REPLY.
    pub async fn open_stream(&self, headers: &[(&str, &str)]) -> Result<Stream> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (data_tx, data_rx) = mpsc::channel(64);
        let stream_id = {
            let mut st = self.shared.lock();
            if let Some(reason) = &st.closed {
                return Err(Error::Closed(reason.clone()));
            }
            if st.going_away {
                return Err(Error::Closed("the server sent GOAWAY".into()));
            }
            let id = st.next_id;
            st.next_id += 2;
            let window = st.initial_send_window;
            st.streams.insert(
                id,
                StreamState {
                    data_tx: Some(data_tx),
                    reply_tx: Some(reply_tx),
                    send_window: window,
                    end: None,
                },
            );
            id
        };
        let frame = Frame::SynStream {
            stream_id,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect(),
        };
        self.out
            .data
            .send(frame)
            .await
            .map_err(|_| Error::Closed("the session writer ended".into()))?;
        let reply = tokio::time::timeout(REPLY_TIMEOUT, reply_rx)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "no SYN_REPLY for stream {stream_id} ({headers:?}) in {REPLY_TIMEOUT:?}"
                ))
            })?
            .map_err(|_| Error::Closed(format!("stream {stream_id} dropped before its reply")))??;
        Ok(Stream {
            id: stream_id,
            reply,
            rx: data_rx,
            session: self.clone(),
            unacked: 0,
        })
    }

    /// GOAWAY, then the connection closes when this handle and its streams are dropped.
    pub fn go_away(&self) {
        let _ = self.out.control.send(Frame::GoAway {
            last_good: 0,
            status: 0,
        });
    }

    /// Sends `data` on `stream_id`, in frames the server's windows allow.
    async fn send_data(&self, stream_id: u32, data: &[u8], fin: bool) -> Result<()> {
        let mut rest = data;
        loop {
            let n = self.reserve(stream_id, rest.len()).await?;
            let (chunk, tail) = rest.split_at(n);
            let last = tail.is_empty();
            self.out
                .data
                .send(Frame::Data {
                    stream_id,
                    flags: if fin && last { FLAG_FIN } else { 0 },
                    data: Bytes::copy_from_slice(chunk),
                })
                .await
                .map_err(|_| Error::Closed("the session writer ended".into()))?;
            rest = tail;
            if last {
                return Ok(());
            }
        }
    }

    /// How many of `want` bytes may go now (at least one, unless `want` is zero), waiting
    /// for window when the server keeps windows and has none left.
    async fn reserve(&self, stream_id: u32, want: usize) -> Result<usize> {
        let want = want.min(MAX_DATA_FRAME);
        loop {
            let notified = self.shared.window.notified();
            {
                let mut st = self.shared.lock();
                if let Some(reason) = &st.closed {
                    return Err(Error::Closed(reason.clone()));
                }
                let session_window = st.session_send_window;
                let keep = self.shared.flow == FlowControl::Spdy31 && st.windows_kept;
                let stream = st
                    .streams
                    .get_mut(&stream_id)
                    .ok_or_else(|| Error::Closed(format!("stream {stream_id} is gone")))?;
                if let Some(StreamEnd::Reset(status)) = &stream.end {
                    return Err(Error::Closed(format!(
                        "stream {stream_id} was reset ({status})"
                    )));
                }
                if want == 0 {
                    return Ok(0);
                }
                let allowed = if keep {
                    stream.send_window.min(session_window).max(0) as usize
                } else {
                    want
                };
                if allowed > 0 {
                    let n = want.min(allowed);
                    stream.send_window -= n as i64;
                    st.session_send_window -= n as i64;
                    return Ok(n);
                }
            }
            notified.await;
        }
    }

    fn consumed(&self, stream_id: u32, n: usize) {
        if self.shared.flow != FlowControl::Spdy31 || n == 0 {
            return;
        }
        for id in [stream_id, 0] {
            let _ = self.out.control.send(Frame::WindowUpdate {
                stream_id: id,
                delta: n as u32,
            });
        }
    }
}

/// One client-opened stream.
pub struct Stream {
    id: u32,
    reply: Headers,
    rx: mpsc::Receiver<Bytes>,
    session: Session,
    unacked: usize,
}

impl Stream {
    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers of the server's SYN_REPLY.
    pub fn reply_headers(&self) -> &Headers {
        &self.reply
    }

    /// The next data from the server; `None` once the stream ended (FIN, reset or the
    /// connection closed: see [`Stream::end`]).
    pub async fn read(&mut self) -> Option<Bytes> {
        let data = self.rx.recv().await;
        if let Some(d) = &data {
            self.unacked += d.len();
            // Batched as Go and Chromium do: credit once half a window is consumed.
            if self.unacked as i64 >= DEFAULT_WINDOW / 2 {
                self.session
                    .consumed(self.id, std::mem::take(&mut self.unacked));
            }
        }
        data
    }

    /// Everything the server sends until the stream ends.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(d) = self.read().await {
            out.extend_from_slice(&d);
        }
        out
    }

    /// How the read side ended, once it has.
    pub fn end(&self) -> Option<StreamEnd> {
        self.session
            .shared
            .lock()
            .streams
            .get(&self.id)
            .and_then(|s| s.end.clone())
    }

    /// A handle that writes to this stream.
    pub fn writer(&self) -> StreamWriter {
        StreamWriter {
            id: self.id,
            session: self.session.clone(),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.session.shared.lock().streams.remove(&self.id);
    }
}

/// The write side of a stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    session: Session,
}

impl StreamWriter {
    /// Sends `data`.
    pub async fn write(&self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.session.send_data(self.id, data, false).await
    }

    /// Half-closes the stream: an empty DATA frame with FIN (what spdystream's Close sends).
    pub async fn close(&self) -> Result<()> {
        self.session.send_data(self.id, &[], true).await
    }

    /// RST_STREAM with CANCEL.
    pub fn reset(&self) {
        let _ = self.session.out.control.send(Frame::RstStream {
            stream_id: self.id,
            status: RST_CANCEL,
        });
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut z: HeaderCompressor,
    mut control: mpsc::UnboundedReceiver<Frame>,
    mut data: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
) {
    let result: Result<()> = async {
        loop {
            let frame = tokio::select! {
                biased;
                f = control.recv() => f,
                f = data.recv() => f,
            };
            let Some(frame) = frame else {
                return Ok(());
            };
            let bytes = encode(&frame, &mut z)?;
            w.write_all(&bytes)
                .await
                .map_err(|e| Error::Io("write a frame".into(), e))?;
            if matches!(frame, Frame::GoAway { .. }) {
                let _ = w.shutdown().await;
            }
        }
    }
    .await;
    if let Err(e) = result {
        close_all(&shared, format!("writer: {e}"));
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Frame>,
) {
    let mut z = HeaderDecompressor::new();
    let reason = loop {
        let frame = match read_frame(&mut r, &mut z).await {
            Ok(Some(f)) => f,
            Ok(None) => break "the server closed the connection".to_string(),
            Err(e) => break format!("reader: {e}"),
        };
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let tx = {
                    let mut st = shared.lock();
                    let s = st.streams.get_mut(&stream_id);
                    let tx = s.as_ref().and_then(|s| s.data_tx.clone());
                    if flags & FLAG_FIN != 0
                        && let Some(s) = s
                    {
                        s.data_tx = None;
                        s.end.get_or_insert(StreamEnd::Fin);
                    }
                    tx
                };
                if let Some(tx) = tx
                    && !data.is_empty()
                {
                    // The stream's reader may be gone (dropped): its data is discarded.
                    let _ = tx.send(data).await;
                }
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let mut st = shared.lock();
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    if let Some(tx) = s.reply_tx.take() {
                        let _ = tx.send(Ok(headers));
                    }
                    if flags & FLAG_FIN != 0 {
                        s.data_tx = None;
                        s.end.get_or_insert(StreamEnd::Fin);
                    }
                }
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0 {
                    let mut st = shared.lock();
                    if let Some(s) = st.streams.get_mut(&stream_id) {
                        s.data_tx = None;
                        s.end.get_or_insert(StreamEnd::Fin);
                    }
                }
            }
            Frame::RstStream { stream_id, status } => {
                let mut st = shared.lock();
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.data_tx = None;
                    s.end.get_or_insert(StreamEnd::Reset(status));
                    if let Some(tx) = s.reply_tx.take() {
                        let _ = tx.send(Err(Error::Closed(format!(
                            "stream {stream_id} reset by the server with status {status}"
                        ))));
                    }
                }
                drop(st);
                shared.window.notify_waiters();
            }
            Frame::Settings { entries, .. } => {
                let mut st = shared.lock();
                for (_, id, value) in entries {
                    if id == SETTINGS_INITIAL_WINDOW_SIZE {
                        let delta = i64::from(value) - st.initial_send_window;
                        st.initial_send_window = i64::from(value);
                        st.windows_kept = true;
                        for s in st.streams.values_mut() {
                            s.send_window += delta;
                        }
                    }
                }
                drop(st);
                shared.window.notify_waiters();
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut st = shared.lock();
                st.windows_kept = true;
                if stream_id == 0 {
                    st.session_send_window += i64::from(delta);
                } else if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.send_window += i64::from(delta);
                }
                drop(st);
                shared.window.notify_waiters();
            }
            Frame::Ping { id } => {
                // Our own pings are odd; an even id is the server's, answered in kind.
                if id % 2 == 0 {
                    shared.lock().pings_answered += 1;
                    let _ = control.send(Frame::Ping { id });
                }
            }
            Frame::GoAway { .. } => {
                shared.lock().going_away = true;
            }
            Frame::SynStream { stream_id, .. } => {
                // Kubernetes' servers never push streams.
                let _ = control.send(Frame::RstStream {
                    stream_id,
                    status: RST_REFUSED_STREAM,
                });
            }
            Frame::Unknown { .. } => {}
        }
    };
    close_all(&shared, reason);
}

fn close_all(shared: &Shared, reason: String) {
    let mut st = shared.lock();
    if st.closed.is_none() {
        st.closed = Some(reason.clone());
    }
    for (id, s) in st.streams.iter_mut() {
        s.data_tx = None;
        s.end.get_or_insert(StreamEnd::ConnectionClosed);
        if let Some(tx) = s.reply_tx.take() {
            let _ = tx.send(Err(Error::Closed(format!(
                "stream {id}: connection ended before its reply: {reason}"
            ))));
        }
    }
    drop(st);
    shared.window.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert!(d.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(d.ends_with(b",*,enq=0."));
        assert_eq!(
            hex::encode(Sha256::digest(d)),
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }

    #[test]
    fn header_blocks_round_trip_across_one_context() {
        let mut c = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::new();
        for i in 0..5 {
            let id = i.to_string();
            let block = c
                .compress(&[("streamType", "data"), ("port", "8080"), ("requestID", &id)])
                .unwrap();
            let h = d.decompress(&block).unwrap();
            assert_eq!(
                h,
                vec![
                    ("streamtype".to_string(), "data".to_string()),
                    ("port".to_string(), "8080".to_string()),
                    ("requestid".to_string(), id),
                ]
            );
        }
        // A repeated name travels once, its values NUL-joined.
        let block = c.compress(&[("a", "1"), ("A", "2")]).unwrap();
        assert_eq!(
            d.decompress(&block).unwrap(),
            vec![("a".into(), "1".into()), ("a".into(), "2".into())]
        );
    }

    #[test]
    fn compressed_blocks_are_zlib_streams_with_the_dictionary() {
        let mut c = HeaderCompressor::new().unwrap();
        let block = c.compress(&[("streamtype", "error")]).unwrap();
        // zlib header with FDICT set, then the dictionary's Adler-32.
        assert_eq!(block[0] & 0x0f, 8);
        assert_ne!(block[1] & 0x20, 0);
        assert_eq!(&block[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
        // A sync flush ends with an empty stored block.
        assert!(block.ends_with(&[0x00, 0x00, 0xff, 0xff]));
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut c = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::new();
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated: 0,
                priority: 7,
                flags: FLAG_FIN,
                headers: vec![("streamtype".into(), "error".into())],
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)],
            },
            Frame::Ping { id: 2 },
            Frame::GoAway {
                last_good: 5,
                status: 0,
            },
            Frame::Headers {
                stream_id: 1,
                flags: FLAG_FIN,
                headers: vec![("x".into(), "y".into())],
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 4096,
            },
            Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode(f, &mut c).unwrap());
        }
        let mut r = std::io::Cursor::new(wire);
        for f in &frames {
            assert_eq!(read_frame(&mut r, &mut d).await.unwrap().as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut r, &mut d).await.unwrap(), None);
    }

    #[test]
    fn data_frame_layout() {
        let mut c = HeaderCompressor::new().unwrap();
        let wire = encode(
            &Frame::Data {
                stream_id: 5,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"ab"),
            },
            &mut c,
        )
        .unwrap();
        assert_eq!(wire, [0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']);
        let wire = encode(&Frame::Ping { id: 1 }, &mut c).unwrap();
        assert_eq!(wire, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    }
}
