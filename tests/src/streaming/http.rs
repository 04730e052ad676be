//! The HTTP/1.1 side of a streaming URL: parsing the `http://` URL a CRI call answers, and the
//! upgrade request (`Connection: Upgrade`) whose `101 Switching Protocols` hands the TCP
//! connection over to SPDY. Hand-written: one request and one response head, nothing more.

use std::fmt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Error, Result};

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// An `http://host:port/path?query` URL as the streaming servers answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUrl {
    /// `host:port` to connect to (port 80 when the URL has none).
    pub authority: String,
    /// The path with its query, as sent in the request line.
    pub path_and_query: String,
}

impl StreamUrl {
    /// Parses an absolute `http://` URL; `https` is refused (the test servers speak plain
    /// HTTP on loopback).
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| Error::Url(format!("{url:?} is not an absolute http:// URL")))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(Error::Url(format!("{url:?} has no host")));
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let path_and_query = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(Self {
            authority,
            path_and_query,
        })
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }

    /// This URL with `key=value` appended to its query.
    pub fn with_query(&self, key: &str, value: &str) -> Self {
        let sep = if self.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        Self {
            authority: self.authority.clone(),
            path_and_query: format!("{}{sep}{key}={value}", self.path_and_query),
        }
    }
}

impl fmt::Display for StreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path_and_query)
    }
}

/// The response head of an upgrade.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// Every value of header `name` (case-insensitive).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name`.
    pub fn value<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.values(name).next()
    }
}

/// Sends `method url` with `headers` and reads the response head. A `101` gives back the
/// connection and whatever bytes followed the head; any other status is
/// [`Error::Status`] with the body.
pub async fn upgrade(
    method: &str,
    url: &StreamUrl,
    headers: &[(&str, &str)],
) -> Result<(TcpStream, ResponseHead, Vec<u8>)> {
    let mut tcp = TcpStream::connect(&url.authority)
        .await
        .map_err(|e| Error::Io(format!("connect to {}", url.authority), e))?;
    tcp.set_nodelay(true)
        .map_err(|e| Error::Io("set TCP_NODELAY".into(), e))?;
    let mut request = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nUser-Agent: bungeo-tests\r\n",
        url.path_and_query, url.authority
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| Error::Io(format!("send the upgrade request to {url}"), e))?;

    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(Error::Protocol(format!(
                "{url}: response head longer than {MAX_HEAD} bytes"
            )));
        }
        let mut chunk = [0u8; 4096];
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| Error::Io(format!("read the upgrade response from {url}"), e))?;
        if n == 0 {
            return Err(Error::Protocol(format!(
                "{url}: connection closed before the response head ({} bytes)",
                buf.len()
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = parse_head(&buf[..end])?;
    let mut rest = buf.split_off(end);
    if head.status != 101 {
        // The body is only for the error message: read what Content-Length announces, or
        // until the server closes.
        let want = head
            .value("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        loop {
            if want.is_some_and(|w| rest.len() >= w) || rest.len() > MAX_HEAD {
                break;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        return Err(Error::Status {
            url: url.to_string(),
            status: head.status,
            body: String::from_utf8_lossy(&rest).trim().to_string(),
        });
    }
    Ok((tcp, head, rest))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<ResponseHead> {
    let text = std::str::from_utf8(head)
        .map_err(|_| Error::Protocol("response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| Error::Protocol(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(ResponseHead { status, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_streaming_urls() {
        let u = StreamUrl::parse("http://127.0.0.1:39999/exec/AbC-1").unwrap();
        assert_eq!(u.authority, "127.0.0.1:39999");
        assert_eq!(u.path_and_query, "/exec/AbC-1");
        assert_eq!(u.path(), "/exec/AbC-1");
        assert_eq!(
            u.with_query("port", "80").to_string(),
            "http://127.0.0.1:39999/exec/AbC-1?port=80"
        );
        let u = StreamUrl::parse("http://[::1]/portforward/x?a=b").unwrap();
        assert_eq!(u.authority, "[::1]:80");
        assert_eq!(u.path(), "/portforward/x");
        assert_eq!(
            u.with_query("port", "1").path_and_query,
            "/portforward/x?a=b&port=1"
        );
        assert!(StreamUrl::parse("https://127.0.0.1/exec/x").is_err());
        assert!(StreamUrl::parse("/exec/x").is_err());
    }

    #[test]
    fn parses_response_heads() {
        let h = parse_head(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.status, 101);
        assert_eq!(
            h.value("x-stream-protocol-version"),
            Some("v4.channel.k8s.io")
        );
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}
