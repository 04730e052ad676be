//! Pod networks for the end-to-end suites: a bridge name and IPv4 (and IPv6) subnet of its own
//! per daemon under test, CNI network configs on them, and the cleanup of what the CNI plugins
//! leave on the node (bridges, veths, firewall rules, IP allocations).
//!
//! Networks are numbered slots; a slot is held with a `flock` on a file under
//! [`LOCK_DIR`] for the network's lifetime, so daemons started at the same time, also by
//! other test processes, never share a bridge or a subnet. Holding the lock also means that
//! anything found on the node under the slot's names is a leftover of a crashed run.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Where the slot locks live (a tmpfs: a reboot frees every slot).
pub const LOCK_DIR: &str = "/run/bungeo-tests/net";
/// Every test bridge's name starts with this.
pub const BRIDGE_PREFIX: &str = "bgtest";
/// Prefix of the chains the CNI `portmap` plugin shares between all its pods.
pub const HOSTPORT_CHAIN_PREFIX: &str = "CNI-HOSTPORT-";
/// The CNI result cache of libcni (containerd); bungeo keeps its results in its records.
pub const LIBCNI_RESULTS: &str = "/var/lib/cni/results";

/// Slots 0..SLOTS map to 10.200.0.0/24 ..= 10.215.255.0/24.
const SLOTS: u32 = 4096;
/// Where the next slot search starts in this process (spread by pid across processes).
static NEXT_SLOT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A bridge and subnets of one daemon under test; on drop, the bridge, the veths on it, the
/// firewall rules naming its addresses and its IP allocation directory are removed.
#[derive(Debug)]
pub struct TestNetwork {
    slot: u32,
    bridge: String,
    ipam: TempDir,
    _lock: File,
}

impl TestNetwork {
    /// Takes a free slot, removing what a crashed run may have left under its names.
    pub fn allocate() -> Result<Self> {
        std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("create {LOCK_DIR}"))?;
        let start = {
            let mut s = NEXT_SLOT.load(Ordering::Relaxed);
            if s == u32::MAX {
                s = (std::process::id().wrapping_mul(97)) % SLOTS;
            }
            NEXT_SLOT.store((s + 1) % SLOTS, Ordering::Relaxed);
            s
        };
        let routes = command_output("ip", &["-4", "route", "show"]).unwrap_or_default();
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            let path = Path::new(LOCK_DIR).join(format!("{slot}.lock"));
            let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if locked != 0 {
                continue;
            }
            let bridge = format!("{BRIDGE_PREFIX}{slot:03x}");
            // A route of the subnet on another device is someone else's network: skip it.
            let prefix = format!("{}/24 ", slot_base(slot));
            let foreign = routes
                .lines()
                .any(|l| l.starts_with(&prefix) && !l.contains(&format!("dev {bridge} ")));
            if foreign {
                continue;
            }
            let this = Self {
                slot,
                bridge,
                ipam: tempfile::Builder::new()
                    .prefix("bungeo-e2e-ipam-")
                    .tempdir()
                    .context("create the host-local data dir")?,
                _lock: file,
            };
            this.clean_up();
            NEXT_SLOT.store((slot + 1) % SLOTS, Ordering::Relaxed);
            return Ok(this);
        }
        bail!("no free test network slot under {LOCK_DIR}")
    }

    /// The bridge device's name (at most 15 bytes).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The network address of the IPv4 /24.
    pub fn base(&self) -> Ipv4Addr {
        slot_base(self.slot)
    }

    /// The IPv4 subnet, `10.2xx.y.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}/24", self.base())
    }

    /// The bridge's own IPv4 address, the pods' gateway (host-local hands out `.1` to it).
    pub fn gateway(&self) -> Ipv4Addr {
        let o = self.base().octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    /// The network address of the IPv6 /64 of dual-stack configs (a ULA range).
    pub fn base_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd42, 0xb6e0, 0, self.slot as u16, 0, 0, 0, 0)
    }

    /// The IPv6 subnet, `fd42:b6e0:0:<slot>::/64`.
    pub fn subnet_v6(&self) -> String {
        format!("{}/64", self.base_v6())
    }

    /// Whether `ip` lies in one of this network's subnets.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => v4.octets()[..3] == self.base().octets()[..3],
            IpAddr::V6(v6) => v6.segments()[..4] == self.base_v6().segments()[..4],
        }
    }

    /// Where the host-local IPAM plugin of [`conflist`](Self::conflist) keeps allocations.
    pub fn ipam_dir(&self) -> &Path {
        self.ipam.path()
    }

    /// A CNI network config list of the shape of bungeo's embedded default: the `bridge`
    /// plugin on this bridge (gateway, masquerade, hairpin) with `host-local` IPAM on this
    /// subnet and a data dir of this network's own, then `portmap` for hostPorts. With
    /// `dual_stack`, host-local hands out an IPv6 address of [`subnet_v6`](Self::subnet_v6)
    /// as well.
    pub fn conflist(&self, name: &str, dual_stack: bool) -> Value {
        let mut ranges = vec![json!([{ "subnet": self.subnet() }])];
        let mut routes = vec![json!({ "dst": "0.0.0.0/0" })];
        if dual_stack {
            ranges.push(json!([{ "subnet": self.subnet_v6() }]));
            routes.push(json!({ "dst": "::/0" }));
        }
        json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": ranges,
                        "routes": routes,
                        "dataDir": self.ipam.path(),
                    }
                },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        })
    }

    /// Whether the bridge device exists.
    pub fn bridge_exists(&self) -> bool {
        link_exists(&self.bridge)
    }

    /// The interfaces attached to the bridge (the host ends of pod veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        dir_names(&Path::new("/sys/class/net").join(&self.bridge).join("brif"))
    }

    /// Firewall rules (IPv4 and IPv6, every table) naming an address of this network,
    /// as `<table>: <rule>`.
    pub fn rules(&self) -> Vec<String> {
        all_rules()
            .into_iter()
            .filter(|(_, _, rule)| rule_addresses(rule).iter().any(|a| self.contains(a)))
            .map(|(_, table, rule)| format!("{table}: {rule}"))
            .collect()
    }

    /// What is left of pods on this network: veths on the bridge, firewall rules naming its
    /// addresses, IP allocations in its own data dir. The bridge itself may stay.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .bridge_ports()
            .into_iter()
            .map(|p| format!("veth {p} on {}", self.bridge))
            .collect();
        out.extend(self.rules().into_iter().map(|r| format!("rule {r}")));
        out.extend(
            allocations(self.ipam.path())
                .into_iter()
                .map(|(path, owner)| format!("IP allocation {} of {owner}", path.display())),
        );
        out
    }

    /// Removes the veths on the bridge, the bridge, and the firewall rules (and the per-pod
    /// chains they jump to) naming this network's addresses. Best effort, never fails.
    pub fn clean_up(&self) {
        for port in self.bridge_ports() {
            let _ = run_quiet("ip", &["link", "del", &port]);
        }
        if self.bridge_exists() {
            let _ = run_quiet("ip", &["link", "del", &self.bridge]);
        }
        remove_rules(|a| self.contains(a));
        for (ip, _) in allocations(self.ipam.path()) {
            let _ = std::fs::remove_file(ip);
        }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        self.clean_up();
    }
}

/// `(path, owner)` of every host-local allocation below `dir`: files named after an IP
/// address, holding the container id (and interface) they were handed to.
pub fn allocations(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(allocations(&path));
        } else if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.parse::<IpAddr>().is_ok())
        {
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            out.push((path, owner.lines().next().unwrap_or_default().to_string()));
        }
    }
    out
}

/// The host-local data dirs a CNI config list names (the plugin's default when it names
/// none).
pub fn host_local_dirs(conflist: &Value) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let plugins = conflist["plugins"].as_array().cloned().unwrap_or_default();
    for plugin in plugins.iter().chain(std::iter::once(conflist)) {
        if plugin["ipam"]["type"] == "host-local" {
            let name = conflist["name"].as_str().unwrap_or_default();
            out.push(match plugin["ipam"]["dataDir"].as_str() {
                Some(d) => PathBuf::from(d).join(name),
                None => Path::new("/var/lib/cni/networks").join(name),
            });
        }
    }
    out
}

/// libcni's cached results naming `id` (containerd keeps one per pod until its DEL).
pub fn cached_results(id: &str) -> Vec<String> {
    dir_names(Path::new(LIBCNI_RESULTS))
        .into_iter()
        .filter(|n| n.contains(id))
        .collect()
}

/// Whether a network device of this name exists in the node's namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The node's network device with this interface index.
pub fn link_by_index(index: u32) -> Option<String> {
    dir_names(Path::new("/sys/class/net"))
        .into_iter()
        .find(|n| {
            std::fs::read_to_string(format!("/sys/class/net/{n}/ifindex"))
                .is_ok_and(|s| s.trim().parse::<u32>().ok() == Some(index))
        })
}

/// The node-side end of the veth whose other end is `eth0` in the network namespace pinned at
/// `netns`.
pub fn host_veth(netns: &Path) -> Result<String> {
    let ns = format!("--net={}", netns.display());
    let out = command_output("nsenter", &[&ns, "ip", "-o", "link", "show", "eth0"])?;
    // "2: eth0@if17: <BROADCAST,..."
    let peer = out
        .split_whitespace()
        .nth(1)
        .and_then(|name| name.split_once("@if"))
        .and_then(|(_, index)| index.trim_end_matches(':').parse::<u32>().ok())
        .with_context(|| format!("no veth peer in {out:?}"))?;
    link_by_index(peer).with_context(|| format!("no node interface with index {peer}"))
}

/// The global IP addresses of `eth0` in the network namespace pinned at `netns` (the
/// kernel's IPv6 link-local address left out).
pub fn pod_addresses(netns: &Path) -> Result<Vec<IpAddr>> {
    let ns = format!("--net={}", netns.display());
    let out = command_output("nsenter", &[&ns, "ip", "-o", "addr", "show", "dev", "eth0"])?;
    Ok(out
        .lines()
        .filter(|l| !l.contains("scope link"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            f.find(|w| *w == "inet" || *w == "inet6")?;
            f.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

/// A TCP port that was free a moment ago on every address.
pub fn free_tcp_port() -> Result<u16> {
    let listener = TcpListener::bind("0.0.0.0:0").context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `GET path` over HTTP/1.0 from this process; the status line and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .with_context(|| format!("send to {addr}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("read from {addr}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// `(family, table, rule)` of every firewall rule of the node, from `iptables -S` and
/// `ip6tables -S` (family `4` or `6`), chain declarations (`-N`, `-P`) included.
pub fn all_rules() -> Vec<(u8, &'static str, String)> {
    let mut out = Vec::new();
    for (family, tool) in [(4, "iptables"), (6, "ip6tables")] {
        for table in ["nat", "filter", "mangle"] {
            let Ok(text) = command_output(tool, &["-w", "-t", table, "-S"]) else {
                continue;
            };
            out.extend(text.lines().map(|l| (family, table, l.to_string())));
        }
    }
    out
}

/// The addresses a rule names (`-s`, `-d`, `--to-destination`, comments aside).
pub fn rule_addresses(rule: &str) -> Vec<IpAddr> {
    rule.split_whitespace()
        .filter_map(|word| {
            let word = word.trim_matches('"');
            let word = word.split('/').next().unwrap_or(word);
            if let Some(rest) = word.strip_prefix('[') {
                // [fd42::2]:8080
                return rest.split(']').next()?.parse().ok();
            }
            if let Ok(ip) = word.parse() {
                return Some(ip);
            }
            // 10.200.1.2:8080 or a port range after the address
            word.rsplit_once(':')
                .and_then(|(a, _)| a.parse::<Ipv4Addr>().ok())
                .map(IpAddr::V4)
        })
        .collect()
}

/// Deletes every rule naming an address `matches` picks and the per-pod `CNI-…` chains those
/// addresses appear in (with every rule jumping to them), in the `nat`, `filter` and
/// `mangle` tables of both families. The chains `portmap` shares stay (see
/// [`remove_idle_hostport_chains`]).
pub fn remove_rules(matches: impl Fn(&IpAddr) -> bool) {
    for (family, tool) in [(4u8, "iptables"), (6, "ip6tables")] {
        for table in ["nat", "filter", "mangle"] {
            let rules: Vec<String> = all_rules()
                .into_iter()
                .filter(|(f, t, _)| *f == family && *t == table)
                .map(|(_, _, r)| r)
                .collect();
            let mut chains = BTreeSet::new();
            for rule in &rules {
                if let Some(chain) = appended_chain(rule)
                    && is_per_pod_chain(chain)
                    && rule_addresses(rule).iter().any(&matches)
                {
                    chains.insert(chain.to_string());
                }
            }
            for rule in &rules {
                let Some(chain) = appended_chain(rule) else {
                    continue;
                };
                if chains.contains(chain) {
                    continue; // flushed below
                }
                let jumps = jump_target(rule).is_some_and(|t| chains.contains(t));
                if jumps || rule_addresses(rule).iter().any(&matches) {
                    delete_rule(tool, table, rule);
                }
            }
            for chain in &chains {
                let _ = run_quiet(tool, &["-w", "-t", table, "-F", chain]);
                let _ = run_quiet(tool, &["-w", "-t", table, "-X", chain]);
            }
        }
    }
}

/// The chains `portmap` shares between pods (`CNI-HOSTPORT-*`), when no pod uses them: no
/// port mapping in `CNI-HOSTPORT-DNAT` and no per-pod `CNI-DN-*` chain. Per family.
pub fn idle_hostport_chains() -> Vec<(u8, String)> {
    let rules = all_rules();
    let mut out = Vec::new();
    for family in [4u8, 6] {
        let nat: Vec<&String> = rules
            .iter()
            .filter(|(f, t, _)| *f == family && *t == "nat")
            .map(|(_, _, r)| r)
            .collect();
        let busy = nat.iter().any(|r| {
            appended_chain(r).is_some_and(|c| c == "CNI-HOSTPORT-DNAT")
                || r.starts_with("-N CNI-DN-")
        });
        if busy {
            continue;
        }
        out.extend(
            nat.iter()
                .filter_map(|r| r.strip_prefix("-N "))
                .filter(|c| c.starts_with(HOSTPORT_CHAIN_PREFIX))
                .map(|c| (family, c.to_string())),
        );
    }
    out
}

/// Removes the `CNI-HOSTPORT-*` chains and the rules jumping to them where no pod uses them
/// (see [`idle_hostport_chains`]); the suites call it once at their end.
pub fn remove_idle_hostport_chains() {
    let idle = idle_hostport_chains();
    for family in [4u8, 6] {
        let tool = if family == 4 { "iptables" } else { "ip6tables" };
        let chains: BTreeSet<&str> = idle
            .iter()
            .filter(|(f, _)| *f == family)
            .map(|(_, c)| c.as_str())
            .collect();
        if chains.is_empty() {
            continue;
        }
        for (_, table, rule) in all_rules().into_iter().filter(|(f, _, _)| *f == family) {
            if jump_target(&rule).is_some_and(|t| chains.contains(t))
                && appended_chain(&rule).is_some_and(|c| !chains.contains(c))
            {
                delete_rule(tool, table, &rule);
            }
        }
        for chain in &chains {
            let _ = run_quiet(tool, &["-w", "-t", "nat", "-F", chain]);
        }
        for chain in &chains {
            let _ = run_quiet(tool, &["-w", "-t", "nat", "-X", chain]);
        }
    }
}

/// What test networks nobody holds any more left on the node: bridges, rules naming their
/// addresses, and `CNI-HOSTPORT-*` chains although no pod maps a port. Networks of daemons
/// still running (this process's or another test run's) are not leftovers.
pub fn node_leftovers() -> Vec<String> {
    let mut out: Vec<String> = dir_names(Path::new("/sys/class/net"))
        .into_iter()
        .filter(|n| {
            n.strip_prefix(BRIDGE_PREFIX)
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .is_some_and(slot_is_free)
        })
        .map(|n| format!("bridge {n}"))
        .collect();
    for (family, table, rule) in all_rules() {
        if rule_addresses(&rule)
            .iter()
            .filter_map(slot_of)
            .any(slot_is_free)
        {
            out.push(format!("IPv{family} {table}: {rule}"));
        }
    }
    out.extend(
        idle_hostport_chains()
            .into_iter()
            .map(|(f, c)| format!("IPv{f} nat: idle chain {c}")),
    );
    out
}

/// The test network slot an address belongs to.
fn slot_of(ip: &IpAddr) -> Option<u32> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 10 && (200..216).contains(&o[1]))
                .then(|| u32::from(o[1] - 200) * 256 + u32::from(o[2]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[..3] == [0xfd42, 0xb6e0, 0] && u32::from(s[3]) < SLOTS).then_some(u32::from(s[3]))
        }
    }
}

/// Whether nobody (this process included) holds `slot`.
fn slot_is_free(slot: u32) -> bool {
    let path = Path::new(LOCK_DIR).join(format!("{slot}.lock"));
    let Ok(file) = File::open(&path) else {
        return true;
    };
    // SAFETY: flock on a descriptor this function owns; no memory is involved. The lock
    // goes with the descriptor at the end of the function.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Test bridges left on the node whose slot nobody holds (a crashed run's), removed with the
/// firewall rules of their subnets; how many.
pub fn remove_stale_bridges() -> usize {
    let mut removed = 0;
    for name in dir_names(Path::new("/sys/class/net")) {
        let Some(slot) = name
            .strip_prefix(BRIDGE_PREFIX)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        let path = Path::new(LOCK_DIR).join(format!("{slot}.lock"));
        let Ok(file) = File::create(&path) else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue; // a running daemon's
        }
        let base = slot_base(slot);
        for port in dir_names(&Path::new("/sys/class/net").join(&name).join("brif")) {
            let _ = run_quiet("ip", &["link", "del", &port]);
        }
        let _ = run_quiet("ip", &["link", "del", &name]);
        remove_rules(|a| matches!(a, IpAddr::V4(v4) if v4.octets()[..3] == base.octets()[..3]));
        removed += 1;
    }
    removed
}

/// The network address of a slot's IPv4 /24.
fn slot_base(slot: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200 + (slot / 256) as u8, (slot % 256) as u8, 0)
}

/// `-A CHAIN ...` → `CHAIN`.
fn appended_chain(rule: &str) -> Option<&str> {
    rule.strip_prefix("-A ")?.split_whitespace().next()
}

/// The chain or target after `-j`.
fn jump_target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    words.find(|w| *w == "-j" || *w == "-g")?;
    words.next()
}

/// A chain the CNI plugins make for one pod (`CNI-<hash>` of bridge's masquerade,
/// `CNI-DN-<hash>` of portmap), as opposed to the shared `CNI-HOSTPORT-*` ones.
fn is_per_pod_chain(chain: &str) -> bool {
    chain.starts_with("CNI-") && !chain.starts_with(HOSTPORT_CHAIN_PREFIX)
}

/// Deletes one rule as `-S` printed it: the output is shell-quoted (comments), so a shell
/// splits it back.
fn delete_rule(tool: &str, table: &str, rule: &str) {
    let Some(spec) = rule.strip_prefix("-A ") else {
        return;
    };
    let _ = run_quiet("sh", &["-c", &format!("{tool} -w -t {table} -D {spec}")]);
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn command_output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_quiet(program: &str, args: &[&str]) -> Result<()> {
    command_output(program, args).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_addresses_finds_sources_destinations_and_dnat_targets() {
        let rule = r#"-A POSTROUTING -s 10.200.7.2/32 -m comment --comment "name: \"bungeo\" id: \"abc\"" -j CNI-1234"#;
        assert_eq!(rule_addresses(rule), vec![IpAddr::from([10, 200, 7, 2])]);
        let dnat =
            "-A CNI-DN-1 -p tcp -m tcp --dport 30080 -j DNAT --to-destination 10.200.7.2:8080";
        assert_eq!(rule_addresses(dnat), vec![IpAddr::from([10, 200, 7, 2])]);
        let v6 = "-A CNI-DN-1 -p tcp -j DNAT --to-destination [fd42:b6e0:0:7::2]:8080";
        assert_eq!(
            rule_addresses(v6),
            vec!["fd42:b6e0:0:7::2".parse::<IpAddr>().unwrap()]
        );
        assert!(rule_addresses("-A OUTPUT -m addrtype --dst-type LOCAL -j X").is_empty());
    }

    #[test]
    fn addresses_map_to_their_slots() {
        let net = |a: &str| slot_of(&a.parse().unwrap());
        assert_eq!(net("10.200.0.5"), Some(0));
        assert_eq!(net("10.201.2.5"), Some(258));
        assert_eq!(net("10.215.255.1"), Some(4095));
        assert_eq!(net("10.216.0.1"), None);
        assert_eq!(net("10.88.0.1"), None);
        assert_eq!(net("fd42:b6e0:0:102::2"), Some(258));
        assert_eq!(net("fd00::1"), None);
        assert_eq!(slot_base(258).to_string(), "10.201.2.0");
    }

    #[test]
    fn chains_and_targets() {
        let rule = "-A POSTROUTING -s 10.0.0.2/32 -j CNI-abc";
        assert_eq!(appended_chain(rule), Some("POSTROUTING"));
        assert_eq!(jump_target(rule), Some("CNI-abc"));
        assert!(is_per_pod_chain("CNI-DN-abc"));
        assert!(!is_per_pod_chain("CNI-HOSTPORT-DNAT"));
        assert!(appended_chain("-N CNI-abc").is_none());
    }

    #[test]
    fn host_local_dirs_follow_the_config() {
        let list = json!({"name": "n", "plugins": [
            {"type": "bridge", "ipam": {"type": "host-local", "dataDir": "/d"}},
            {"type": "portmap"}
        ]});
        assert_eq!(host_local_dirs(&list), vec![PathBuf::from("/d/n")]);
        let default =
            json!({"name": "m", "plugins": [{"type": "bridge", "ipam": {"type": "host-local"}}]});
        assert_eq!(
            host_local_dirs(&default),
            vec![PathBuf::from("/var/lib/cni/networks/m")]
        );
    }

    #[test]
    fn allocations_are_files_named_after_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("n");
        std::fs::create_dir(&net).unwrap();
        std::fs::write(net.join("10.200.0.2"), "abc\r\neth0").unwrap();
        std::fs::write(net.join("last_reserved_ip.0"), "10.200.0.2").unwrap();
        std::fs::write(net.join("lock"), "").unwrap();
        assert_eq!(
            allocations(dir.path()),
            vec![(net.join("10.200.0.2"), "abc".to_string())]
        );
    }
}
