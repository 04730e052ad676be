//! Exec and attach as kubectl does them (client-go `tools/remotecommand`): over SPDY one
//! stream per `streamType` (error first, then stdin, stdout, stderr, resize) opened by the
//! client, or over WebSocket one channel per stream; the exit status read from the error
//! stream at the end.

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use super::http::StreamUrl;
use super::spdy::{self, FlowControl, Session};
use super::websocket::{ChannelConn, ChannelSender};
use super::{Error, REMOTE_COMMAND_PROTOCOLS, Result};

/// WebSocket channel numbers of exec and attach.
pub mod channel {
    /// Standard input.
    pub const STDIN: u8 = 0;
    /// Standard output.
    pub const STDOUT: u8 = 1;
    /// Standard error.
    pub const STDERR: u8 = 2;
    /// The error stream (status).
    pub const ERROR: u8 = 3;
    /// Terminal resize events.
    pub const RESIZE: u8 = 4;
}

/// How to reach the streaming server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1, with this flow-control behaviour.
    Spdy(FlowControl),
    /// WebSocket channels.
    WebSocket,
}

impl Transport {
    /// SPDY as kubectl speaks it.
    pub const SPDY: Transport = Transport::Spdy(FlowControl::Kubectl);
}

/// What the command's streams are; must match the CRI request that made the URL (the server
/// waits for exactly these streams).
#[derive(Debug, Clone)]
pub struct Options {
    /// Transport.
    pub transport: Transport,
    /// Protocols offered, newest first.
    pub protocols: Vec<String>,
    /// A stdin stream.
    pub stdin: bool,
    /// A stdout stream.
    pub stdout: bool,
    /// A stderr stream (never with a TTY).
    pub stderr: bool,
    /// A terminal: adds the resize stream.
    pub tty: bool,
}

impl Options {
    /// stdout and stderr, no stdin, no TTY, every protocol offered.
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            protocols: REMOTE_COMMAND_PROTOCOLS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            stdin: false,
            stdout: true,
            stderr: true,
            tty: false,
        }
    }

    /// With a stdin stream.
    pub fn stdin(mut self) -> Self {
        self.stdin = true;
        self
    }

    /// With a TTY (and so no stderr stream).
    pub fn tty(mut self) -> Self {
        self.tty = true;
        self.stderr = false;
        self
    }

    /// Offering only `protocols`.
    pub fn protocols(mut self, protocols: &[&str]) -> Self {
        self.protocols = protocols.iter().map(|p| p.to_string()).collect();
        self
    }
}

/// A terminal size, as the resize stream carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// How a remote command ended, from its error stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitStatus {
    /// The exit code: 0 on `Success`, the `ExitCode` cause of a `NonZeroExitCode` failure;
    /// `None` when the protocol (before v4) or the server does not say.
    pub code: Option<i32>,
    /// The `metav1.Status` document (v4+), if the server sent one.
    pub status: Option<serde_json::Value>,
    /// The raw text of the error stream.
    pub raw: String,
}

impl ExitStatus {
    /// Parses the error stream's content as the negotiated `protocol` defines it.
    pub fn parse(protocol: &str, raw: &[u8]) -> Result<Self> {
        let raw = String::from_utf8_lossy(raw).into_owned();
        let v4_or_later = protocol.starts_with("v4.") || protocol.starts_with("v5.");
        if !v4_or_later {
            // Before v4 the stream carries an error message, nothing on success.
            return Ok(Self {
                code: raw.trim().is_empty().then_some(0),
                status: None,
                raw,
            });
        }
        if raw.trim().is_empty() {
            // kubectl reads an empty error stream as success.
            return Ok(Self {
                code: Some(0),
                status: None,
                raw,
            });
        }
        let status: serde_json::Value = serde_json::from_str(&raw)
            .map_err(|e| Error::Protocol(format!("error stream is not a Status: {e}: {raw:?}")))?;
        let code = match status["status"].as_str() {
            Some("Success") => Some(0),
            Some("Failure") if status["reason"] == "NonZeroExitCode" => status["details"]["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str())
                .and_then(|m| m.parse().ok()),
            _ => None,
        };
        Ok(Self {
            code,
            status: Some(status),
            raw,
        })
    }
}

enum Input {
    Spdy {
        _stream: spdy::Stream,
        writer: spdy::StreamWriter,
    },
    Ws {
        sender: ChannelSender,
        channel: u8,
    },
}

impl Input {
    async fn write(&self, data: &[u8]) -> Result<()> {
        match self {
            Input::Spdy { writer, .. } => writer.write(data).await,
            Input::Ws { sender, channel } => sender.send(*channel, data).await,
        }
    }

    async fn close(&self) -> Result<()> {
        match self {
            Input::Spdy { writer, .. } => writer.close().await,
            Input::Ws { sender, channel } => sender.close_channel(*channel).await,
        }
    }
}

/// A readable stream of a remote command.
pub enum Output {
    /// A SPDY stream.
    Spdy(spdy::Stream),
    /// A WebSocket channel.
    Ws(mpsc::Receiver<Bytes>),
}

impl Output {
    /// The next chunk; `None` at the end.
    pub async fn read(&mut self) -> Option<Bytes> {
        match self {
            Output::Spdy(s) => s.read().await,
            Output::Ws(rx) => rx.recv().await,
        }
    }

    /// Everything until the end.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(d) = self.read().await {
            out.extend_from_slice(&d);
        }
        out
    }
}

enum Conn {
    Spdy(Session),
    Ws(ChannelConn),
}

/// A running exec or attach.
pub struct RemoteCommand {
    protocol: String,
    stdin: Option<Input>,
    resize: Option<Input>,
    /// Its stdout, if requested (take it to read concurrently).
    pub stdout: Option<Output>,
    /// Its stderr, if requested.
    pub stderr: Option<Output>,
    error: Output,
    conn: Conn,
}

impl RemoteCommand {
    /// Connects to an exec or attach URL and sets up the streams `opts` names.
    pub async fn open(url: &str, opts: &Options) -> Result<Self> {
        let url = StreamUrl::parse(url)?;
        let offered: Vec<&str> = opts.protocols.iter().map(String::as_str).collect();
        match opts.transport {
            Transport::Spdy(flow) => Self::open_spdy(&url, &offered, opts, flow).await,
            Transport::WebSocket => Self::open_ws(&url, &offered, opts).await,
        }
    }

    async fn open_spdy(
        url: &StreamUrl,
        offered: &[&str],
        opts: &Options,
        flow: FlowControl,
    ) -> Result<Self> {
        let session = Session::connect(url, offered, flow).await?;
        // No header: the server fell back to the unversioned protocol.
        let protocol = session.protocol().unwrap_or("channel.k8s.io").to_string();
        let open = |kind: &'static str| {
            let session = session.clone();
            async move { session.open_stream(&[("streamType", kind)]).await }
        };
        // kubectl's order: error, stdin, stdout, stderr, resize.
        let error = open("error").await?;
        // kubectl half-closes the error stream at once: it never writes to it.
        error.writer().close().await?;
        let stdin = if opts.stdin {
            let s = open("stdin").await?;
            let writer = s.writer();
            Some(Input::Spdy { _stream: s, writer })
        } else {
            None
        };
        let stdout = if opts.stdout {
            Some(Output::Spdy(open("stdout").await?))
        } else {
            None
        };
        let stderr = if opts.stderr && !opts.tty {
            Some(Output::Spdy(open("stderr").await?))
        } else {
            None
        };
        // Resizing came with v3.
        let resizable = !matches!(protocol.as_str(), "channel.k8s.io" | "v2.channel.k8s.io");
        let resize = if opts.tty && resizable {
            let s = open("resize").await?;
            let writer = s.writer();
            Some(Input::Spdy { _stream: s, writer })
        } else {
            None
        };
        Ok(Self {
            protocol,
            stdin,
            resize,
            stdout,
            stderr,
            error: Output::Spdy(error),
            conn: Conn::Spdy(session),
        })
    }

    async fn open_ws(url: &StreamUrl, offered: &[&str], opts: &Options) -> Result<Self> {
        let mut conn = ChannelConn::connect(
            url,
            offered,
            &[channel::STDOUT, channel::STDERR, channel::ERROR],
        )
        .await?;
        let protocol = conn.protocol().to_string();
        let sender = conn.sender();
        let input = |channel| Input::Ws {
            sender: sender.clone(),
            channel,
        };
        let take = |conn: &mut ChannelConn, c: u8| -> Result<Output> {
            conn.take_channel(c)
                .map(Output::Ws)
                .ok_or_else(|| Error::Protocol(format!("channel {c} taken twice")))
        };
        let stdout = if opts.stdout {
            Some(take(&mut conn, channel::STDOUT)?)
        } else {
            None
        };
        let stderr = if opts.stderr && !opts.tty {
            Some(take(&mut conn, channel::STDERR)?)
        } else {
            None
        };
        let error = take(&mut conn, channel::ERROR)?;
        Ok(Self {
            protocol,
            stdin: opts.stdin.then(|| input(channel::STDIN)),
            resize: opts.tty.then(|| input(channel::RESIZE)),
            stdout,
            stderr,
            error,
            conn: Conn::Ws(conn),
        })
    }

    /// The negotiated protocol.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The SPDY session, when the transport is SPDY.
    pub fn spdy_session(&self) -> Option<&Session> {
        match &self.conn {
            Conn::Spdy(s) => Some(s),
            Conn::Ws(_) => None,
        }
    }

    /// Why the WebSocket ended, when the transport is WebSocket and it has.
    pub fn websocket_close_reason(&self) -> Option<String> {
        match &self.conn {
            Conn::Ws(c) => c.close_reason(),
            Conn::Spdy(_) => None,
        }
    }

    /// Writes to the command's stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<()> {
        self.stdin
            .as_ref()
            .ok_or_else(|| Error::Protocol("no stdin stream".into()))?
            .write(data)
            .await
    }

    /// Closes stdin: the command reads EOF.
    pub async fn close_stdin(&self) -> Result<()> {
        self.stdin
            .as_ref()
            .ok_or_else(|| Error::Protocol("no stdin stream".into()))?
            .close()
            .await
    }

    /// Sends a terminal size.
    pub async fn resize(&self, size: TerminalSize) -> Result<()> {
        let json = serde_json::to_vec(&size)
            .map_err(|e| Error::Protocol(format!("encode {size:?}: {e}")))?;
        self.resize
            .as_ref()
            .ok_or_else(|| Error::Protocol("no resize stream (no TTY, or before v3)".into()))?
            .write(&json)
            .await
    }

    /// Waits for the error stream to end and parses the status it carried.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        let raw = self.error.read_to_end().await;
        ExitStatus::parse(&self.protocol, &raw)
    }

    /// Reads stdout and stderr to their ends while waiting for the status.
    pub async fn finish(mut self) -> Result<Finished> {
        let mut stdout = self.stdout.take();
        let mut stderr = self.stderr.take();
        let (out, err, status) =
            tokio::join!(read(stdout.as_mut()), read(stderr.as_mut()), self.wait());
        Ok(Finished {
            protocol: self.protocol.clone(),
            stdout: out,
            stderr: err,
            status: status?,
        })
    }
}

async fn read(o: Option<&mut Output>) -> Vec<u8> {
    match o {
        Some(o) => o.read_to_end().await,
        None => Vec::new(),
    }
}

/// What a finished command gave.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The negotiated protocol.
    pub protocol: String,
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
    /// The status.
    pub status: ExitStatus,
}

impl Finished {
    /// stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs an exec or attach to its end: `resizes` sent first (with a TTY), then `stdin`
/// written and closed (when the options have a stdin stream) while the outputs are read.
pub async fn exec(
    url: &str,
    opts: &Options,
    stdin: Option<&[u8]>,
    resizes: &[TerminalSize],
) -> Result<Finished> {
    let mut cmd = RemoteCommand::open(url, opts).await?;
    for size in resizes {
        cmd.resize(*size).await?;
    }
    let mut stdout = cmd.stdout.take();
    let mut stderr = cmd.stderr.take();
    // stdin goes while the outputs are read: a command may fill its pipe before it reads.
    let write = async {
        if let Some(data) = stdin {
            cmd.write_stdin(data).await?;
            cmd.close_stdin().await?;
        }
        Ok::<_, Error>(())
    };
    let (written, out, err) = tokio::join!(write, read(stdout.as_mut()), read(stderr.as_mut()));
    written?;
    let status = cmd.wait().await?;
    Ok(Finished {
        protocol: cmd.protocol.clone(),
        stdout: out,
        stderr: err,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_statuses() {
        let s = ExitStatus::parse(
            "v4.channel.k8s.io",
            br#"{"metadata":{},"status":"Success"}"#,
        )
        .unwrap();
        assert_eq!(s.code, Some(0));
        let s = ExitStatus::parse(
            "v5.channel.k8s.io",
            br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
        )
        .unwrap();
        assert_eq!(s.code, Some(3));
        let s = ExitStatus::parse(
            "v4.channel.k8s.io",
            br#"{"metadata":{},"status":"Failure","message":"boom","reason":"InternalError","code":500}"#,
        )
        .unwrap();
        assert_eq!(s.code, None);
        assert!(ExitStatus::parse("v4.channel.k8s.io", b"not json").is_err());
        let s = ExitStatus::parse("v3.channel.k8s.io", b"").unwrap();
        assert_eq!(s.code, Some(0));
        let s = ExitStatus::parse("channel.k8s.io", b"exit status 3").unwrap();
        assert_eq!(s.code, None);
    }

    #[test]
    fn resize_json_is_what_kubectl_sends() {
        let json = serde_json::to_string(&TerminalSize {
            width: 100,
            height: 40,
        })
        .unwrap();
        assert_eq!(json, r#"{"Width":100,"Height":40}"#);
    }
}
