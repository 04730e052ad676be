//! Fuzz target: a CNI plugin's stdout read as a result. Parsing may refuse the input but must
//! not panic, and the pod's IPs must be addresses of the result, IPv4 first, without repeats.
#![no_main]

use bungeo_runtime::cni::CniResult;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(result) = CniResult::parse(raw, "fuzz") else {
        return;
    };
    for ifname in ["eth0", ""] {
        let ips = result.pod_ips(ifname);
        assert!(
            ips.iter()
                .all(|ip| result.ips.iter().any(|c| c.address == *ip))
        );
        assert!(ips.windows(2).all(|w| w[0].is_ipv4() || w[1].is_ipv6()));
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ips.len(), "repeated pod IP in {ips:?}");
    }
    for ip in &result.ips {
        assert!(ip.prefix_len <= if ip.address.is_ipv4() { 32 } else { 128 });
        if let Some(i) = ip.interface {
            assert!(i < result.interfaces.len());
        }
    }
});
