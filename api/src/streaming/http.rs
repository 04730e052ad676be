//! The little HTTP/1.1 the streaming server needs: one request head per connection, then an
//! upgrade (SPDY/3.1 or WebSocket) or an error response.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A parsed request head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// Every value of header `name`, comma-separated lists split.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` lists `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .iter()
            .any(|v| v.eq_ignore_ascii_case(token))
    }

    /// Every value of query parameter `key` (no percent-decoding is needed for ports).
    pub fn query_values(&self, key: &str) -> Vec<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
            .collect()
    }
}

/// Reads a request head; returns it with the bytes read past it.
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<(RequestHead, Vec<u8>)> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let head = RequestHead {
                    method: req.method.unwrap_or("GET").to_owned(),
                    path: path.to_owned(),
                    query: query.to_owned(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).trim().to_owned(),
                            )
                        })
                        .collect(),
                };
                return Ok((head, buf[len..].to_vec()));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request head too large",
                ));
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// Writes a complete plain-text response and flushes it.
pub async fn respond<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    w.write_all(out.as_bytes()).await?;
    w.flush().await
}

/// Writes a `101 Switching Protocols` response with `headers`.
pub async fn switching<W: AsyncWrite + Unpin>(
    w: &mut W,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut out = String::from("HTTP/1.1 101 Switching Protocols\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    w.write_all(out.as_bytes()).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heads_parse_with_split_reads_and_leftovers() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for part in [
                &b"POST /exec/tok?port=80&port=81,82 HTTP/1.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"[..],
                &b"X-Stream-Protocol-Version: v3.channel.k8s.io, v2.channel.k8s.io\r\nConnection: Upgrade\r\n\r\nEXTRA"[..],
            ] {
                a.write_all(part).await.unwrap();
            }
        });
        let (head, rest) = read_head(&mut b).await.unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/exec/tok");
        assert_eq!(head.query_values("port"), vec!["80", "81,82"]);
        assert_eq!(
            head.values("x-stream-protocol-version"),
            vec![
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io"
            ]
        );
        assert!(head.has_token("connection", "upgrade"));
        assert_eq!(rest, b"EXTRA");
    }
}
