//! The streaming server behind Exec, Attach and PortForward: the CRI call stores its request
//! under a single-use token and answers a URL; the client then upgrades an HTTP connection on
//! that URL to SPDY/3.1 or WebSocket, as kubelet's streaming server
//! (`pkg/kubelet/cri/streaming`) and containerd's do. With `streaming.tls_cert` and
//! `streaming.tls_key` set, it speaks HTTPS (rustls) and its URLs are `https://`.

pub mod http;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod tls;
pub mod websocket;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::StreamingConfig;
use crate::errors::{Error, Result};

/// How long a URL's token stays valid (kubelet's and containerd's default).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How long a client may take to open the streams it announced.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A client connection: plain TCP, or TLS over it.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}
/// A client connection, boxed so one code path serves both.
pub type BoxConn = Box<dyn Conn>;

/// What a token stands for: the CRI request, checked when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec(CommandRequest),
    Attach(CommandRequest),
    PortForward { sandbox_id: String, ports: Vec<u16> },
}

impl Request {
    fn kind(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }
}

/// An Exec or Attach request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandRequest {
    pub container_id: String,
    /// The command (empty for Attach).
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A terminal size change from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TermSize {
    #[serde(alias = "width")]
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(alias = "height")]
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Bytes from the client (stdin, a port-forward's data).
pub enum Input {
    Spdy(spdy::Stream),
    Channel(mpsc::Receiver<Bytes>),
}

impl Input {
    /// The next chunk; None at the client's end of input.
    pub async fn next(&mut self) -> Option<Bytes> {
        match self {
            Input::Spdy(s) => s.read().await,
            Input::Channel(rx) => rx.recv().await,
        }
    }
}

/// Bytes to the client (stdout, stderr, a port-forward's data).
#[derive(Clone)]
pub enum Output {
    Spdy(spdy::Stream),
    Ws(websocket::ChannelWriter),
}

impl Output {
    /// Sends all of `data`.
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        match self {
            Output::Spdy(s) => s.write(data).await,
            Output::Ws(w) => w.write(data).await,
        }
    }

    /// Ends this stream (the client reads end-of-file).
    pub async fn close(&self) {
        match self {
            Output::Spdy(s) => s.close().await,
            Output::Ws(w) => w.close().await,
        }
    }
}

/// The client's side of an Exec or Attach.
pub struct StreamIo {
    pub stdin: Option<Input>,
    pub stdout: Option<Output>,
    pub stderr: Option<Output>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Cancelled when the client goes away.
    pub gone: CancellationToken,
}

/// How an Exec or Attach ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code (Attach: the stream ended, code 0).
    Exited(i32),
    /// It could not run, or the stream broke.
    Failed(String),
}

/// What the server drives: the daemon's containers and sandboxes, or a fake in tests.
pub trait Backend: Send + Sync + 'static {
    /// Runs `req.cmd` in the container with the client's streams; returns once the process
    /// exited and its output was sent, or the client went away (the process is then killed).
    fn exec(&self, req: CommandRequest, io: StreamIo) -> BoxFuture<'static, Outcome>;
    /// Attaches the client's streams to the container's own stdio.
    fn attach(&self, req: CommandRequest, io: StreamIo) -> BoxFuture<'static, Outcome>;
    /// Connects to `localhost:port` inside the pod's network namespace.
    fn dial(&self, sandbox_id: &str, port: u16) -> BoxFuture<'static, io::Result<TcpStream>>;
}

/// Single-use tokens with a deadline.
#[derive(Default)]
pub struct Tokens {
    map: Mutex<HashMap<String, (Instant, Request)>>,
}

impl Tokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Request)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `req` and returns its new token.
    pub fn insert(&self, req: Request) -> String {
        let now = Instant::now();
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>());
        let mut map = self.lock();
        map.retain(|_, (deadline, _)| *deadline > now);
        map.insert(token.clone(), (now + TOKEN_TTL, req));
        token
    }

    /// Takes the request of `token`: once, and only before its deadline.
    pub fn take(&self, token: &str) -> Option<Request> {
        self.take_at(token, Instant::now())
    }

    fn take_at(&self, token: &str, now: Instant) -> Option<Request> {
        let (deadline, req) = self.lock().remove(token)?;
        (now < deadline).then_some(req)
    }
}

/// The streaming server: its address, its tokens and what it drives.
pub struct Server {
    base_url: String,
    addr: SocketAddr,
    tokens: Tokens,
    backend: Arc<dyn Backend>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Server {
    /// Binds the configured address (port 0: a free port).
    pub async fn bind(
        config: &StreamingConfig,
        backend: Arc<dyn Backend>,
    ) -> Result<(Arc<Server>, TcpListener)> {
        let tls = if config.tls_cert.as_os_str().is_empty() && config.tls_key.as_os_str().is_empty()
        {
            None
        } else {
            Some(tls::acceptor(&config.tls_cert, &config.tls_key)?)
        };
        let ip: std::net::IpAddr = config.address.parse().map_err(|_| {
            Error::InvalidConfig(format!(
                "streaming.address must be an IP address, got {:?}",
                config.address
            ))
        })?;
        let listener = TcpListener::bind((ip, config.port)).await.map_err(|e| {
            Error::io(
                "bind the streaming server",
                format!("{ip}:{}", config.port),
                e,
            )
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("read the streaming server's address", "tcp", e))?;
        let host = match addr.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = Arc::new(Server {
            base_url: format!("{scheme}://{host}:{}", addr.port()),
            addr,
            tokens: Tokens::default(),
            backend,
            tls,
        });
        info!(address = %addr, %scheme, "streaming server listening");
        Ok((server, listener))
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stores `req` and returns the URL the client connects to.
    pub fn url_for(&self, req: Request) -> String {
        let kind = req.kind();
        let token = self.tokens.insert(req);
        format!("{}/{kind}/{token}", self.base_url)
    }

    /// Accepts connections until `stop` is cancelled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((conn, peer)) => {
                    let _ = conn.set_nodelay(true);
                    let server = Arc::clone(&self);
                    tokio::spawn(async move {
                        let conn: BoxConn = match &server.tls {
                            None => Box::new(conn),
                            Some(acceptor) => {
                                let handshake = tokio::time::timeout(
                                    STREAM_CREATION_TIMEOUT,
                                    acceptor.accept(conn),
                                );
                                match handshake.await {
                                    Ok(Ok(tls)) => Box::new(tls),
                                    Ok(Err(e)) => {
                                        debug!(%peer, error = %e, "streaming: TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        debug!(%peer, "streaming: TLS handshake timed out");
                                        return;
                                    }
                                }
                            }
                        };
                        if let Err(e) = server.handle(conn).await {
                            debug!(%peer, error = %e, "streaming connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "streaming server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn handle(&self, mut conn: BoxConn) -> io::Result<()> {
        let (head, leftover) = http::read_head(&mut conn).await?;
        let mut parts = head.path.trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let req = match self.tokens.take(token) {
            Some(r) if r.kind() == kind => r,
            _ => {
                return http::respond(&mut conn, 404, "Not Found", &[], "404 page not found\n")
                    .await;
            }
        };
        let is_ws = head.has_token("upgrade", "websocket");
        match req {
            Request::Exec(r) | Request::Attach(r) if is_ws => {
                remotecommand::serve_websocket(conn, &head, r, kind == "exec", self.backend.clone())
                    .await
            }
            Request::Exec(r) | Request::Attach(r) => {
                remotecommand::serve_spdy(
                    conn,
                    &head,
                    leftover,
                    r,
                    kind == "exec",
                    self.backend.clone(),
                )
                .await
            }
            Request::PortForward { sandbox_id, ports } if is_ws => {
                portforward::serve_websocket(conn, &head, sandbox_id, ports, self.backend.clone())
                    .await
            }
            Request::PortForward { sandbox_id, .. } => {
                portforward::serve_spdy(conn, &head, leftover, sandbox_id, self.backend.clone())
                    .await
            }
        }
    }
}

/// Checks the streams an Exec or Attach asks for, as kubelet's streaming server does.
pub fn validate_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<()> {
    if tty && stderr {
        return Err(Error::InvalidArgument(
            "tty and stderr cannot both be true: a terminal has one output stream".to_owned(),
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::InvalidArgument(
            "one of stdin, stdout, or stderr must be set".to_owned(),
        ));
    }
    Ok(())
}

/// Picks the first of the client's protocols (in its order of preference) the server speaks.
pub fn negotiate(client: &[String], server: &[&'static str]) -> Option<&'static str> {
    client
        .iter()
        .find_map(|c| server.iter().find(|s| **s == c.as_str()).copied())
}

/// Checks the SPDY upgrade request and negotiates `X-Stream-Protocol-Version`; on failure the
/// error response is sent and None returned.
pub async fn spdy_handshake(
    conn: &mut BoxConn,
    head: &http::RequestHead,
    protocols: &[&'static str],
) -> io::Result<Option<&'static str>> {
    if !head.has_token("connection", "upgrade")
        || !head
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1"))
    {
        http::respond(
            conn,
            400,
            "Bad Request",
            &[],
            "unable to upgrade: missing upgrade headers in request\n",
        )
        .await?;
        return Ok(None);
    }
    let offered = head.values("x-stream-protocol-version");
    let Some(chosen) = negotiate(&offered, protocols) else {
        let accepted = protocols.join(", ");
        http::respond(
            conn,
            403,
            "Forbidden",
            &[("X-Accepted-Stream-Protocol-Versions", &accepted)],
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, \
                 server accepts {protocols:?}\n"
            ),
        )
        .await?;
        return Ok(None);
    };
    http::switching(
        conn,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", chosen),
        ],
    )
    .await?;
    Ok(Some(chosen))
}

#[cfg(test)]
mod loopback_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_expire() {
        let t = Tokens::default();
        let req = Request::PortForward {
            sandbox_id: "p".into(),
            ports: vec![80],
        };
        let a = t.insert(req.clone());
        let b = t.insert(req.clone());
        assert_ne!(a, b);
        assert!(a.len() >= 24);
        assert_eq!(t.take(&a), Some(req.clone()));
        assert_eq!(t.take(&a), None, "reused");
        assert_eq!(t.take("bogus"), None);
        assert_eq!(t.take_at(&b, Instant::now() + TOKEN_TTL), None, "expired");
        assert_eq!(t.take(&b), None, "an expired token is gone");
    }

    #[test]
    fn negotiation_follows_the_clients_order() {
        let s = remotecommand::SPDY_PROTOCOLS;
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(&c(&["v4.channel.k8s.io", "v5.channel.k8s.io"]), s),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(
            negotiate(&c(&["v9", "channel.k8s.io"]), s),
            Some("channel.k8s.io")
        );
        assert_eq!(negotiate(&c(&["v9"]), s), None);
        assert_eq!(negotiate(&[], s), None);
    }

    #[test]
    fn resize_messages_parse_as_kubectl_sends_them() {
        let t: TermSize = serde_json::from_str(r#"{"Width":80,"Height":24}"#).unwrap();
        assert_eq!(
            t,
            TermSize {
                width: 80,
                height: 24
            }
        );
        let t: TermSize = serde_json::from_str(r#"{"width":1,"height":2}"#).unwrap();
        assert_eq!(
            t,
            TermSize {
                width: 1,
                height: 2
            }
        );
    }
}
