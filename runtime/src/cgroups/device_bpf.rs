//! Enforcing a [`DevicePolicy`] on a cgroup v2 directory: cgroup v2 has no devices files, so
//! the policy's eBPF program is loaded and attached to the cgroup (`BPF_CGROUP_DEVICE`), as
//! runc and crun do. The kernel then runs it on every open and mknod of a device node by a
//! process in the cgroup (and in its descendants).
//!
//! A new policy (UpdateContainerResources) is attached next to the old program, which is
//! detached after: in between both run, and a device needs both to allow it, so an update
//! never opens a window with less enforcement than either policy.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::device_policy::{DevicePolicy, Insn};
use crate::error::{Error, Result};

// bpf(2) commands, program type, attach type and flag (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The most programs [`attached`] reads back from one cgroup.
const MAX_QUERIED: usize = 64;

/// Bytes of verifier log kept when the kernel refuses a program.
const LOG_SIZE: usize = 16 * 1024;

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH and BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// `union bpf_attr` for BPF_PROG_QUERY, up to `prog_cnt`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// bpf(2) with one of the attribute structs above.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` prefix of `union bpf_attr`
    // for `cmd`, and its size is passed, so the kernel reads and writes only within it (and
    // through the pointers in it, which the callers point at buffers that outlive the call).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a file descriptor bpf(2) returned.
fn owned_fd(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor as a new one, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn err(what: &str, dir: &Path, e: impl std::fmt::Display) -> Error {
    Error::Cgroups(format!("{what} for cgroup {}: {e}", dir.display()))
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    let file = std::fs::File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    Ok(file.into())
}

/// Loads the policy's program into the kernel.
fn load(dir: &Path, program: &[Insn]) -> Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; LOG_SIZE];
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"bungeo_device");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned_fd(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            let verifier = verifier.trim();
            Err(err(
                "load the device eBPF program",
                dir,
                if verifier.is_empty() {
                    e.to_string()
                } else {
                    format!("{e} (verifier: {verifier})")
                },
            ))
        }
    }
}

/// The ids of the device programs attached to the cgroup itself (not its ancestors').
fn attached_ids(dir: &Path, cgroup: &OwnedFd) -> Result<Vec<u32>> {
    let mut ids = vec![0u32; MAX_QUERIED];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr).map_err(|e| err("query device eBPF programs", dir, e))?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// How many device programs the cgroup at `dir` has attached to it.
#[cfg(test)]
pub(crate) fn attached(dir: &Path) -> Result<usize> {
    attached_ids(dir, &open_dir(dir)?).map(|ids| ids.len())
}

/// Makes `policy` the cgroup's device policy, replacing any device program attached to it.
pub(crate) fn install(dir: &Path, policy: &DevicePolicy) -> Result<()> {
    let cgroup = open_dir(dir)?;
    let old = attached_ids(dir, &cgroup)?;
    let program = load(dir, &policy.program())?;
    let mut attach = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|e| err("attach the device eBPF program", dir, e))?;
    for id in old {
        let mut by_id = GetFdByIdAttr {
            prog_id: id,
            ..Default::default()
        };
        let old_program = match bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id) {
            Ok(fd) => owned_fd(fd),
            // Detached and freed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(err("find the previous device eBPF program", dir, e)),
        };
        let mut detach = AttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: old_program.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        match bpf(BPF_PROG_DETACH, &mut detach) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(err("detach the previous device eBPF program", dir, e)),
        }
    }
    Ok(())
}
