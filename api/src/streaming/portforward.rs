//! PortForward: over SPDY (`portforward.k8s.io`) each forwarded connection is a pair of
//! streams (`streamType` error and data, sharing `port` and `requestID` headers); over
//! WebSocket each port of the request is a pair of channels (data 2i, error 2i+1) whose first
//! message is the port, little-endian; SPDY may also come tunnelled in a WebSocket. A port
//! that cannot be reached is reported, as text, on that connection's error stream.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::spdy::{Session, Stream};
use super::websocket::{self, ChannelConn};
use super::{Backend, BoxConn, Input, Output, http, spdy_handshake};

/// The SPDY port-forward protocol.
pub const SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
/// SPDY tunnelled in WebSocket binary messages.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// WebSocket channel protocols for port-forward.
pub const WS_PROTOCOLS: &[&str] = &[
    TUNNEL_PROTOCOL,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "portforward.k8s.io",
];

/// Connects to `localhost:port` inside the network namespace pinned at `netns`: a thread
/// that exists only for this enters the namespace and connects, and the socket is then used
/// from the async runtime (a socket stays in the namespace it was made in).
pub async fn dial_in_netns(netns: PathBuf, port: u16) -> io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bungeo-netns-dial".into())
        .spawn(move || {
            let connect = || -> io::Result<std::net::TcpStream> {
                let ns = std::fs::File::open(&netns)?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                let v4 = std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port));
                let s = match v4 {
                    Ok(s) => s,
                    Err(e) => std::net::TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, port))
                        .map_err(|_| e)?,
                };
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok(s)
            };
            let _ = tx.send(connect());
        })?;
    let std = rx
        .await
        .map_err(|_| io::Error::other("the namespace dialer thread died"))??;
    TcpStream::from_std(std)
}

/// Connects to `localhost:port` in the daemon's own network namespace (the node's, for a pod
/// on the node's network).
pub async fn dial_here(port: u16) -> io::Result<TcpStream> {
    let s = match TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).await {
        Ok(s) => s,
        Err(e) => TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, port))
            .await
            .map_err(|_| e)?,
    };
    s.set_nodelay(true)?;
    Ok(s)
}

/// Copies between the client's data stream and the pod's connection. The client's end of
/// input half-closes the pod connection; the pod closing it ends the forward (as with
/// containerd and kubelet: clients never half-close, and wait for the error stream to end).
pub async fn pump(mut input: Input, output: Output, conn: TcpStream) -> io::Result<()> {
    let (mut rd, mut wr) = conn.into_split();
    let up = tokio::spawn(async move {
        while let Some(chunk) = input.next().await {
            wr.write_all(&chunk).await?;
        }
        wr.shutdown().await
    });
    let mut buf = vec![0u8; 64 * 1024];
    let down = async {
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            output.write(&buf[..n]).await?;
        }
    }
    .await;
    output.close().await;
    up.abort();
    down
}

fn parse_port(s: Option<&str>) -> Result<u16, String> {
    let s = s.ok_or("port header is missing")?;
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port {s:?}")),
    }
}

async fn forward_pair(backend: Arc<dyn Backend>, sandbox_id: String, error: Stream, data: Stream) {
    let port = parse_port(data.header("port"));
    let result = match port {
        Ok(port) => match backend.dial(&sandbox_id, port).await {
            Ok(conn) => pump(Input::Spdy(data.clone()), Output::Spdy(data.clone()), conn)
                .await
                .map_err(|e| format!("error forwarding port {port} to pod {sandbox_id}: {e}")),
            Err(e) => Err(format!(
                "error forwarding port {port} to pod {sandbox_id}: failed to connect to localhost:{port} inside the pod's network namespace: {e}"
            )),
        },
        Err(e) => Err(e),
    };
    if let Err(msg) = result {
        debug!(pod_id = %sandbox_id, "{msg}");
        let _ = error.write(msg.as_bytes()).await;
    }
    data.close().await;
    error.close().await;
}

/// Serves stream pairs on a SPDY session until the client closes it.
async fn serve_session(
    session: Session,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<Stream>,
    sandbox_id: String,
    backend: Arc<dyn Backend>,
) {
    let mut half: HashMap<String, (Option<Stream>, Option<Stream>)> = HashMap::new();
    while let Some(s) = incoming.recv().await {
        let Some(id) = s.header("requestid").map(str::to_owned) else {
            s.reset(super::spdy::frame::RST_PROTOCOL_ERROR).await;
            continue;
        };
        let entry = half.entry(id.clone()).or_default();
        match s.header("streamtype") {
            Some("error") => entry.0 = Some(s),
            Some("data") => entry.1 = Some(s),
            _ => {
                s.reset(super::spdy::frame::RST_PROTOCOL_ERROR).await;
                continue;
            }
        }
        if entry.0.is_some()
            && entry.1.is_some()
            && let Some((Some(e), Some(d))) = half.remove(&id)
        {
            tokio::spawn(forward_pair(backend.clone(), sandbox_id.clone(), e, d));
        }
    }
    session.close().await;
}

/// Serves a PortForward over SPDY.
pub async fn serve_spdy(
    mut conn: BoxConn,
    head: &http::RequestHead,
    leftover: Vec<u8>,
    sandbox_id: String,
    backend: Arc<dyn Backend>,
) -> io::Result<()> {
    if spdy_handshake(&mut conn, head, SPDY_PROTOCOLS)
        .await?
        .is_none()
    {
        return Ok(());
    }
    let (r, w) = tokio::io::split(conn);
    let (session, incoming) = Session::start(r, w, &leftover);
    serve_session(session, incoming, sandbox_id, backend).await;
    Ok(())
}

/// The ports of a WebSocket port-forward: the CRI request's, else the `port` query values.
pub fn websocket_ports(bound: &[u16], head: &http::RequestHead) -> Result<Vec<u16>, String> {
    if !bound.is_empty() {
        return Ok(bound.to_vec());
    }
    let mut ports = Vec::new();
    for v in head.query_values("port") {
        for p in v.split(',') {
            ports.push(parse_port(Some(p))?);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// Serves a PortForward over WebSocket: channels, or the SPDY tunnel.
pub async fn serve_websocket(
    mut conn: BoxConn,
    head: &http::RequestHead,
    sandbox_id: String,
    bound: Vec<u16>,
    backend: Arc<dyn Backend>,
) -> io::Result<()> {
    let tunnel = head
        .values("sec-websocket-protocol")
        .iter()
        .any(|p| p == TUNNEL_PROTOCOL);
    let ports = if tunnel {
        Vec::new()
    } else {
        match websocket_ports(&bound, head) {
            Ok(p) => p,
            Err(e) => return http::respond(&mut conn, 400, "Bad Request", &[], &e).await,
        }
    };
    let Some((protocol, ws)) = websocket::accept(conn, head, WS_PROTOCOLS).await? else {
        return Ok(());
    };
    if protocol == TUNNEL_PROTOCOL {
        let (r, w) = tokio::io::split(websocket::tunnel(ws));
        let (session, incoming) = Session::start(r, w, &[]);
        serve_session(session, incoming, sandbox_id, backend).await;
        return Ok(());
    }
    let chan = ChannelConn::start(ws, protocol.contains("base64"), false, ports.len() * 2);
    let mut inputs = chan.take_inputs();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let data = chan.writer((2 * i) as u8);
        let error = chan.writer((2 * i + 1) as u8);
        let prefix = port.to_le_bytes();
        data.write(&prefix).await?;
        error.write(&prefix).await?;
        let Some(input) = inputs[2 * i].take() else {
            continue;
        };
        let (backend, sandbox_id) = (backend.clone(), sandbox_id.clone());
        tasks.push(tokio::spawn(async move {
            let r = match backend.dial(&sandbox_id, port).await {
                Ok(conn) => pump(Input::Channel(input), Output::Ws(data), conn)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!(
                    "failed to connect to localhost:{port} inside the pod's network namespace: {e}"
                )),
            };
            if let Err(e) = r {
                let msg = format!("error forwarding port {port} to pod {sandbox_id}: {e}");
                let _ = error.write(msg.as_bytes()).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    chan.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_request_or_the_query() {
        let head = http::RequestHead {
            query: "port=80&port=81,82".into(),
            ..Default::default()
        };
        assert_eq!(websocket_ports(&[9], &head).unwrap(), vec![9]);
        assert_eq!(websocket_ports(&[], &head).unwrap(), vec![80, 81, 82]);
        let bad = http::RequestHead {
            query: "port=0".into(),
            ..Default::default()
        };
        assert!(websocket_ports(&[], &bad).is_err());
        assert!(websocket_ports(&[], &http::RequestHead::default()).is_err());
        assert_eq!(80u16.to_le_bytes(), [80, 0]);
        assert_eq!(8080u16.to_le_bytes(), [0x90, 0x1f]);
    }
}
