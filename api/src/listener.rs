//! The CRI unix socket: replacing a stale one, binding, permissions, removal at shutdown.

use std::fs::Permissions;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::errors::{Error, Result};

/// Mode of the CRI socket: root (and the root group) only, as kubelet runs as root.
pub const SOCKET_MODE: u32 = 0o660;

/// A bound CRI socket whose file is removed by `remove`.
#[derive(Debug)]
pub struct CriSocket {
    path: PathBuf,
}

impl CriSocket {
    /// Binds `path`, first removing a socket file left by a daemon that died. A path that is
    /// live (something accepts connections) or is not a socket is refused, never removed.
    pub fn bind(path: &Path) -> Result<(CriSocket, UnixListener)> {
        remove_stale(path)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("create socket directory", parent, e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| Error::io("bind", path, e))?;
        let socket = CriSocket {
            path: path.to_owned(),
        };
        // Until this chmod the socket has the umask's mode; in the default layout it sits in
        // the 0700 state directory, so nobody else can reach it in between.
        std::fs::set_permissions(path, Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| Error::io("chmod", path, e))?;
        Ok((socket, listener))
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file, so clients see "no such file" rather than "connection refused".
    pub fn remove(self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove socket", &self.path, e)),
        }
    }
}

fn remove_stale(path: &Path) -> Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    if !metadata.file_type().is_socket() {
        return Err(Error::NotASocket {
            path: path.to_owned(),
        });
    }
    // The state lock keeps out a second bungeo on the same state dir, but another daemon
    // (or a bungeo with another state dir) may have been pointed at this very path.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::SocketInUse {
            path: path.to_owned(),
        });
    }
    std::fs::remove_file(path).map_err(|e| Error::io("remove stale socket", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_with_mode_0660_and_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/bungeo.sock");
        let (socket, _listener) = CriSocket::bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, SOCKET_MODE);
        socket.remove().unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bungeo.sock");
        // A socket file nobody listens on any more, as a killed daemon leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (_socket, listener) = CriSocket::bind(&path).unwrap();
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.unwrap();
        connected.unwrap();
    }

    #[tokio::test]
    async fn a_live_socket_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bungeo.sock");
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = CriSocket::bind(&path).unwrap_err();
        assert!(matches!(err, Error::SocketInUse { .. }), "{err}");
        assert!(path.exists());
    }

    #[tokio::test]
    async fn a_regular_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bungeo.sock");
        std::fs::write(&path, "precious").unwrap();
        let err = CriSocket::bind(&path).unwrap_err();
        assert!(matches!(err, Error::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}
