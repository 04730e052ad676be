//! The bungeo end-to-end harness: real registries loaded with test images built from
//! busybox-static, the daemons under test (bungeo and containerd as the reference), a CRI
//! client, and a runner for differential suites.

pub mod benchkit;
pub mod bundle;
pub mod bungeo;
pub mod containerd;
pub mod cri;
pub mod crilog;
pub mod fakeregistry;
pub mod images;
pub mod layer;
pub mod leftovers;
pub mod loopfs;
pub mod mounts;
pub mod net;
pub mod process;
pub mod procstat;
pub mod registry;
pub mod registryhosts;
pub mod scene;
pub mod streaming;
pub mod suite;
#[path = "../../testsupport/skip.rs"]
pub mod test_skip;
pub mod workload;
