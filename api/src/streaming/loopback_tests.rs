//! The server driven over loopback TCP by a minimal SPDY client, against a fake backend.

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::spdy::frame::{self, FLAG_FIN, Frame, HeaderDecoder, HeaderEncoder};
use super::*;
use crate::config::StreamingConfig;

/// Exec echoes stdin to stdout, says "oops" on stderr and exits 3; dial reaches `echo`.
struct Fake {
    echo: SocketAddr,
}

impl Backend for Fake {
    fn exec(&self, _req: CommandRequest, mut io: StreamIo) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            if let Some(mut stdin) = io.stdin.take() {
                while let Some(chunk) = stdin.next().await {
                    if let Some(out) = &io.stdout {
                        out.write(&chunk).await.unwrap();
                    }
                }
            }
            if let Some(err) = &io.stderr {
                err.write(b"oops").await.unwrap();
            }
            Outcome::Exited(3)
        })
    }

    fn attach(&self, _req: CommandRequest, _io: StreamIo) -> BoxFuture<'static, Outcome> {
        Box::pin(async { Outcome::Failed("no".into()) })
    }

    fn dial(&self, _sandbox: &str, port: u16) -> BoxFuture<'static, io::Result<TcpStream>> {
        let addr = self.echo;
        Box::pin(async move {
            // Port 1 stands for a port nothing listens on; the rest reach the echo server.
            if port == 1 {
                Err(io::Error::from(io::ErrorKind::ConnectionRefused))
            } else {
                TcpStream::connect(addr).await
            }
        })
    }
}

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn server() -> Arc<Server> {
    let backend = Arc::new(Fake {
        echo: echo_server().await,
    });
    let (server, listener) = Server::bind(&StreamingConfig::default(), backend)
        .await
        .unwrap();
    tokio::spawn(Arc::clone(&server).serve(listener, CancellationToken::new()));
    server
}

struct Client {
    conn: TcpStream,
    enc: HeaderEncoder,
    dec: HeaderDecoder,
    buf: BytesMut,
}

impl Client {
    async fn upgrade(url: &str, protocol: &str) -> (Client, String) {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut conn = TcpStream::connect(host).await.unwrap();
        let req = format!(
            "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: {protocol}\r\n\r\n"
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if conn.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        let client = Client {
            conn,
            enc: HeaderEncoder::new(),
            dec: HeaderDecoder::new(),
            buf: BytesMut::new(),
        };
        (client, String::from_utf8(head).unwrap())
    }

    async fn open(&mut self, id: u32, headers: &[(&str, &str)]) {
        let mut out = Vec::new();
        frame::put_syn_stream(&mut out, &mut self.enc, id, 0, headers).unwrap();
        self.conn.write_all(&out).await.unwrap();
    }

    async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        let mut out = Vec::new();
        frame::put_data_header(&mut out, id, if fin { FLAG_FIN } else { 0 }, data.len());
        out.extend_from_slice(data);
        self.conn.write_all(&out).await.unwrap();
    }

    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = frame::decode(&mut self.buf, &mut self.dec).unwrap() {
                return Some(f);
            }
            if self.conn.read_buf(&mut self.buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    /// Collects data per stream until the server ends the connection.
    async fn collect(&mut self) -> HashMap<u32, (Vec<u8>, bool)> {
        let mut got: HashMap<u32, (Vec<u8>, bool)> = HashMap::new();
        while let Some(f) = self.frame().await {
            if let Frame::Data {
                stream,
                flags,
                data,
            } = f
            {
                let e = got.entry(stream).or_default();
                e.0.extend_from_slice(&data);
                e.1 |= flags & FLAG_FIN != 0;
            }
        }
        got
    }
}

fn exec_request() -> Request {
    Request::Exec(CommandRequest {
        container_id: "c".into(),
        cmd: vec!["cat".into()],
        tty: false,
        stdin: true,
        stdout: true,
        stderr: true,
    })
}

#[tokio::test]
async fn spdy_exec_round_trips_stdin_and_reports_the_exit_code() {
    let server = server().await;
    let url = server.url_for(exec_request());
    assert!(url.starts_with(&format!(
        "http://127.0.0.1:{}/exec/",
        server.local_addr().port()
    )));
    let (mut c, head) = Client::upgrade(&url, "v4.channel.k8s.io").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("X-Stream-Protocol-Version: v4.channel.k8s.io"),
        "{head}"
    );
    c.open(1, &[("streamType", "error")]).await;
    c.open(3, &[("streamType", "stdin")]).await;
    c.open(5, &[("streamType", "stdout")]).await;
    c.open(7, &[("streamType", "stderr")]).await;
    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    c.data(3, &big, false).await;
    c.data(3, b"end", true).await;
    let got = c.collect().await;
    let mut want = big.clone();
    want.extend_from_slice(b"end");
    assert_eq!(got[&5].0.len(), want.len());
    assert!(got[&5].0 == want && got[&5].1, "stdout echoed and closed");
    assert_eq!(got[&7], (b"oops".to_vec(), true));
    let status: serde_json::Value = serde_json::from_slice(&got[&1].0).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert!(got[&1].1);

    // The token was used up.
    let (_, head) = Client::upgrade(&url, "v4.channel.k8s.io").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[tokio::test]
async fn spdy_negotiation_failure_is_forbidden_and_missing_upgrade_is_bad() {
    let server = server().await;
    let (_, head) = Client::upgrade(&server.url_for(exec_request()), "v9.channel.k8s.io").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.contains("X-Accepted-Stream-Protocol-Versions"),
        "{head}"
    );
}

#[tokio::test]
async fn spdy_port_forward_forwards_and_reports_refused_ports() {
    let server = server().await;
    let url = server.url_for(Request::PortForward {
        sandbox_id: "p".into(),
        ports: vec![],
    });
    let (mut c, head) = Client::upgrade(&url, "portforward.k8s.io").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let port = 8080;
    let p = port.to_string();
    c.open(
        1,
        &[("streamType", "error"), ("port", &p), ("requestID", "0")],
    )
    .await;
    c.open(
        3,
        &[("streamType", "data"), ("port", &p), ("requestID", "0")],
    )
    .await;
    c.open(
        5,
        &[("streamType", "error"), ("port", "1"), ("requestID", "1")],
    )
    .await;
    c.open(
        7,
        &[("streamType", "data"), ("port", "1"), ("requestID", "1")],
    )
    .await;
    c.data(3, b"ping", true).await;
    let mut data: HashMap<u32, (Vec<u8>, bool)> = HashMap::new();
    while !(data.get(&3).is_some_and(|d| d.1) && data.get(&5).is_some_and(|d| d.1)) {
        match c.frame().await {
            Some(Frame::Data {
                stream,
                flags,
                data: d,
            }) => {
                let e = data.entry(stream).or_default();
                e.0.extend_from_slice(&d);
                e.1 |= flags & FLAG_FIN != 0;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(data[&3].0, b"ping");
    let msg = String::from_utf8_lossy(&data[&5].0).into_owned();
    assert!(msg.contains("error forwarding port 1"), "{msg}");
}

/// A self-signed certificate for 127.0.0.1 made with `openssl` in `dir`: (cert, key); None
/// when openssl is not installed.
fn self_signed(dir: &std::path::Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=bungeo-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    assert!(made.success(), "openssl req failed");
    Some((cert, key))
}

/// One HTTP/1.1 request over TLS to `url` (trusting `cert`); the response as text.
async fn https_request(url: &str, cert: &std::path::Path, extra: &str) -> String {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};
    let rest = url.strip_prefix("https://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert).unwrap())
        .unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = TcpStream::connect(host).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let req = format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    // To the end of the response; after a 101 the connection stays open, so to its head.
    let mut out = Vec::new();
    let read = async {
        loop {
            let mut b = [0u8; 4096];
            match tls.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&b[..n]),
            }
            if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn tls_serves_https_urls_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = self_signed(dir.path()) else {
        crate::test_skip::skip("openssl", "makes the self-signed certificate");
        return;
    };
    let config = StreamingConfig {
        tls_cert: cert.clone(),
        tls_key: key.clone(),
        ..StreamingConfig::default()
    };
    let backend = Arc::new(Fake {
        echo: echo_server().await,
    });
    let (server, listener) = Server::bind(&config, backend).await.unwrap();
    tokio::spawn(Arc::clone(&server).serve(listener, CancellationToken::new()));

    let url = server.url_for(exec_request());
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    // Through TLS: a token without upgrade headers reaches the SPDY handshake's check.
    let resp = https_request(&url, &cert, "").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("missing upgrade headers"), "{resp}");
    // The token was used: now 404, over TLS too.
    let resp = https_request(&url, &cert, "").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    // A full SPDY upgrade over TLS answers 101.
    let url = server.url_for(exec_request());
    let resp = https_request(
        &url,
        &cert,
        "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let url = server.url_for(exec_request());
    let plain = url.replacen("https://", "", 1);
    let (host, path) = plain.split_once('/').unwrap();
    let mut conn = TcpStream::connect(host).await.unwrap();
    conn.write_all(format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut out),
    )
    .await;
    assert!(
        !out.starts_with(b"HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );

    // A key that is not a key is a configuration error, named.
    std::fs::write(&key, "not a key").unwrap();
    let err = Server::bind(
        &config,
        Arc::new(Fake {
            echo: echo_server().await,
        }),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("streaming.tls_key"), "{err}");
}
