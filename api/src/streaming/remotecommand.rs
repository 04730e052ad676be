//! Exec and Attach streams (Kubernetes' remotecommand protocol): over SPDY each of error,
//! stdin, stdout, stderr and resize is a stream named by its `streamType` header; over
//! WebSocket each is a channel. The exit code goes on the error stream: a metav1.Status JSON
//! from v4 on, a plain message before.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::spdy::{Session, Stream};
use super::websocket::{self, ChannelConn};
use super::{
    Backend, BoxConn, CommandRequest, Input, Outcome, Output, STREAM_CREATION_TIMEOUT, StreamIo,
    TermSize, http, spdy_handshake,
};

/// SPDY protocols in the server's order.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// WebSocket protocols for exec and attach ("" is a client that asks for none).
pub const WS_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// Whether `protocol` reports status as JSON (v4 and later).
pub fn status_is_json(protocol: &str) -> bool {
    protocol.starts_with("v4.") || protocol.starts_with("v5.")
}

/// What goes on the error stream for `outcome` under `protocol`; None: nothing.
pub fn status_message(outcome: &Outcome, protocol: &str) -> Option<String> {
    if status_is_json(protocol) {
        let v = match outcome {
            Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
            Outcome::Exited(code) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(msg) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": msg,
                "reason": "InternalError",
                "details": {"causes": [{"message": msg}]},
                "code": 500,
            }),
        };
        return Some(v.to_string());
    }
    match outcome {
        Outcome::Exited(0) => None,
        Outcome::Exited(code) => Some(format!(
            "command terminated with non-zero exit code: exit status {code}"
        )),
        Outcome::Failed(msg) => Some(msg.clone()),
    }
}

/// Reads concatenated TermSize JSON objects from the resize stream.
fn spawn_resize_reader(mut input: Input) -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = input.next().await {
            pending.extend_from_slice(&chunk);
            let mut de = serde_json::Deserializer::from_slice(&pending).into_iter::<TermSize>();
            let mut used = 0;
            while let Some(Ok(size)) = de.next() {
                used = de.byte_offset();
                if tx.send(size).await.is_err() {
                    return;
                }
            }
            pending.drain(..used);
        }
    });
    rx
}

/// Serves an Exec or Attach over SPDY.
pub async fn serve_spdy(
    mut conn: BoxConn,
    head: &http::RequestHead,
    leftover: Vec<u8>,
    req: CommandRequest,
    exec: bool,
    backend: Arc<dyn Backend>,
) -> io::Result<()> {
    let Some(protocol) = spdy_handshake(&mut conn, head, SPDY_PROTOCOLS).await? else {
        return Ok(());
    };
    let (r, w) = tokio::io::split(conn);
    let (session, mut incoming) = Session::start(r, w, &leftover);
    let with_resize = req.tty && !matches!(protocol, "v2.channel.k8s.io" | "channel.k8s.io");
    let mut error: Option<Stream> = None;
    let (mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None);
    let expected = 1
        + usize::from(req.stdin)
        + usize::from(req.stdout)
        + usize::from(req.stderr && !req.tty)
        + usize::from(with_resize);
    let mut got = 0;
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while got < expected {
        let s = tokio::select! {
            s = incoming.recv() => s,
            _ = &mut deadline => None,
        };
        let Some(s) = s else {
            debug!("SPDY client did not open every stream in time");
            session.close().await;
            return Ok(());
        };
        let slot = match s.header("streamtype").unwrap_or("") {
            "error" => &mut error,
            "stdin" => &mut stdin,
            "stdout" => &mut stdout,
            "stderr" => &mut stderr,
            "resize" => &mut resize,
            _ => {
                s.reset(super::spdy::frame::RST_PROTOCOL_ERROR).await;
                continue;
            }
        };
        if slot.is_none() {
            got += 1;
        }
        *slot = Some(s);
    }
    let gone = CancellationToken::new();
    let watch = {
        let (session, gone) = (session.clone(), gone.clone());
        tokio::spawn(async move {
            session.closed().await;
            gone.cancel();
        })
    };
    let io = StreamIo {
        stdin: stdin.map(Input::Spdy),
        stdout: stdout.map(Output::Spdy),
        stderr: stderr.map(Output::Spdy),
        resize: resize.map(|s| spawn_resize_reader(Input::Spdy(s))),
        gone,
    };
    let outputs = [io.stdout.clone(), io.stderr.clone()];
    let outcome = if exec {
        backend.exec(req, io).await
    } else {
        backend.attach(req, io).await
    };
    for o in outputs.into_iter().flatten() {
        o.close().await;
    }
    if let Some(e) = error {
        if let Some(msg) = status_message(&outcome, protocol) {
            let _ = e.write(msg.as_bytes()).await;
        }
        e.close().await;
    }
    watch.abort();
    session.close().await;
    Ok(())
}

/// Serves an Exec or Attach over WebSocket channels.
pub async fn serve_websocket(
    conn: BoxConn,
    head: &http::RequestHead,
    req: CommandRequest,
    exec: bool,
    backend: Arc<dyn Backend>,
) -> io::Result<()> {
    let Some((protocol, ws)) = websocket::accept(conn, head, WS_PROTOCOLS).await? else {
        return Ok(());
    };
    let base64 = protocol.contains("base64");
    let v5 = protocol.starts_with("v5.");
    let conn = ChannelConn::start(ws, base64, v5, 5);
    let mut inputs = conn.take_inputs();
    let out = |ch: u8| Output::Ws(conn.writer(ch));
    // An empty message on the lowest writable channel tells the client it is connected.
    let first = if req.stdout {
        STDOUT
    } else if req.stderr {
        STDERR
    } else {
        ERROR
    };
    conn.writer(first).write_empty().await?;
    let gone = conn.gone();
    let stdin = inputs[STDIN as usize].take().filter(|_| req.stdin);
    let resize = inputs[RESIZE as usize].take().filter(|_| req.tty);
    let io = StreamIo {
        stdin: stdin.map(Input::Channel),
        stdout: req.stdout.then(|| out(STDOUT)),
        stderr: (req.stderr && !req.tty).then(|| out(STDERR)),
        resize: resize.map(|rx| spawn_resize_reader(Input::Channel(rx))),
        gone,
    };
    drop(inputs);
    let outcome = if exec {
        backend.exec(req, io).await
    } else {
        backend.attach(req, io).await
    };
    let proto = if protocol.is_empty() {
        "channel.k8s.io"
    } else {
        protocol
    };
    if let Some(msg) = status_message(&outcome, proto) {
        let _ = conn.writer(ERROR).write(msg.as_bytes()).await;
    }
    conn.close().await;
    Ok(())
}

/// Stdin bytes from a channel, for tests and adapters.
pub fn input_from(rx: mpsc::Receiver<Bytes>) -> Input {
    Input::Channel(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_carries_the_exit_code_as_kubectl_reads_it() {
        let ok = status_message(&Outcome::Exited(0), "v4.channel.k8s.io").unwrap();
        let v: serde_json::Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(v["status"], "Success");
        let bad = status_message(&Outcome::Exited(3), "v5.channel.k8s.io").unwrap();
        let v: serde_json::Value = serde_json::from_str(&bad).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        // Before v4 only failures say anything, as text.
        assert_eq!(
            status_message(&Outcome::Exited(0), "v3.channel.k8s.io"),
            None
        );
        assert!(
            status_message(&Outcome::Exited(2), "channel.k8s.io")
                .unwrap()
                .contains("exit status 2")
        );
    }

    #[tokio::test]
    async fn resize_objects_split_across_chunks_are_read_in_order() {
        let (tx, rx) = mpsc::channel(4);
        let mut sizes = spawn_resize_reader(Input::Channel(rx));
        tx.send(Bytes::from_static(b"{\"Width\":80,\"Hei"))
            .await
            .unwrap();
        tx.send(Bytes::from_static(
            b"ght\":24}{\"Width\":100,\"Height\":50}",
        ))
        .await
        .unwrap();
        assert_eq!(
            sizes.recv().await,
            Some(TermSize {
                width: 80,
                height: 24
            })
        );
        assert_eq!(
            sizes.recv().await,
            Some(TermSize {
                width: 100,
                height: 50
            })
        );
        drop(tx);
        assert_eq!(sizes.recv().await, None);
    }
}
