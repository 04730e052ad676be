//! The parent side of `exec`: a new process in a running container's namespaces and cgroup.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::channel::{self, Msg};
use super::create::{connect_console, open_joins, spawn, write_pid_file};
use super::init::ChildPlan;
use super::process::ExecPlan;
use super::state::Status;
use super::{Container, ExecOptions};
use crate::cgroups::{Cgroup, Driver};
use crate::namespaces::{self, NsKind};
use crate::{Error, Result, process_settings};

/// The namespaces of `pid` that differ from ours, in join order (joining one's own user
/// namespace is an error, and the others would be no-ops).
fn namespaces_of(pid: i32) -> Result<Vec<(NsKind, PathBuf)>> {
    let mut out = Vec::new();
    for kind in NsKind::JOIN_ORDER {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{}", kind.proc_name()));
        let ours = PathBuf::from(format!("/proc/self/ns/{}", kind.proc_name()));
        if !theirs.exists() || !ours.exists() {
            continue;
        }
        if namespaces::same_namespace(&theirs, &ours)? {
            continue;
        }
        out.push((kind, theirs));
    }
    Ok(out)
}

pub(crate) fn exec(c: &Container, opts: &ExecOptions) -> Result<i32> {
    let st = &c.state;
    match c.status() {
        Status::Running | Status::Created => {}
        s => {
            return Err(Error::InvalidState {
                id: st.id.clone(),
                status: s.to_string(),
                message: format!("cannot exec in a {s} container"),
            });
        }
    }
    let joins = open_joins(&namespaces_of(st.init_pid)?)?;
    // Re-check after opening: the fds now pin the namespaces, and a reused pid must not
    // hand us someone else's.
    if c.status() == Status::Stopped {
        return Err(Error::InvalidState {
            id: st.id.clone(),
            status: "stopped".into(),
            message: "the container stopped while exec was starting".into(),
        });
    }
    let terminal = opts.process.terminal().unwrap_or(false);
    let console = match (&opts.console_socket, terminal) {
        (Some(cs), true) => Some(connect_console(cs)?),
        (None, true) => {
            return Err(Error::InvalidArgument(
                "process.terminal is set but no console socket was given (--console-socket)".into(),
            ));
        }
        (_, false) => None,
    };
    let driver = if st.systemd_cgroup {
        Driver::Systemd
    } else {
        Driver::Cgroupfs
    };
    // The container's cgroup exists as long as it runs: nothing to create (and an exec must
    // not land in a fresh, unlimited one if it was removed behind our back).
    let cg = Cgroup::open(&st.cgroups_path, &st.id, driver)?;
    // The child joins the cgroup itself, through files opened here: the parent moving it
    // instead waits for an RCU grace period (see `CgroupJoin`), most of an exec's time on a
    // cgroup v1 node. The systemd driver has no files to join by: the parent moves it.
    let cgroup_join = cg.child_join()?;
    let parent_moves_child = cgroup_join.is_none();
    let joins_user = joins.iter().any(|(k, _)| *k == NsKind::User);
    let joins_cgroup_ns = joins.iter().any(|(k, _)| *k == NsKind::Cgroup);
    let plan = ChildPlan {
        joins,
        new_user_ns: false,
        unshare: nix::sched::CloneFlags::empty(),
        exec: ExecPlan::new(&opts.process, st.seccomp.clone())?,
        console,
        init: None,
        preserve_fds: opts.preserve_fds,
        cgroup: cgroup_join,
        // The kernel checks a clone into a cgroup against the user and cgroup namespaces
        // stage 1 is in by then; inside either, stage 1 joins the v2 directory itself.
        clone_into_cgroup: !joins_user && !joins_cgroup_ns,
    };
    let (parent_ch, child_ch) = channel::pair()?;
    let mut pids = Vec::new();
    let res = (|| -> Result<i32> {
        let pid = spawn(&plan, &parent_ch, child_ch, &[], &[], &mut pids)?;
        (|| -> Result<()> {
            if parent_moves_child {
                cg.add_task(pid)?;
            }
            if let Some(adj) = opts.process.oom_score_adj() {
                process_settings::set_oom_score_adj(pid, adj)?;
            }
            parent_ch.send(&Msg::Go)
        })()
        // A child that failed (joining its cgroup, say) and exited makes these fail too; its
        // own message says why better.
        .map_err(|ours| match parent_ch.try_recv() {
            Ok(Some(Msg::Error(msg))) => Error::Child(msg),
            _ => ours,
        })?;
        // The child closes its end by exec'ing (CLOEXEC): EOF means success.
        match parent_ch.recv()? {
            None => Ok(pid),
            Some(Msg::Error(e)) => Err(Error::Child(e)),
            Some(m) => Err(Error::Child(format!("unexpected message {m:?} from exec"))),
        }
    })();
    match res {
        Ok(pid) => {
            if let Some(p) = &opts.pid_file {
                write_pid_file(Path::new(p), pid)?;
            }
            Ok(pid)
        }
        Err(e) => {
            for p in pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                let _ = waitpid(Pid::from_raw(p), None);
            }
            Err(e)
        }
    }
}
