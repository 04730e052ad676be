//! What the daemon tells a shim when it starts one, as command-line flags. Parsed by hand: a
//! flag parser's code would stay resident in every shim for one use at startup.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::{Error, Result};

/// Where the runtime keeps container state when the daemon does not say.
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/bungeo/runtime";

/// The startup configuration of one shim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The container id (also the runtime's container id).
    pub id: String,
    /// The OCI bundle directory (holds `config.json` and the mounted rootfs).
    pub bundle: PathBuf,
    /// The shim's own directory: `exit.json`, the runtime's log, pid files, the shim's log.
    pub state_dir: PathBuf,
    /// The ttrpc socket to serve (created with mode 0600).
    pub socket: PathBuf,
    /// The OCI runtime binary (runc-compatible command line, e.g. `bungeo-runtime`).
    pub runtime: PathBuf,
    /// The runtime's `--root`.
    pub runtime_root: PathBuf,
    /// Pass `--systemd-cgroup` to the runtime.
    pub systemd_cgroup: bool,
}

/// The usage text `bungeo-shim --help` prints.
pub const USAGE: &str = "\
usage: bungeo-shim --id ID --bundle DIR --state-dir DIR --socket PATH --runtime PATH
                   [--runtime-root DIR] [--systemd-cgroup]

Starts the supervisor of one container: it detaches, serves the containerd shim Task API
(ttrpc) on --socket, and prints the socket's address (unix://PATH) once it is ready.";

impl Config {
    /// Parses flags (without the program name).
    pub fn from_args(args: impl IntoIterator<Item = OsString>) -> Result<Self> {
        let mut id = None;
        let mut bundle = None;
        let mut state_dir = None;
        let mut socket = None;
        let mut runtime = None;
        let mut runtime_root = None;
        let mut systemd_cgroup = false;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let flag = arg
                .to_str()
                .ok_or_else(|| Error::InvalidArgument(format!("unexpected argument {arg:?}")))?
                .to_string();
            if flag == "--systemd-cgroup" {
                systemd_cgroup = true;
                continue;
            }
            let slot = match flag.as_str() {
                "--id" => &mut id,
                "--bundle" => &mut bundle,
                "--state-dir" => &mut state_dir,
                "--socket" => &mut socket,
                "--runtime" => &mut runtime,
                "--runtime-root" => &mut runtime_root,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown argument {flag:?}\n{USAGE}"
                    )));
                }
            };
            let value = it
                .next()
                .ok_or_else(|| Error::InvalidArgument(format!("{flag} needs a value")))?;
            *slot = Some(value);
        }
        let need = |v: Option<OsString>, flag: &str| {
            v.ok_or_else(|| Error::InvalidArgument(format!("{flag} is required\n{USAGE}")))
        };
        let id = need(id, "--id")?
            .into_string()
            .map_err(|v| Error::InvalidArgument(format!("--id {v:?} is not UTF-8")))?;
        let cfg = Config {
            id,
            bundle: need(bundle, "--bundle")?.into(),
            state_dir: need(state_dir, "--state-dir")?.into(),
            socket: need(socket, "--socket")?.into(),
            runtime: need(runtime, "--runtime")?.into(),
            runtime_root: runtime_root
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_ROOT)),
            systemd_cgroup,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The flags that [`Config::from_args`] parses back into this config.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::with_capacity(13);
        for (flag, v) in [
            ("--id", self.id.as_ref()),
            ("--bundle", self.bundle.as_os_str()),
            ("--state-dir", self.state_dir.as_os_str()),
            ("--socket", self.socket.as_os_str()),
            ("--runtime", self.runtime.as_os_str()),
            ("--runtime-root", self.runtime_root.as_os_str()),
        ] {
            a.push(flag.into());
            a.push(v.to_os_string());
        }
        if self.systemd_cgroup {
            a.push("--systemd-cgroup".into());
        }
        a
    }

    /// Checks what the shim relies on: a safe id, absolute paths, a socket path that fits.
    pub fn validate(&self) -> Result<()> {
        validate_name("container id", &self.id)?;
        for (flag, p) in [
            ("--bundle", &self.bundle),
            ("--state-dir", &self.state_dir),
            ("--socket", &self.socket),
            ("--runtime", &self.runtime),
            ("--runtime-root", &self.runtime_root),
        ] {
            if !p.is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "{flag} {} must be an absolute path",
                    p.display()
                )));
            }
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.socket.as_os_str().len() > 107 {
            return Err(Error::InvalidArgument(format!(
                "--socket {} is longer than a unix socket path may be (107 bytes)",
                self.socket.display()
            )));
        }
        Ok(())
    }

    /// The ttrpc address clients connect to.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

/// Ids of containers and exec processes become file names: letters, digits, `_.-` only.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} {name:?} is invalid: use 1 to 128 letters, digits, '_', '.' or '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn full() -> Vec<OsString> {
        args(&[
            "--id",
            "c1",
            "--bundle",
            "/b",
            "--state-dir",
            "/s",
            "--socket",
            "/run/s.sock",
            "--runtime",
            "/usr/bin/bungeo-runtime",
        ])
    }

    #[test]
    fn flags_parse_and_round_trip() {
        let c = Config::from_args(full()).unwrap();
        assert_eq!(c.id, "c1");
        assert_eq!(c.runtime_root, PathBuf::from(DEFAULT_RUNTIME_ROOT));
        assert!(!c.systemd_cgroup);
        assert_eq!(c.address(), "unix:///run/s.sock");
        let mut c2 = c.clone();
        c2.systemd_cgroup = true;
        c2.runtime_root = "/r".into();
        assert_eq!(Config::from_args(c2.to_args()).unwrap(), c2);
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        let mut a = full();
        a.push("--bogus".into());
        let e = Config::from_args(a).unwrap_err().to_string();
        assert!(e.starts_with("unknown argument \"--bogus\""), "{e}");
        let e = Config::from_args(args(&["--id"])).unwrap_err().to_string();
        assert_eq!(e, "--id needs a value");
        let e = Config::from_args(args(&["--id", "x"]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--bundle is required"), "{e}");
        let mut a = full();
        a[3] = "relative".into();
        let e = Config::from_args(a).unwrap_err().to_string();
        assert_eq!(e, "--bundle relative must be an absolute path");
        let mut a = full();
        a[1] = "../x".into();
        assert!(Config::from_args(a).is_err());
        let mut a = full();
        a[7] = format!("/{}", "s".repeat(110)).into();
        assert!(
            Config::from_args(a)
                .unwrap_err()
                .to_string()
                .contains("107 bytes")
        );
    }

    #[test]
    fn names_are_restricted_to_file_name_safe_characters() {
        for good in ["a", "c1-x_y.z", &"f".repeat(64)] {
            validate_name("id", good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"f".repeat(129)] {
            assert!(validate_name("id", bad).is_err(), "{bad:?}");
        }
    }
}
