//! A client of the CRI streaming servers, as kubectl, kubelet's clients and crictl speak to
//! them: `exec`, `attach` and `port-forward` over SPDY/3.1 (Kubernetes' `httpstream/spdy`,
//! moby/spdystream) and over WebSocket (the `channel.k8s.io` protocols, and the SPDY tunnel
//! newer clients use for port-forward).
//!
//! Written from the protocol documentation and Kubernetes' sources, and proven against
//! containerd 1.6's streaming server before it is pointed at bungeo's: one side of the
//! protocol must not be the only judge of the other.

pub mod exec;
pub mod http;
pub mod portforward;
pub mod spdy;
pub mod websocket;

/// The remote-command (exec and attach) protocols, newest first, as kubectl offers them.
pub const REMOTE_COMMAND_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The SPDY port-forward protocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that tunnels a SPDY port-forward session (kubectl 1.30+).
pub const PORT_FORWARD_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// What went wrong talking to a streaming server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A URL this client cannot use.
    #[error("streaming URL: {0}")]
    Url(String),
    /// A socket operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The server answered the upgrade with a status other than 101.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The response body, for the message.
        body: String,
    },
    /// The server broke the protocol, or the client was asked for something it cannot do.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Header compression failed.
    #[error("SPDY header compression: {0}")]
    Compression(String),
    /// The connection or stream is gone.
    #[error("closed: {0}")]
    Closed(String),
    /// The server did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A WebSocket failure.
    #[error("websocket: {0}")]
    WebSocket(String),
}

impl Error {
    /// The HTTP status the server refused the upgrade with, if that is what happened.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The result type of the streaming client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The HTTP status of the refusal anywhere in an `anyhow` chain.
pub fn http_status(err: &anyhow::Error) -> Option<u16> {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>().and_then(Error::http_status))
}
