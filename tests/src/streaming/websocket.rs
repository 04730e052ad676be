//! The WebSocket forms of the streaming protocols.
//!
//! `channel.k8s.io` (and its `v4.`/`v5.` versions): every binary message starts with a
//! channel byte. Exec and attach use 0 stdin, 1 stdout, 2 stderr, 3 error (the
//! `metav1.Status` JSON on v4+), 4 resize (`{"Width":w,"Height":h}`); v5 adds channel 255,
//! whose message `[255, c]` closes channel `c` (stdin EOF, which v4 cannot express). The
//! server first sends an empty message on the lowest channel it writes (stdout, else stderr,
//! else error) to say the streams are set up.
//!
//! Port-forward (`v4.channel.k8s.io`, ports in the `port` query): channels `2i` (data) and
//! `2i+1` (error) for the `i`-th port, and the server's first bytes on each are the port,
//! little-endian u16. The client writes raw data on the data channel, without prefix.
//!
//! `SPDY/3.1+portforward.k8s.io`: the WebSocket carries a SPDY session's bytes in binary
//! messages, and the port-forward protocol runs on that session unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;

use super::http::StreamUrl;
use super::spdy::{FlowControl, Session};
use super::{Error, PORT_FORWARD_TUNNEL_PROTOCOL, Result};

/// Channel of v5's close messages.
pub const CLOSE_CHANNEL: u8 = 255;

/// Opens a WebSocket on `url` offering `protocols` in `Sec-WebSocket-Protocol`; the stream
/// and the protocol the server chose (empty if none).
async fn open(
    url: &StreamUrl,
    protocols: &[&str],
) -> Result<(tokio_tungstenite::WebSocketStream<TcpStream>, String)> {
    let ws_url = format!("ws://{}{}", url.authority, url.path_and_query);
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::Url(format!("{ws_url}: {e}")))?;
    if !protocols.is_empty() {
        let value = HeaderValue::from_str(&protocols.join(", "))
            .map_err(|e| Error::Url(format!("protocols {protocols:?}: {e}")))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", value);
    }
    let tcp = TcpStream::connect(&url.authority)
        .await
        .map_err(|e| Error::Io(format!("connect to {}", url.authority), e))?;
    tcp.set_nodelay(true)
        .map_err(|e| Error::Io("set TCP_NODELAY".into(), e))?;
    let (ws, response) = match tokio_tungstenite::client_async(request, tcp).await {
        Ok(r) => r,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            return Err(Error::Status {
                url: url.to_string(),
                status: response.status().as_u16(),
                body,
            });
        }
        Err(e) => return Err(Error::WebSocket(format!("{url}: handshake: {e}"))),
    };
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, protocol))
}

/// A WebSocket speaking a `channel.k8s.io` protocol.
pub struct ChannelConn {
    protocol: String,
    out: mpsc::Sender<Message>,
    channels: HashMap<u8, mpsc::Receiver<Bytes>>,
    close: Arc<Mutex<Option<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ChannelConn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ChannelConn {
    /// Connects and demultiplexes the server's messages into `read_channels`.
    pub async fn connect(
        url: &StreamUrl,
        protocols: &[&str],
        read_channels: &[u8],
    ) -> Result<Self> {
        let (ws, protocol) = open(url, protocols).await?;
        if !protocol.is_empty() && !protocols.contains(&protocol.as_str()) {
            return Err(Error::Protocol(format!(
                "{url}: the server chose {protocol:?}, which was not offered"
            )));
        }
        let (mut sink, mut source) = ws.split();
        let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let mut senders: HashMap<u8, mpsc::Sender<Bytes>> = HashMap::new();
        let mut channels = HashMap::new();
        for c in read_channels {
            let (tx, rx) = mpsc::channel(64);
            senders.insert(*c, tx);
            channels.insert(*c, rx);
        }
        let close = Arc::new(Mutex::new(None));
        let close_note = close.clone();
        let reader = tokio::spawn(async move {
            let note = |s: String| {
                if let Ok(mut c) = close_note.lock() {
                    c.get_or_insert(s);
                }
            };
            while let Some(m) = source.next().await {
                match m {
                    Ok(Message::Binary(b)) => {
                        let Some((&channel, payload)) = b.split_first() else {
                            continue;
                        };
                        if channel == CLOSE_CHANNEL {
                            if let Some(c) = payload.first() {
                                senders.remove(c);
                            }
                            continue;
                        }
                        if payload.is_empty() {
                            continue;
                        }
                        if let Some(tx) = senders.get(&channel) {
                            let _ = tx.send(b.slice(1..)).await;
                        }
                    }
                    Ok(Message::Close(frame)) => {
                        note(format!("close frame {frame:?}"));
                        break;
                    }
                    Ok(Message::Text(t)) => {
                        note(format!("unexpected text message {t:?}"));
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        note(format!("read: {e}"));
                        break;
                    }
                }
            }
            note("the connection ended".into());
        });
        Ok(Self {
            protocol,
            out: out_tx,
            channels,
            close,
            tasks: vec![writer, reader],
        })
    }

    /// The negotiated subprotocol (empty: none).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The receiver of `channel`'s data (once).
    pub fn take_channel(&mut self, channel: u8) -> Option<mpsc::Receiver<Bytes>> {
        self.channels.remove(&channel)
    }

    /// A handle that sends on this connection.
    pub fn sender(&self) -> ChannelSender {
        ChannelSender {
            out: self.out.clone(),
            v5: self.protocol.starts_with("v5."),
        }
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.close.lock().ok().and_then(|c| c.clone())
    }
}

/// Sends on a channel connection.
#[derive(Clone)]
pub struct ChannelSender {
    out: mpsc::Sender<Message>,
    v5: bool,
}

impl ChannelSender {
    /// Sends `data` on `channel` (in messages of at most 32 KiB, as kubectl).
    pub async fn send(&self, channel: u8, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(32 * 1024) {
            let mut m = Vec::with_capacity(chunk.len() + 1);
            m.push(channel);
            m.extend_from_slice(chunk);
            self.out
                .send(Message::Binary(m.into()))
                .await
                .map_err(|_| Error::Closed("the WebSocket writer ended".into()))?;
        }
        Ok(())
    }

    /// Closes `channel` (v5 only: earlier versions have no way to say so).
    pub async fn close_channel(&self, channel: u8) -> Result<()> {
        if !self.v5 {
            return Err(Error::Protocol(
                "closing a channel needs v5.channel.k8s.io".into(),
            ));
        }
        self.out
            .send(Message::Binary(vec![CLOSE_CHANNEL, channel].into()))
            .await
            .map_err(|_| Error::Closed("the WebSocket writer ended".into()))
    }

    /// Sends a WebSocket close frame.
    pub async fn close(&self) {
        let _ = self.out.send(Message::Close(None)).await;
    }
}

/// Opens a SPDY session tunnelled through a WebSocket (`SPDY/3.1+portforward.k8s.io`).
pub async fn spdy_tunnel(url: &StreamUrl, flow: FlowControl) -> Result<Session> {
    let (ws, protocol) = open(url, &[PORT_FORWARD_TUNNEL_PROTOCOL]).await?;
    if protocol != PORT_FORWARD_TUNNEL_PROTOCOL {
        return Err(Error::Protocol(format!(
            "{url}: the server chose {protocol:?}, not {PORT_FORWARD_TUNNEL_PROTOCOL}"
        )));
    }
    let (mut sink, mut source) = ws.split();
    // The session talks to one end of a pipe; the tasks carry its bytes in binary messages.
    let (session_side, tunnel_side) = tokio::io::duplex(256 * 1024);
    let (mut from_session, mut to_session) = tokio::io::split(tunnel_side);
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_session.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    let down = tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            if matches!(m, Message::Close(_) | Message::Text(_)) {
                break;
            }
            if let Message::Binary(b) = m
                && to_session.write_all(&b).await.is_err()
            {
                break;
            }
        }
        let _ = to_session.shutdown().await;
    });
    let (r, w) = tokio::io::split(session_side);
    let session = Session::start(r, w, Some(super::PORT_FORWARD_PROTOCOL.to_string()), flow)?;
    Ok(session.with_tasks(vec![up, down]))
}
