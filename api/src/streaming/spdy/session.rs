//! One SPDY/3.1 connection, server side: a reader task demultiplexes frames into streams the
//! peer opens (each answered with SYN_REPLY at once, as Kubernetes' server does); writers share
//! one connection writer. Flow control: received data is acknowledged with WINDOW_UPDATE as
//! the consumer takes it; our own sends honour the peer's windows once the peer shows it keeps
//! them (moby/spdystream, which kubectl uses, ignores WINDOW_UPDATE and SETTINGS entirely and
//! never sends either, so enforcing its windows would stall every transfer at 64 KiB).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::frame::{self, FLAG_FIN, Frame, HeaderDecoder, HeaderEncoder, Headers};

/// The receive window we advertise per stream (SETTINGS_INITIAL_WINDOW_SIZE).
pub const RECEIVE_WINDOW: i64 = 1 << 20;
/// The session-level receive window we grant at the start.
const SESSION_RECEIVE_WINDOW: i64 = 16 << 20;
/// Buffered bytes of one stream past which the reader stops reading the connection: only a
/// peer that ignores our windows gets there.
const BUFFER_LIMIT: usize = 4 << 20;
/// The largest DATA payload we send: big frames, few headers.
const MAX_DATA_FRAME: usize = 64 * 1024;
/// Bytes read from the connection at a time.
const READ_CHUNK: usize = 128 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Writer {
    io: Box<dyn AsyncWrite + Send + Unpin>,
    enc: HeaderEncoder,
    buf: Vec<u8>,
    shut: bool,
}

impl Writer {
    async fn send(&mut self) -> io::Result<()> {
        if self.shut {
            self.buf.clear();
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the SPDY connection is closed",
            ));
        }
        let r = async {
            self.io.write_all(&self.buf).await?;
            self.io.flush().await
        }
        .await;
        self.buf.clear();
        if self.buf.capacity() > 8 * MAX_DATA_FRAME {
            self.buf = Vec::new();
        }
        r
    }
}

#[derive(Default)]
struct Inbound {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    /// The peer half-closed the stream (FIN).
    fin: bool,
    /// RST_STREAM either way, or the connection is gone.
    reset: bool,
    /// Consumed but not yet acknowledged with WINDOW_UPDATE.
    unacked: i64,
}

struct StreamState {
    id: u32,
    headers: Headers,
    inbound: Mutex<Inbound>,
    readable: Notify,
    drained: Notify,
    send_window: AtomicI64,
    local_fin: AtomicBool,
}

struct Shared {
    writer: tokio::sync::Mutex<Writer>,
    streams: Mutex<HashMap<u32, Arc<StreamState>>>,
    closed: CancellationToken,
    /// The peer sent WINDOW_UPDATE or SETTINGS: it keeps windows, so we keep its.
    peer_flow_control: AtomicBool,
    session_send_window: AtomicI64,
    initial_send_window: AtomicI64,
    session_unacked: AtomicI64,
    window_changed: Notify,
}

/// A SPDY session serving one upgraded connection.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

/// One stream the peer opened.
#[derive(Clone)]
pub struct Stream {
    state: Arc<StreamState>,
    shared: Arc<Shared>,
}

impl Session {
    /// Starts serving: `leftover` are bytes read past the upgrade request. Streams the peer
    /// opens arrive on the returned channel.
    pub fn start<R, W>(
        reader: R,
        writer: W,
        leftover: &[u8],
    ) -> (Session, mpsc::UnboundedReceiver<Stream>)
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(Writer {
                io: Box::new(writer),
                enc: HeaderEncoder::new(),
                buf: Vec::with_capacity(MAX_DATA_FRAME + 16),
                shut: false,
            }),
            streams: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
            peer_flow_control: AtomicBool::new(false),
            session_send_window: AtomicI64::new(frame::DEFAULT_WINDOW),
            initial_send_window: AtomicI64::new(frame::DEFAULT_WINDOW),
            session_unacked: AtomicI64::new(0),
            window_changed: Notify::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Session {
            shared: Arc::clone(&shared),
        };
        let mut buf = BytesMut::with_capacity(READ_CHUNK * 2);
        buf.extend_from_slice(leftover);
        let s = session.clone();
        tokio::spawn(async move {
            if let Err(e) = s.greet().await {
                debug!(error = %e, "SPDY: cannot send SETTINGS");
            }
            if let Err(e) = s.read_loop(reader, buf, tx).await {
                debug!(error = %e, "SPDY connection ended");
            }
            s.shared.closed.cancel();
            for st in lock(&s.shared.streams).values() {
                lock(&st.inbound).reset = true;
                st.readable.notify_waiters();
                st.drained.notify_waiters();
            }
            s.shared.window_changed.notify_waiters();
        });
        (session, rx)
    }

    /// Resolves when the peer closed the connection or it broke.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Ends the session: GOAWAY, then the write side is shut down.
    pub async fn close(&self) {
        let mut w = self.shared.writer.lock().await;
        if w.shut {
            return;
        }
        let last = lock(&self.shared.streams)
            .keys()
            .copied()
            .max()
            .unwrap_or(0);
        frame::put_goaway(&mut w.buf, last, 0);
        let _ = w.send().await;
        let _ = w.io.shutdown().await;
        w.shut = true;
    }

    async fn greet(&self) -> io::Result<()> {
        let mut w = self.shared.writer.lock().await;
        frame::put_settings(
            &mut w.buf,
            &[(
                0,
                frame::SETTINGS_INITIAL_WINDOW_SIZE,
                RECEIVE_WINDOW as u32,
            )],
        );
        frame::put_window_update(
            &mut w.buf,
            0,
            (SESSION_RECEIVE_WINDOW - frame::DEFAULT_WINDOW) as u32,
        );
        w.send().await
    }

    async fn control(&self, build: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut w = self.shared.writer.lock().await;
        build(&mut w.buf);
        w.send().await
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        mut buf: BytesMut,
        tx: mpsc::UnboundedSender<Stream>,
    ) -> io::Result<()> {
        let mut dec = HeaderDecoder::new();
        loop {
            loop {
                let f = frame::decode(&mut buf, &mut dec)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let Some(f) = f else { break };
                self.handle(f, &tx).await?;
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            if reader.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }

    fn stream(&self, id: u32) -> Option<Arc<StreamState>> {
        lock(&self.shared.streams).get(&id).cloned()
    }

    async fn handle(&self, f: Frame, tx: &mpsc::UnboundedSender<Stream>) -> io::Result<()> {
        match f {
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                let Some(st) = self.stream(stream) else {
                    return Ok(());
                };
                let mut over = false;
                {
                    let mut ib = lock(&st.inbound);
                    if !data.is_empty() && !ib.reset {
                        ib.buffered += data.len();
                        ib.chunks.push_back(data);
                        over = ib.buffered > BUFFER_LIMIT;
                    }
                    if flags & FLAG_FIN != 0 {
                        ib.fin = true;
                    }
                }
                st.readable.notify_waiters();
                while over && !self.is_closed() {
                    let drained = st.drained.notified();
                    {
                        let ib = lock(&st.inbound);
                        if ib.buffered <= BUFFER_LIMIT || ib.reset {
                            break;
                        }
                    }
                    drained.await;
                    over = lock(&st.inbound).buffered > BUFFER_LIMIT;
                }
            }
            Frame::SynStream {
                stream,
                flags,
                headers,
                ..
            } => {
                let st = Arc::new(StreamState {
                    id: stream,
                    headers,
                    inbound: Mutex::new(Inbound {
                        fin: flags & FLAG_FIN != 0,
                        ..Default::default()
                    }),
                    readable: Notify::new(),
                    drained: Notify::new(),
                    send_window: AtomicI64::new(
                        self.shared.initial_send_window.load(Ordering::Relaxed),
                    ),
                    local_fin: AtomicBool::new(false),
                });
                lock(&self.shared.streams).insert(stream, Arc::clone(&st));
                {
                    let mut w = self.shared.writer.lock().await;
                    let Writer { enc, buf, .. } = &mut *w;
                    frame::put_syn_reply(buf, enc, stream, 0, &[])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    w.send().await?;
                }
                let s = Stream {
                    state: st,
                    shared: Arc::clone(&self.shared),
                };
                if tx.send(s).is_err() {
                    self.control(|b| frame::put_rst_stream(b, stream, frame::RST_REFUSED_STREAM))
                        .await?;
                }
            }
            Frame::RstStream { stream, .. } => {
                if let Some(st) = lock(&self.shared.streams).remove(&stream) {
                    lock(&st.inbound).reset = true;
                    st.readable.notify_waiters();
                    st.drained.notify_waiters();
                    self.shared.window_changed.notify_waiters();
                }
            }
            Frame::Settings { entries, .. } => {
                for (_, id, value) in entries {
                    if id == frame::SETTINGS_INITIAL_WINDOW_SIZE {
                        let new = i64::from(value);
                        let old = self.shared.initial_send_window.swap(new, Ordering::Relaxed);
                        for st in lock(&self.shared.streams).values() {
                            st.send_window.fetch_add(new - old, Ordering::Relaxed);
                        }
                        self.shared.peer_flow_control.store(true, Ordering::Relaxed);
                    }
                }
                self.shared.window_changed.notify_waiters();
            }
            Frame::Ping { id } => {
                // Only the peer's pings (odd ids from a client) are echoed.
                if id % 2 == 1 {
                    self.control(|b| frame::put_ping(b, id)).await?;
                }
            }
            Frame::WindowUpdate { stream, delta } => {
                self.shared.peer_flow_control.store(true, Ordering::Relaxed);
                if stream == 0 {
                    self.shared
                        .session_send_window
                        .fetch_add(i64::from(delta), Ordering::Relaxed);
                } else if let Some(st) = self.stream(stream) {
                    st.send_window
                        .fetch_add(i64::from(delta), Ordering::Relaxed);
                }
                self.shared.window_changed.notify_waiters();
            }
            Frame::GoAway { .. } => debug!("SPDY peer sent GOAWAY"),
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.state.id
    }

    /// The headers of its SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.state.headers
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        frame::header(&self.state.headers, name)
    }

    /// The next chunk the peer sent; None once it half-closed, reset, or the connection ended.
    pub async fn read(&self) -> Option<Bytes> {
        loop {
            let readable = self.state.readable.notified();
            let got = {
                let mut ib = lock(&self.state.inbound);
                match ib.chunks.pop_front() {
                    Some(c) => {
                        ib.buffered -= c.len();
                        ib.unacked += c.len() as i64;
                        let ack = (ib.unacked >= RECEIVE_WINDOW / 2)
                            .then(|| std::mem::take(&mut ib.unacked));
                        Some((c, ack))
                    }
                    None if ib.fin || ib.reset => return None,
                    None => None,
                }
            };
            if let Some((chunk, ack)) = got {
                self.state.drained.notify_waiters();
                self.acknowledge(chunk.len() as i64, ack).await;
                return Some(chunk);
            }
            readable.await;
        }
    }

    async fn acknowledge(&self, len: i64, stream_ack: Option<i64>) {
        let session = self
            .shared
            .session_unacked
            .fetch_add(len, Ordering::Relaxed)
            + len;
        let session_ack = session >= SESSION_RECEIVE_WINDOW / 2;
        if session_ack {
            self.shared
                .session_unacked
                .fetch_sub(session, Ordering::Relaxed);
        }
        if stream_ack.is_none() && !session_ack {
            return;
        }
        let mut w = self.shared.writer.lock().await;
        if let Some(n) = stream_ack {
            frame::put_window_update(&mut w.buf, self.state.id, n as u32);
        }
        if session_ack {
            frame::put_window_update(&mut w.buf, 0, session as u32);
        }
        let _ = w.send().await;
    }

    /// Waits until `want` bytes may be sent, and returns how many may go now.
    async fn credit(&self, want: usize) -> io::Result<usize> {
        loop {
            let changed = self.shared.window_changed.notified();
            if self.shared.closed.is_cancelled() || lock(&self.state.inbound).reset {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the SPDY stream was reset or its connection closed",
                ));
            }
            if !self.shared.peer_flow_control.load(Ordering::Relaxed) {
                return Ok(want);
            }
            let window = self
                .state
                .send_window
                .load(Ordering::Relaxed)
                .min(self.shared.session_send_window.load(Ordering::Relaxed));
            if window > 0 {
                return Ok(want.min(window as usize));
            }
            changed.await;
        }
    }

    /// Sends `data` (split into frames as windows and the frame size allow). What the windows
    /// allow at once goes out in one write: several frames, one syscall.
    pub async fn write(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            // Credit is taken before the writer lock: waiting for it while holding the lock
            // would keep the reader from answering the peer, which may be what it waits for.
            let n = self.credit(data.len()).await?;
            self.state
                .send_window
                .fetch_sub(n as i64, Ordering::Relaxed);
            self.shared
                .session_send_window
                .fetch_sub(n as i64, Ordering::Relaxed);
            let mut w = self.shared.writer.lock().await;
            for piece in data[..n].chunks(MAX_DATA_FRAME) {
                frame::put_data_header(&mut w.buf, self.state.id, 0, piece.len());
                w.buf.extend_from_slice(piece);
            }
            w.send().await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Half-closes our side (an empty DATA frame with FIN); once only.
    pub async fn close(&self) {
        if self.state.local_fin.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut w = self.shared.writer.lock().await;
        frame::put_data_header(&mut w.buf, self.state.id, FLAG_FIN, 0);
        let _ = w.send().await;
    }

    /// Resets the stream with `status`.
    pub async fn reset(&self, status: u32) {
        self.state.local_fin.store(true, Ordering::Relaxed);
        lock(&self.state.inbound).reset = true;
        self.state.readable.notify_waiters();
        lock(&self.shared.streams).remove(&self.state.id);
        let mut w = self.shared.writer.lock().await;
        frame::put_rst_stream(&mut w.buf, self.state.id, status);
        let _ = w.send().await;
    }
}
