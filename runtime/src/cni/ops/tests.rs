//! The operations against fake plugins (shell scripts recording their environment and stdin)
//! and, as root, against the real plugins in `/usr/lib/cni` in namespaces the tests create.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::cni::{
    CapabilityArgs, DefaultNetwork, NetworkList, PortMapping, RuntimeArgs, parse_cidr,
};
use crate::namespaces::forked::write_executable;
use crate::namespaces::{self, NsKind};

/// A directory of fake plugins that log each call as `<n>-<plugin>-<COMMAND>.{json,env}`.
struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new() -> Fakes {
        let fakes = Fakes {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(fakes.log_dir()).unwrap();
        std::fs::create_dir(fakes.bin()).unwrap();
        fakes
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// A plugin answering ADD with one address on eth0, `10.9.0.<octet>/24`; `fail_on` makes
    /// that command fail with a CNI error object.
    fn plugin(&self, name: &str, octet: u8, fail_on: &str) {
        let log = self.log_dir();
        let script = format!(
            r#"#!/bin/sh
stdin=$(cat)
n=$(ls "{log}" | wc -l)
n=$((n / 2))
printf '%s' "$stdin" > "{log}/$n-{name}-$CNI_COMMAND.json"
env | grep '^CNI_' | sort > "{log}/$n-{name}-$CNI_COMMAND.env"
if [ "$CNI_COMMAND" = "{fail_on}" ]; then
  echo '{{"cniVersion":"1.0.0","code":7,"msg":"{name} refuses","details":"as told"}}'
  exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}}],"ips":[{{"address":"10.9.0.{octet}/24","interface":0}}]}}'
fi
"#,
            log = log.display()
        );
        let path = self.bin().join(name);
        write_executable(&path, script.as_bytes()).unwrap();
    }

    fn plugins(&self) -> Plugins {
        Plugins {
            bin_dirs: vec![self.dir.path().join("empty"), self.bin()],
            timeout: Duration::from_secs(10),
        }
    }

    /// The calls made, in order: (plugin, command, stdin, env).
    fn calls(&self) -> Vec<(String, String, Value, HashMap<String, String>)> {
        let mut names: Vec<String> = std::fs::read_dir(self.log_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort_by_key(|n| n.split('-').next().unwrap().parse::<u32>().unwrap());
        names
            .into_iter()
            .map(|n| {
                let stem = n.trim_end_matches(".json");
                let mut parts = stem.splitn(3, '-');
                let (_, plugin, command) = (
                    parts.next().unwrap(),
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap().to_owned(),
                );
                let stdin: Value = serde_json::from_str(
                    &std::fs::read_to_string(self.log_dir().join(&n)).unwrap(),
                )
                .unwrap();
                let env = std::fs::read_to_string(self.log_dir().join(format!("{stem}.env")))
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                (plugin, command, stdin, env)
            })
            .collect()
    }
}

fn list(version: &str, types: &[&str]) -> NetworkList {
    let plugins: Vec<Value> = types
        .iter()
        .map(|t| {
            if *t == "pm" {
                json!({"type": t, "capabilities": {"portMappings": true}})
            } else {
                json!({"type": t, "opt": t})
            }
        })
        .collect();
    NetworkList::parse(
        &json!({"cniVersion": version, "name": "fakenet", "plugins": plugins}).to_string(),
        "test",
    )
    .unwrap()
}

fn rt() -> RuntimeArgs {
    RuntimeArgs {
        container_id: "c0ffee".to_owned(),
        netns: PathBuf::from("/run/bungeo/ns/c0ffee/net"),
        ifname: "eth0".to_owned(),
        args: vec![
            ("IgnoreUnknown".to_owned(), "1".to_owned()),
            ("K8S_POD_NAME".to_owned(), "web".to_owned()),
        ],
        capabilities: CapabilityArgs {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".to_owned(),
                host_ip: "127.0.0.1".to_owned(),
            }],
            ..Default::default()
        },
    }
}

#[test]
fn add_chains_results_and_del_runs_in_reverse_with_the_add_result() {
    let fakes = Fakes::new();
    fakes.plugin("first", 1, "");
    fakes.plugin("pm", 2, "");
    let net = list("1.0.0", &["first", "pm"]);
    let result = add(&net, &rt(), &fakes.plugins()).unwrap();
    assert_eq!(
        result.pod_ips("eth0"),
        vec!["10.9.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
    del(&net, &rt(), Some(&result.raw), &fakes.plugins()).unwrap();

    let calls = fakes.calls();
    let order: Vec<(&str, &str)> = calls
        .iter()
        .map(|(p, c, _, _)| (p.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        order,
        vec![
            ("first", "ADD"),
            ("pm", "ADD"),
            ("pm", "DEL"),
            ("first", "DEL")
        ]
    );
    let (_, _, first_in, env) = &calls[0];
    assert_eq!(first_in["name"], "fakenet");
    assert_eq!(first_in["cniVersion"], "1.0.0");
    assert_eq!(first_in["opt"], "first");
    assert!(first_in.get("prevResult").is_none());
    assert!(first_in.get("runtimeConfig").is_none(), "not declared");
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], "c0ffee");
    assert_eq!(env["CNI_NETNS"], "/run/bungeo/ns/c0ffee/net");
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(env["CNI_ARGS"], "IgnoreUnknown=1;K8S_POD_NAME=web");
    assert_eq!(env["CNI_PATH"], fakes.plugins().cni_path());
    let (_, _, pm_in, _) = &calls[1];
    assert_eq!(pm_in["prevResult"]["ips"][0]["address"], "10.9.0.1/24");
    assert_eq!(
        pm_in["runtimeConfig"]["portMappings"][0],
        json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"})
    );
    for (_, _, stdin, _) in &calls[2..] {
        assert_eq!(stdin["prevResult"], result.raw);
    }
}

#[test]
fn del_without_a_result_and_before_0_4_0_has_no_prev_result() {
    let fakes = Fakes::new();
    fakes.plugin("a", 1, "");
    del(&list("1.0.0", &["a"]), &rt(), None, &fakes.plugins()).unwrap();
    let prev = json!({"cniVersion": "0.3.1", "ips": []});
    del(&list("0.3.1", &["a"]), &rt(), Some(&prev), &fakes.plugins()).unwrap();
    for (_, command, stdin, _) in fakes.calls() {
        assert_eq!(command, "DEL");
        assert!(stdin.get("prevResult").is_none(), "{stdin}");
    }
}

#[test]
fn a_failing_plugin_stops_add_with_its_message_and_del_asks_everyone() {
    let fakes = Fakes::new();
    fakes.plugin("a", 1, "");
    fakes.plugin("b", 2, "ADD");
    fakes.plugin("c", 3, "");
    let net = list("1.0.0", &["a", "b", "c"]);
    let err = add(&net, &rt(), &fakes.plugins()).unwrap_err();
    match &err {
        Error::CniPlugin(failure) => {
            let f = failure.as_ref();
            assert_eq!((f.network.as_str(), f.plugin.as_str()), ("fakenet", "b"));
            assert_eq!((f.command, f.code), ("add", Some(7)));
            assert_eq!(f.message, "b refuses: as told");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "plugin type=\"b\" name=\"fakenet\" failed (add): b refuses: as told"
    );
    assert_eq!(fakes.calls().len(), 2, "c never ran");

    // A DEL failing in the middle still reaches the plugins before it.
    let fakes = Fakes::new();
    fakes.plugin("a", 1, "");
    fakes.plugin("b", 2, "DEL");
    fakes.plugin("c", 3, "");
    let err = del(&net, &rt(), None, &fakes.plugins()).unwrap_err();
    assert!(
        err.to_string().contains("failed (delete): b refuses"),
        "{err}"
    );
    let order: Vec<String> = fakes.calls().into_iter().map(|c| c.0).collect();
    assert_eq!(order, vec!["c", "b", "a"]);
}

#[test]
fn a_missing_plugin_is_named_with_the_directories() {
    let fakes = Fakes::new();
    let err = add(&list("1.0.0", &["ghost"]), &rt(), &fakes.plugins()).unwrap_err();
    assert!(matches!(err, Error::CniPluginNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("\"ghost\"") && msg.contains("/bin"), "{msg}");
}

#[test]
fn a_result_that_is_not_json_fails_the_add() {
    let fakes = Fakes::new();
    let path = fakes.bin().join("garbage");
    write_executable(&path, b"#!/bin/sh\ncat >/dev/null; echo 'hello'\n").unwrap();
    let err = add(&list("1.0.0", &["garbage"]), &rt(), &fakes.plugins()).unwrap_err();
    assert!(err.to_string().contains("not JSON"), "{err}");
}

#[test]
fn check_runs_in_order_from_0_4_0_and_honours_disable_check() {
    let fakes = Fakes::new();
    fakes.plugin("a", 1, "");
    fakes.plugin("b", 2, "");
    let prev = json!({"cniVersion": "0.4.0", "ips": []});
    check(&list("0.4.0", &["a", "b"]), &rt(), &prev, &fakes.plugins()).unwrap();
    let calls = fakes.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].0.as_str(), calls[0].1.as_str()), ("a", "CHECK"));
    assert_eq!(calls[1].2["prevResult"], prev);
    let err = check(&list("0.3.1", &["a"]), &rt(), &prev, &fakes.plugins()).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    let mut disabled = list("1.0.0", &["a"]);
    disabled.disable_check = true;
    check(&disabled, &rt(), &prev, &fakes.plugins()).unwrap();
    assert_eq!(fakes.calls().len(), 2);
    fakes.plugin("bad", 9, "CHECK");
    let err = check(&list("1.0.0", &["bad"]), &rt(), &prev, &fakes.plugins()).unwrap_err();
    assert!(err.to_string().contains("failed (check)"), "{err}");
}

#[test]
fn netns_liveness_is_seen_from_the_filesystem() {
    assert!(netns_is_alive(Path::new("/proc/self/ns/net")));
    assert!(!netns_is_alive(Path::new("/proc/self/status")));
    assert!(!netns_is_alive(Path::new("/nonexistent/net")));
    assert!(!netns_is_alive(Path::new("")));
}

// --- root: the real plugins ---------------------------------------------------------------

const REAL_PLUGINS: &str = "/usr/lib/cni";

/// A pinned netns, a uniquely named bridge and subnet and a host-local dir, all removed on
/// drop whatever the test did.
struct RealNet {
    dir: tempfile::TempDir,
    bridge: String,
    subnet: String,
    tag: String,
    pinned: Vec<PathBuf>,
    /// Every (container id, netns) given to a plugin, for a last DEL on drop.
    used: std::cell::RefCell<Vec<(String, PathBuf)>>,
}

impl RealNet {
    fn new() -> Option<RealNet> {
        if !nix::unistd::geteuid().is_root() {
            crate::test_skip::skip("root", "the real CNI plugins make bridges and netns");
            return None;
        }
        if !Path::new(REAL_PLUGINS).join("bridge").exists() {
            crate::test_skip::skip("cni-plugins", &format!("no {REAL_PLUGINS}/bridge"));
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let tag = format!("{:x}", (std::process::id() ^ nanos) & 0xffffff);
        let third = (std::process::id() ^ nanos) % 200 + 20;
        Some(RealNet {
            dir: tempfile::tempdir().unwrap(),
            bridge: format!("bgt{tag}"),
            subnet: format!("10.250.{third}.0/24"),
            tag,
            pinned: Vec::new(),
            used: Default::default(),
        })
    }

    fn netns(&mut self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("ns").join(name);
        let pins = namespaces::pin(&dir, &[NsKind::Net], None).unwrap();
        self.pinned.push(dir);
        pins.net.unwrap()
    }

    fn list(&self) -> NetworkList {
        let text = DefaultNetwork {
            bridge: self.bridge.clone(),
            subnets: vec![self.subnet.clone()],
            data_dir: self.data_dir(),
        }
        .render()
        .unwrap();
        NetworkList::parse(&text, "test default").unwrap()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("networks")
    }

    /// Addresses host-local has handed out (its files other than the lock and last-reserved).
    fn allocations(&self) -> Vec<String> {
        let dir = self.data_dir().join("bungeo");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect()
    }

    fn plugins(&self) -> Plugins {
        Plugins {
            bin_dirs: vec![PathBuf::from(REAL_PLUGINS)],
            timeout: Duration::from_secs(60),
        }
    }

    /// Arguments for pod `name`; its container id is unique to this run, since the bridge
    /// plugin names iptables chains after it.
    fn rt(&self, name: &str, netns: &Path) -> RuntimeArgs {
        let id = format!("{name}-{}", self.tag);
        self.used.borrow_mut().push((id.clone(), netns.to_owned()));
        RuntimeArgs {
            container_id: id,
            netns: netns.to_owned(),
            ifname: "eth0".to_owned(),
            args: vec![("IgnoreUnknown".to_owned(), "1".to_owned())],
            capabilities: CapabilityArgs::default(),
        }
    }

    fn rt_unrecorded(&self, id: &str, netns: &Path) -> RuntimeArgs {
        RuntimeArgs {
            container_id: id.to_owned(),
            netns: netns.to_owned(),
            ifname: "eth0".to_owned(),
            args: vec![("IgnoreUnknown".to_owned(), "1".to_owned())],
            capabilities: CapabilityArgs::default(),
        }
    }

    fn host_veths(&self) -> usize {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for RealNet {
    fn drop(&mut self) {
        // A test that failed half-way may have left iptables rules, which only a DEL removes.
        let list = self.list();
        for (id, netns) in self.used.borrow().iter() {
            let mut rt = self.rt_unrecorded(id, netns);
            if !netns_is_alive(netns) {
                rt.netns = PathBuf::new();
            }
            let _ = del(&list, &rt, None, &self.plugins());
        }
        for dir in &self.pinned {
            let _ = namespaces::unpin(dir);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// Runs `f` in a thread that joined `netns` (a socket made there stays in that namespace).
fn in_thread_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn in_netns(netns: &Path, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn root_the_default_network_adds_checks_and_deletes_with_the_real_plugins() {
    let Some(mut net) = RealNet::new() else {
        return;
    };
    let list = net.list();
    let ns_a = net.netns("a");
    let ns_b = net.netns("b");
    let plugins = net.plugins();
    // Debian's bandwidth plugin (1.1.1) panics in CHECK when the pod has no bandwidth
    // arguments (an upstream bug); pod a has some, so its CHECK passes.
    let mut rt_a = net.rt("bgt-test-a", &ns_a);
    rt_a.capabilities.bandwidth = Some(crate::cni::Bandwidth {
        ingress_rate: 10_000_000,
        ingress_burst: u64::from(u32::MAX),
        egress_rate: 10_000_000,
        egress_burst: u64::from(u32::MAX),
    });
    let a = add(&list, &rt_a, &plugins).unwrap();
    let rt_b = net.rt("bgt-test-b", &ns_b);
    let b = add(&list, &rt_b, &plugins).unwrap();
    let (network, _) = parse_cidr(&net.subnet).unwrap();
    let ip_a = a.pod_ips("eth0");
    assert_eq!(ip_a.len(), 1, "{:?}", a.raw);
    let std::net::IpAddr::V4(v4) = ip_a[0] else {
        panic!("{ip_a:?}")
    };
    let std::net::IpAddr::V4(net4) = network else {
        panic!()
    };
    assert_eq!(
        v4.octets()[..3],
        net4.octets()[..3],
        "{ip_a:?} in {}",
        net.subnet
    );
    assert!(in_netns(&ns_a, &["ip", "-o", "addr", "show", "eth0"]).contains(&ip_a[0].to_string()));
    assert_eq!(net.allocations().len(), 2);
    assert_eq!(net.host_veths(), 2);
    // The two pods reach each other across the bridge.
    let ip_b = b.pod_ips("eth0")[0];
    let listener = in_thread_netns(&ns_b, move || {
        std::net::TcpListener::bind((ip_b, 18080)).unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut conn, b"hello from b").unwrap();
    });
    let got = in_thread_netns(&ns_a, move || {
        let mut conn = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(ip_b, 18080),
            Duration::from_secs(5),
        )
        .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut conn, &mut text).unwrap();
        text
    });
    server.join().unwrap();
    assert_eq!(got, "hello from b");

    check(&list, &rt_a, &a.raw, &plugins).unwrap();
    // The pod's egress is shaped on its host-side veth by a tbf qdisc.
    let host_if = a
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty() && i.name.starts_with("veth"));
    let qdisc = Command::new("tc")
        .args(["qdisc", "show", "dev", &host_if.unwrap().name])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&qdisc.stdout).contains("tbf"),
        "{qdisc:?}"
    );

    del(&list, &rt_a, Some(&a.raw), &plugins).unwrap();
    // Again, and without the namespace (as after a reboot): both fine.
    del(&list, &rt_a, Some(&a.raw), &plugins).unwrap();
    let mut gone = rt_a.clone();
    gone.netns = PathBuf::new();
    del(&list, &gone, Some(&a.raw), &plugins).unwrap();
    assert!(
        in_netns(&ns_a, &["ip", "-o", "link"])
            .lines()
            .all(|l| !l.contains("eth0"))
    );
    assert_eq!(net.allocations().len(), 1, "b's");
    assert_eq!(net.host_veths(), 1, "b's");
    del(&list, &rt_b, Some(&b.raw), &plugins).unwrap();
    assert_eq!(net.allocations(), Vec::<String>::new());
    assert_eq!(net.host_veths(), 0);
    let rules = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains(&net.tag), "masquerade rules left: {rules}");
}

#[test]
fn root_a_failing_plugin_then_del_leaves_no_ip_or_veth() {
    let Some(mut net) = RealNet::new() else {
        return;
    };
    // The bridge succeeds, then a plugin that does not exist fails the ADD.
    let mut value: Value = serde_json::from_str(&net.list().bytes).unwrap();
    value["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "bgt-no-such-plugin"}));
    let list = NetworkList::parse(&value.to_string(), "test").unwrap();
    let ns = net.netns("f");
    let rt = net.rt("bgt-test-f", &ns);
    let plugins = net.plugins();
    let err = add(&list, &rt, &plugins).unwrap_err();
    assert!(err.to_string().contains("bgt-no-such-plugin"), "{err}");
    assert_eq!(net.allocations().len(), 1, "the bridge ran");
    // The runtime's part: DEL with no result. The missing plugin fails its DEL too, but the
    // others still undo their work.
    let err = del(&list, &rt, None, &plugins).unwrap_err();
    assert!(matches!(err, Error::CniPluginNotFound { .. }), "{err:?}");
    assert_eq!(net.allocations(), Vec::<String>::new());
    assert_eq!(net.host_veths(), 0);
    assert!(!in_netns(&ns, &["ip", "-o", "link"]).contains("eth0"));

    // A plugin that reports an error: its message comes back. A range of one address, held
    // by pod x, leaves none for pod y.
    let mut value: Value = serde_json::from_str(&net.list().bytes).unwrap();
    let (network, _) = parse_cidr(&net.subnet).unwrap();
    let std::net::IpAddr::V4(n4) = network else {
        panic!()
    };
    let only = std::net::Ipv4Addr::from(u32::from(n4) + 5).to_string();
    value["plugins"][0]["ipam"]["ranges"] =
        json!([[{"subnet": net.subnet, "rangeStart": only, "rangeEnd": only}]]);
    let list = NetworkList::parse(&value.to_string(), "test").unwrap();
    let rt_x = net.rt("bgt-test-x", &ns);
    let x = add(&list, &rt_x, &plugins).unwrap();
    let ns_y = net.netns("y");
    let rt_y = net.rt("bgt-test-y", &ns_y);
    let err = add(&list, &rt_y, &plugins).unwrap_err();
    assert!(matches!(err, Error::CniPlugin(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("failed (add)") && msg.contains("no IP addresses available"),
        "{msg}"
    );
    del(&list, &rt_y, None, &plugins).unwrap();
    assert_eq!(net.allocations(), vec![only]);
    assert_eq!(net.host_veths(), 1, "x's only");
    assert!(!in_netns(&ns_y, &["ip", "-o", "link"]).contains("eth0"));
    del(&list, &rt_x, Some(&x.raw), &plugins).unwrap();
    assert_eq!(net.allocations(), Vec::<String>::new());
    assert_eq!(net.host_veths(), 0);
}
