//! Fuzz target: bytes from a WebSocket client after the handshake, read as the streaming
//! server reads them (tungstenite's frame parser, server role, then Kubernetes' channel
//! framing in both the binary and the base64 form). Nothing may panic.
#![no_main]

use std::io::{self, Read, Write};

use bungeo_api::streaming::websocket::decode_message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

/// The client's bytes to read; what the server writes back is dropped.
struct Wire<'a>(&'a [u8]);

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let config = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let mut ws = WebSocket::from_raw_socket(Wire(data), Role::Server, Some(config));
    while let Ok(m) = ws.read() {
        for base64 in [false, true] {
            if let Some((_, payload)) = decode_message(&m, base64) {
                assert!(payload.len() <= m.len());
            }
        }
    }
});
