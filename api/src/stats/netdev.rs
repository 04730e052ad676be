//! Network interface counters of a pod, read inside its network namespace.
//!
//! One short-lived thread joins each pod's pinned namespace in turn (a thread may change its
//! network namespace as often as it likes) and reads `/proc/thread-self/net/dev`, which shows
//! the namespace of the reading thread. The daemon's own threads never change namespace.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use tracing::debug;

/// The interface kubelet reports as the pod's (`default_interface`).
pub const DEFAULT_INTERFACE: &str = "eth0";

/// Counters of one interface, from `/proc/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Parses `/proc/net/dev`: two header lines, then `name: 8 receive and 8 transmit columns`.
/// The loopback interface is left out, as kubelet and cAdvisor do.
pub fn parse(text: &str) -> Vec<InterfaceCounters> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" || name.contains('|') {
            continue;
        }
        let values: Vec<u64> = counters
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if values.len() < 16 {
            continue;
        }
        out.push(InterfaceCounters {
            name: name.to_owned(),
            rx_bytes: values[0],
            rx_packets: values[1],
            rx_errors: values[2],
            rx_dropped: values[3],
            tx_bytes: values[8],
            tx_packets: values[9],
            tx_errors: values[10],
            tx_dropped: values[11],
        });
    }
    out
}

/// The counters inside each pinned network namespace of `pins`, in order; `None` for a pin
/// that cannot be entered or read (a pod stopped meanwhile).
pub fn read_all(pins: &[PathBuf]) -> Vec<Option<Vec<InterfaceCounters>>> {
    if pins.is_empty() {
        return Vec::new();
    }
    let joined = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("bungeo-netstat".to_owned())
            .stack_size(128 << 10)
            .spawn_scoped(scope, || pins.iter().map(|p| read_in(p)).collect())
            .map(|handle| handle.join())
    });
    match joined {
        Ok(Ok(counters)) => counters,
        _ => vec![None; pins.len()],
    }
}

/// Joins the namespace pinned at `pin` (this thread only) and reads its counters.
fn read_in(pin: &Path) -> Option<Vec<InterfaceCounters>> {
    let ns = match File::open(pin) {
        Ok(f) => f,
        Err(e) => {
            debug!(pin = %pin.display(), error = %e, "cannot open the pod's network namespace");
            return None;
        }
    };
    if let Err(e) = setns(&ns, CloneFlags::CLONE_NEWNET) {
        debug!(pin = %pin.display(), error = %e, "cannot enter the pod's network namespace");
        return None;
    }
    std::fs::read_to_string("/proc/thread-self/net/dev")
        .ok()
        .map(|text| parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0: 1296473    1004    1    2    0     0          0         0    90642     713    3    4    0     0       0          0
";

    #[test]
    fn parses_proc_net_dev_without_loopback() {
        let parsed = parse(SAMPLE);
        assert_eq!(
            parsed,
            [InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 1296473,
                rx_packets: 1004,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 90642,
                tx_packets: 713,
                tx_errors: 3,
                tx_dropped: 4,
            }]
        );
        assert!(parse("garbage\nx: 1 2\n").is_empty());
    }

    #[test]
    fn a_pin_that_is_not_a_namespace_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let not_ns = dir.path().join("net");
        std::fs::write(&not_ns, "").unwrap();
        let got = read_all(&[not_ns, dir.path().join("missing")]);
        assert_eq!(got, vec![None, None]);
    }

    #[test]
    fn the_hosts_own_namespace_reads_like_proc_net_dev() {
        let got = read_all(&[PathBuf::from("/proc/self/ns/net")]);
        let host = parse(&std::fs::read_to_string("/proc/net/dev").unwrap());
        let names = |v: &[InterfaceCounters]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(got[0].as_ref().unwrap()), names(&host));
    }
}
