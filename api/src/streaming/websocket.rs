//! WebSocket forms of the streaming protocols: the handshake, Kubernetes' channel framing
//! (`channel.k8s.io`: the first byte of each message names the channel; the `base64.` variants
//! send text frames with an ASCII digit and base64 data; v5 adds the close signal, channel
//! 255 followed by the channel to close), and the tunnel that carries SPDY inside binary
//! messages (`SPDY/3.1+portforward.k8s.io`).

use std::io;
use std::sync::Arc;

use super::BoxConn;
use base64::Engine;
use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::http;

/// v5's close signal channel.
pub const CLOSE_CHANNEL: u8 = 255;

type Ws = WebSocketStream<BoxConn>;
type Sink = Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>;

/// Completes the WebSocket handshake choosing among `protocols` ("" when the client asks for
/// none); on a bad request the error response is sent and None returned.
pub async fn accept(
    mut conn: BoxConn,
    head: &http::RequestHead,
    protocols: &[&'static str],
) -> io::Result<Option<(&'static str, Ws)>> {
    let Some(key) = head.header("sec-websocket-key") else {
        http::respond(
            &mut conn,
            400,
            "Bad Request",
            &[],
            "missing Sec-WebSocket-Key\n",
        )
        .await?;
        return Ok(None);
    };
    let offered = head.values("sec-websocket-protocol");
    let chosen = if offered.is_empty() {
        ""
    } else {
        match super::negotiate(&offered, protocols) {
            Some(p) => p,
            None => {
                http::respond(
                    &mut conn,
                    400,
                    "Bad Request",
                    &[],
                    &format!(
                        "requested protocol(s) are not supported: {offered:?}; supports {protocols:?}\n"
                    ),
                )
                .await?;
                return Ok(None);
            }
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    let mut headers = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept.as_str()),
    ];
    if !chosen.is_empty() {
        headers.push(("Sec-WebSocket-Protocol", chosen));
    }
    http::switching(&mut conn, &headers).await?;
    Ok(Some((
        chosen,
        WebSocketStream::from_raw_socket(conn, Role::Server, None).await,
    )))
}

/// Writes messages on one channel.
#[derive(Clone)]
pub struct ChannelWriter {
    sink: Sink,
    channel: u8,
    base64: bool,
}

impl ChannelWriter {
    fn message(&self, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            s.push(char::from(b'0' + self.channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::text(s)
        } else {
            let mut v = Vec::with_capacity(1 + data.len());
            v.push(self.channel);
            v.extend_from_slice(data);
            Message::binary(v)
        }
    }

    async fn send(&self, m: Message) -> io::Result<()> {
        self.sink
            .lock()
            .await
            .send(m)
            .await
            .map_err(io::Error::other)
    }

    /// Sends `data` as one message (an empty write sends nothing).
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(self.message(data)).await
    }

    /// Sends a message with no data: the channel's readiness signal.
    pub async fn write_empty(&self) -> io::Result<()> {
        self.send(self.message(&[])).await
    }

    /// Channels have no end of their own before v5; the connection's close ends them.
    pub async fn close(&self) {}
}

/// A WebSocket carrying numbered channels.
pub struct ChannelConn {
    sink: Sink,
    base64: bool,
    inputs: std::sync::Mutex<Vec<Option<mpsc::Receiver<Bytes>>>>,
    gone: CancellationToken,
}

/// Splits a received message into (channel, data).
pub fn decode_message(m: &Message, base64: bool) -> Option<(u8, Bytes)> {
    match m {
        Message::Binary(b) if !base64 && !b.is_empty() => Some((b[0], b.slice(1..))),
        Message::Text(t) if base64 && !t.is_empty() => {
            let s = t.as_str();
            let ch = s.as_bytes()[0].checked_sub(b'0')?;
            // By bytes: a multi-byte first character must not split a char boundary.
            let data = base64::engine::general_purpose::STANDARD
                .decode(&s.as_bytes()[1..])
                .ok()?;
            Some((ch, Bytes::from(data)))
        }
        // A v5 close signal is binary in both forms.
        Message::Binary(b) if base64 && b.first() == Some(&CLOSE_CHANNEL) => {
            Some((b[0], b.slice(1..)))
        }
        _ => None,
    }
}

impl ChannelConn {
    /// Starts reading `ws`: messages on channels `0..channels` go to their inputs.
    pub fn start(ws: Ws, base64: bool, v5: bool, channels: usize) -> Arc<ChannelConn> {
        let (sink, mut stream) = ws.split();
        let mut senders = Vec::with_capacity(channels);
        let mut inputs = Vec::with_capacity(channels);
        for _ in 0..channels {
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            senders.push(Some(tx));
            inputs.push(Some(rx));
        }
        let conn = Arc::new(ChannelConn {
            sink: Arc::new(tokio::sync::Mutex::new(sink)),
            base64,
            inputs: std::sync::Mutex::new(inputs),
            gone: CancellationToken::new(),
        });
        let gone = conn.gone.clone();
        let sink = Arc::clone(&conn.sink);
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                match &m {
                    Message::Close(_) => break,
                    Message::Ping(p) => {
                        let _ = sink.lock().await.send(Message::Pong(p.clone())).await;
                        continue;
                    }
                    _ => {}
                }
                let Some((ch, data)) = decode_message(&m, base64) else {
                    continue;
                };
                if v5 && ch == CLOSE_CHANNEL {
                    if let Some(c) = data.first() {
                        senders.get_mut(usize::from(*c)).map(Option::take);
                    }
                    continue;
                }
                let Some(Some(tx)) = senders.get(usize::from(ch)) else {
                    continue;
                };
                if !data.is_empty() && tx.send(data).await.is_err() {
                    senders[usize::from(ch)] = None;
                }
            }
            gone.cancel();
        });
        conn
    }

    /// The receivers of every channel (each can be taken once).
    pub fn take_inputs(&self) -> Vec<Option<mpsc::Receiver<Bytes>>> {
        std::mem::take(&mut *self.inputs.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A writer for `channel`.
    pub fn writer(&self, channel: u8) -> ChannelWriter {
        ChannelWriter {
            sink: Arc::clone(&self.sink),
            channel,
            base64: self.base64,
        }
    }

    /// Cancelled when the client closes the WebSocket.
    pub fn gone(&self) -> CancellationToken {
        self.gone.clone()
    }

    /// Sends a normal close and flushes.
    pub async fn close(&self) {
        let mut s = self.sink.lock().await;
        let _ = s.send(Message::Close(None)).await;
        let _ = s.close().await;
    }
}

/// Bridges SPDY frames carried in binary messages to a byte stream.
pub fn tunnel(ws: Ws) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let b = match m {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        let _ = sink.close().await;
    });
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(base64: bool, channel: u8) -> Message {
        // Only the message encoding is under test: build it without a socket.
        let data = b"hi";
        if base64 {
            let mut s = String::from(char::from(b'0' + channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::text(s)
        } else {
            Message::binary(vec![channel, b'h', b'i'])
        }
    }

    #[test]
    fn channel_messages_decode_in_both_encodings() {
        let m = writer(false, 1);
        assert_eq!(
            decode_message(&m, false),
            Some((1, Bytes::from_static(b"hi")))
        );
        let m = writer(true, 2);
        assert_eq!(m.to_text().unwrap(), "2aGk=");
        assert_eq!(
            decode_message(&m, true),
            Some((2, Bytes::from_static(b"hi")))
        );
        let close = Message::binary(vec![CLOSE_CHANNEL, 0]);
        assert_eq!(
            decode_message(&close, false),
            Some((CLOSE_CHANNEL, Bytes::from_static(&[0])))
        );
        assert_eq!(decode_message(&Message::binary(Vec::new()), false), None);
    }

    #[test]
    fn base64_text_starting_with_a_multibyte_character_is_refused() {
        // A hostile client's text message: this used to panic slicing inside "é".
        assert_eq!(decode_message(&Message::text("\u{e9}aGk="), true), None);
        assert_eq!(decode_message(&Message::text("\u{1f600}"), true), None);
    }
}
