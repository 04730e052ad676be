//! Container mechanisms for bungeo: OCI runtime spec generation from CRI requests, namespaces,
//! rootfs and mounts, cgroups, security settings and CNI. The runtime issue builds this crate;
//! until then it holds nothing, and the daemon answers every container call `UNIMPLEMENTED`.
