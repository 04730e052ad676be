//! How a test that cannot run here says so: one line, `SKIP <test>: needs <need>: <why>`, on
//! stderr and appended to the file `$BUNGEO_SKIP_LOG` names (cargo captures a passing test's
//! output; hack/test sets the variable, lists the skips and, under CI, fails for a `need` that
//! CI installs: root, busybox, cni-plugins, openssl, runc, crun, containerd). This one file is
//! included by every crate (`#[path]`); the line's format is what hack/test reads.

use std::io::Write;

/// Prints the skip line for the running test; `need` is one word (what is missing).
pub fn skip(need: &str, why: &str) {
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => name,
        _ => "(unnamed test)",
    };
    let line = format!("SKIP {test}: needs {need}: {why}\n");
    eprint!("{line}");
    if let Some(path) = std::env::var_os("BUNGEO_SKIP_LOG") {
        // One write of a short line to an O_APPEND file: lines of parallel tests do not mix.
        let written = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "cannot append to BUNGEO_SKIP_LOG {}: {e}",
                path.to_string_lossy()
            );
        }
    }
}
