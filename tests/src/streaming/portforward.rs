//! Port-forward as kubectl does it (client-go `tools/portforward`): over SPDY
//! (`portforward.k8s.io`) each connection is a pair of streams, `streamType: error` then
//! `streamType: data`, both with `port` and a `requestID` that pairs them; the error stream
//! carries a message if forwarding failed. Over WebSocket (`v4.channel.k8s.io`) one socket
//! per port set; over the SPDY tunnel, SPDY inside a WebSocket.
//!
//! A forwarded connection is handed out as one end of an in-memory pipe, so any
//! `AsyncRead + AsyncWrite` code can use it.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::http::StreamUrl;
use super::spdy::{FlowControl, Session};
use super::websocket::{ChannelConn, spdy_tunnel};
use super::{Error, PORT_FORWARD_PROTOCOL, Result};

/// The WebSocket port-forward protocol.
pub const WEBSOCKET_PROTOCOL: &str = "v4.channel.k8s.io";

/// How to reach the streaming server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1 (kubectl before 1.30, crictl).
    Spdy(FlowControl),
    /// WebSocket channels with the `port` query.
    WebSocket,
    /// SPDY tunnelled through a WebSocket (`SPDY/3.1+portforward.k8s.io`).
    Tunnel(FlowControl),
}

impl Transport {
    /// SPDY as kubectl speaks it.
    pub const SPDY: Transport = Transport::Spdy(FlowControl::Kubectl);
}

enum Kind {
    Session(Session),
    WebSocket(StreamUrl),
}

/// A port-forward URL, ready to forward connections.
pub struct PortForwarder {
    kind: Kind,
    next_request: AtomicU32,
}

impl PortForwarder {
    /// Connects to a port-forward URL (for WebSocket, connections come with [`dial`]).
    ///
    /// [`dial`]: PortForwarder::dial
    pub async fn connect(url: &str, transport: Transport) -> Result<Self> {
        let url = StreamUrl::parse(url)?;
        let kind = match transport {
            Transport::Spdy(flow) => {
                let session = Session::connect(&url, &[PORT_FORWARD_PROTOCOL], flow).await?;
                if session.protocol() != Some(PORT_FORWARD_PROTOCOL) {
                    return Err(Error::Protocol(format!(
                        "{url}: negotiated {:?}, want {PORT_FORWARD_PROTOCOL}",
                        session.protocol()
                    )));
                }
                Kind::Session(session)
            }
            Transport::Tunnel(flow) => Kind::Session(spdy_tunnel(&url, flow).await?),
            Transport::WebSocket => Kind::WebSocket(url),
        };
        Ok(Self {
            kind,
            next_request: AtomicU32::new(0),
        })
    }

    /// Forwards a new connection to `port` in the pod.
    pub async fn dial(&self, port: u16) -> Result<Forwarded> {
        match &self.kind {
            Kind::Session(s) => self.dial_spdy(s, port).await,
            Kind::WebSocket(url) => dial_ws(url, port).await,
        }
    }

    async fn dial_spdy(&self, session: &Session, port: u16) -> Result<Forwarded> {
        let request = self
            .next_request
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let port_text = port.to_string();
        let headers = |kind| {
            [
                ("streamType", kind),
                ("port", port_text.as_str()),
                ("requestID", request.as_str()),
            ]
        };
        let mut error = session.open_stream(&headers("error")).await?;
        // kubectl never writes on the error stream and half-closes it at once.
        error.writer().close().await?;
        let data = session.open_stream(&headers("data")).await?;
        let (local, remote) = tokio::io::duplex(256 * 1024);
        let (err_tx, err_rx) = oneshot::channel();
        let error_task = tokio::spawn(async move {
            let text = error.read_to_end().await;
            let _ = err_tx.send(String::from_utf8_lossy(&text).into_owned());
        });
        let pump = tokio::spawn(async move {
            let writer = data.writer();
            let mut data = data;
            let (mut from_local, mut to_local) = tokio::io::split(remote);
            let up = async {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match from_local.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if writer.write(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = writer.close().await;
            };
            let down = async {
                while let Some(chunk) = data.read().await {
                    if to_local.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = to_local.shutdown().await;
            };
            tokio::join!(up, down);
        });
        Ok(Forwarded {
            io: Some(local),
            error: err_rx,
            tasks: vec![error_task, pump],
        })
    }
}

async fn dial_ws(url: &StreamUrl, port: u16) -> Result<Forwarded> {
    let url = url.with_query("port", &port.to_string());
    let mut conn = ChannelConn::connect(&url, &[WEBSOCKET_PROTOCOL], &[0, 1]).await?;
    let mut data_rx = conn
        .take_channel(0)
        .ok_or_else(|| Error::Protocol("no data channel".into()))?;
    let mut error_rx = conn
        .take_channel(1)
        .ok_or_else(|| Error::Protocol("no error channel".into()))?;
    let sender = conn.sender();
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let (err_tx, err_rx) = oneshot::channel();
    let error_task = tokio::spawn(async move {
        let mut prefix = PortPrefix::new(port);
        let mut text = Vec::new();
        let mut bad = None;
        while let Some(chunk) = error_rx.recv().await {
            match prefix.strip(&chunk) {
                Ok(rest) => text.extend_from_slice(rest),
                Err(e) => bad = Some(e),
            }
        }
        let mut message = String::from_utf8_lossy(&text).into_owned();
        if let Some(e) = bad {
            message.push_str(&format!(" [client: {e}]"));
        }
        let _ = err_tx.send(message);
    });
    let pump = tokio::spawn(async move {
        let _conn = conn;
        let (mut from_local, mut to_local) = tokio::io::split(remote);
        let up = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match from_local.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sender.send(0, &buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        };
        let down = async {
            let mut prefix = PortPrefix::new(port);
            while let Some(chunk) = data_rx.recv().await {
                let rest = match prefix.strip(&chunk) {
                    Ok(r) => r,
                    Err(_) => break,
                };
                if to_local.write_all(rest).await.is_err() {
                    break;
                }
            }
            let _ = to_local.shutdown().await;
        };
        // The WebSocket form has no half-close: the local end closing only stops sending.
        tokio::join!(up, down);
    });
    Ok(Forwarded {
        io: Some(local),
        error: err_rx,
        tasks: vec![error_task, pump],
    })
}

/// Strips and checks the little-endian port the server sends first on each channel.
struct PortPrefix {
    want: u16,
    seen: Vec<u8>,
}

impl PortPrefix {
    fn new(want: u16) -> Self {
        Self {
            want,
            seen: Vec::with_capacity(2),
        }
    }

    fn strip<'a>(&mut self, chunk: &'a [u8]) -> Result<&'a [u8], String> {
        if self.seen.len() == 2 {
            return Ok(chunk);
        }
        let take = (2 - self.seen.len()).min(chunk.len());
        self.seen.extend_from_slice(&chunk[..take]);
        if self.seen.len() == 2 {
            let got = u16::from_le_bytes([self.seen[0], self.seen[1]]);
            if got != self.want {
                return Err(format!(
                    "channel starts with port {got}, want {}",
                    self.want
                ));
            }
        }
        Ok(&chunk[take..])
    }
}

/// One forwarded connection.
pub struct Forwarded {
    io: Option<DuplexStream>,
    error: oneshot::Receiver<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Forwarded {
    /// The connection (once): reads what the pod's server sends, writes go to it; shutting
    /// down the write side half-closes (SPDY).
    pub fn take_io(&mut self) -> Option<DuplexStream> {
        self.io.take()
    }

    /// The error stream's text, once it ends (empty: no error).
    pub async fn error_text(&mut self) -> String {
        (&mut self.error).await.unwrap_or_default()
    }
}

/// Sends `request` through a forwarded connection and reads the answer to its end.
pub async fn round_trip(conn: &mut Forwarded, request: &[u8]) -> Result<Vec<u8>> {
    let mut io = conn
        .take_io()
        .ok_or_else(|| Error::Protocol("connection already taken".into()))?;
    io.write_all(request)
        .await
        .map_err(|e| Error::Io("write to the forwarded connection".into(), e))?;
    let mut out = Vec::new();
    io.read_to_end(&mut out)
        .await
        .map_err(|e| Error::Io("read from the forwarded connection".into(), e))?;
    Ok(out)
}

/// An HTTP/1.0 GET of `path` through `conn`: (status, body).
pub async fn http_get(conn: &mut Forwarded, path: &str) -> Result<(u16, Vec<u8>)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let response = round_trip(conn, request.as_bytes()).await?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            Error::Protocol(format!(
                "no HTTP response head in {} bytes: {:?}",
                response.len(),
                String::from_utf8_lossy(&response[..response.len().min(200)])
            ))
        })?;
    let status = std::str::from_utf8(&response[..end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Protocol("bad HTTP status line".into()))?;
    Ok((status, response[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_prefix_may_span_messages() {
        let mut p = PortPrefix::new(8080);
        let le = 8080u16.to_le_bytes();
        assert_eq!(p.strip(&le[..1]).unwrap(), b"");
        let mut rest = vec![le[1]];
        rest.extend_from_slice(b"data");
        assert_eq!(p.strip(&rest).unwrap(), b"data");
        assert_eq!(p.strip(b"more").unwrap(), b"more");
        let mut p = PortPrefix::new(80);
        assert!(p.strip(&81u16.to_le_bytes()).is_err());
    }
}
