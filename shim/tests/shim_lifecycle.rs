//! End to end: the real `bungeo-shim` binary, driving the real `bungeo-runtime` binary, over
//! a ttrpc client. Needs root and busybox-static; `cargo build -p bungeo-runtime` first (the
//! project's `hack/test` builds every binary).

mod support;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bungeo_shim::protos::api::{
    CloseIORequest, CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StateRequest, StatsRequest, Status, UpdateTaskRequest, WaitRequest,
};
use bungeo_shim::protos::protobuf::MessageField;
use bungeo_shim::protos::protobuf::well_known_types::any::Any;
use bungeo_shim::protos::{TaskClient, ttrpc};
use bungeo_shim::{REOPEN_LOG_ANNOTATION, exit_record};
use support::*;

fn create(h: &Harness, stdin: &str, terminal: bool) -> ttrpc::Result<u32> {
    let mut r = CreateTaskRequest::new();
    r.id = h.id.clone();
    r.bundle = h.cfg.bundle.to_string_lossy().into_owned();
    r.stdout = h.log.to_string_lossy().into_owned();
    r.stdin = stdin.to_string();
    r.terminal = terminal;
    h.client().create(ctx(30), &r).map(|r| r.pid)
}

fn start(c: &TaskClient, id: &str, exec_id: &str) -> u32 {
    let mut r = StartRequest::new();
    r.id = id.into();
    r.exec_id = exec_id.into();
    c.start(ctx(30), &r).unwrap().pid
}

fn wait(c: &TaskClient, id: &str, exec_id: &str) -> (u32, SystemTime) {
    let mut r = WaitRequest::new();
    r.id = id.into();
    r.exec_id = exec_id.into();
    let w = c.wait(ctx(60), &r).unwrap();
    let at = SystemTime::UNIX_EPOCH
        + Duration::new(w.exited_at.seconds as u64, w.exited_at.nanos as u32);
    (w.exit_status, at)
}

fn state(c: &TaskClient, id: &str, exec_id: &str) -> ttrpc::Result<(Status, u32, u32)> {
    let mut r = StateRequest::new();
    r.id = id.into();
    r.exec_id = exec_id.into();
    c.state(ctx(10), &r)
        .map(|s| (s.status.enum_value_or_default(), s.pid, s.exit_status))
}

fn delete(c: &TaskClient, id: &str, exec_id: &str) -> ttrpc::Result<u32> {
    let mut r = DeleteRequest::new();
    r.id = id.into();
    r.exec_id = exec_id.into();
    c.delete(ctx(30), &r).map(|r| r.exit_status)
}

fn kill_req(c: &TaskClient, id: &str, exec_id: &str, signal: u32) -> ttrpc::Result<()> {
    let mut r = KillRequest::new();
    r.id = id.into();
    r.exec_id = exec_id.into();
    r.signal = signal;
    c.kill(ctx(10), &r).map(|_| ())
}

/// Shutdown, which may close the connection before its reply: both mean success.
fn shutdown(h: &Harness) {
    let mut r = ShutdownRequest::new();
    r.id = h.id.clone();
    match h.client().shutdown(ctx(10), &r) {
        Ok(_) => {}
        Err(ttrpc::Error::RpcStatus(s)) => panic!("shutdown refused: {s:?}"),
        Err(_) => {}
    }
    assert!(h.shim_gone(), "the shim exits after Shutdown");
    assert!(!h.cfg.socket.exists(), "the socket is removed");
}

fn code_of(e: ttrpc::Error) -> (ttrpc::Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a status: {other:?}"),
    }
}

fn exec_req(
    h: &Harness,
    exec_id: &str,
    args: &[&str],
    stdin: &str,
    stdout: &Path,
) -> ExecProcessRequest {
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    any.value = serde_json::to_vec(&serde_json::json!({
        "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/",
        "noNewPrivileges": true
    }))
    .unwrap();
    let mut r = ExecProcessRequest::new();
    r.id = h.id.clone();
    r.exec_id = exec_id.into();
    r.stdin = stdin.into();
    r.stdout = stdout.to_string_lossy().into_owned();
    r.stderr = stdout.with_extension("err").to_string_lossy().into_owned();
    r.spec = MessageField::some(any);
    r
}

/// Prints the shim's memory and holds it to the goal: a quarter of containerd-shim-runc-v2's
/// ≈13 MB in the size-tuned build (`--profile release-shim`), a loose bound in a debug build.
fn report_rss(h: &Harness, when: &str) {
    let rss = rss_kb(h.shim_pid).unwrap();
    eprintln!("bungeo-shim with {when}: {}", memory_summary(h.shim_pid));
    let limit = if cfg!(debug_assertions) {
        6 * 1024
    } else {
        13 * 1024 / 4
    };
    assert!(rss <= limit, "shim VmRSS {rss} kB is over {limit} kB");
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn create_start_wait_records_the_exit_and_writes_the_cri_log() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new(
        "logs",
        &["sh", "-c", "echo hello; echo err >&2; exit 3"],
        |_| {},
    );
    h.launch();
    // Detached: its own session, not the test's child.
    assert_eq!(
        stat_field(h.shim_pid, 6),
        Some(i64::from(h.shim_pid)),
        "session leader"
    );
    assert_ne!(
        stat_field(h.shim_pid, 4),
        Some(i64::from(std::process::id()))
    );
    let mode = std::fs::metadata(&h.cfg.socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let pid = create(&h, "", false).unwrap() as i32;
    assert!(pid > 0);
    assert_eq!(
        stat_field(pid, 4),
        Some(i64::from(h.shim_pid)),
        "the init is the shim's child"
    );
    let c = h.client();
    assert_eq!(
        state(c, &h.id, "").unwrap(),
        (Status::CREATED, pid as u32, 0)
    );
    assert_eq!(start(c, &h.id, ""), pid as u32);
    let before = SystemTime::now() - Duration::from_secs(1);
    // As a restarted daemon would: a new connection to the same shim.
    let again = bungeo_shim::launch::connect(&h.cfg.address()).unwrap();
    let (code, at) = wait(&again, &h.id, "");
    assert_eq!(code, 3);
    assert!(
        at >= before && at <= SystemTime::now(),
        "exited_at is the exit time"
    );
    // On disk before it was reported.
    let rec = exit_record::read(&h.cfg.state_dir)
        .unwrap()
        .expect("exit.json");
    assert_eq!(rec.exit_code, 3);
    assert!(!rec.oom_killed);
    let disk_at = rec.exited_at_time().unwrap();
    let skew = disk_at.duration_since(at).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_micros(1), "{disk_at:?} vs {at:?}");

    let recs = log_records(&h.log);
    let lines: Vec<(&str, &str, &str)> = recs
        .iter()
        .map(|(_, s, t, c)| (s.as_str(), t.as_str(), c.as_str()))
        .collect();
    assert_eq!(lines, [("stdout", "F", "hello"), ("stderr", "F", "err")]);
    let raw = std::fs::read_to_string(&h.log).unwrap();
    let ts = raw.split(' ').next().unwrap();
    assert!(ts.ends_with('Z') && ts.len() >= 20, "RFC 3339 in UTC: {ts}");

    assert_eq!(
        state(c, &h.id, "").unwrap(),
        (Status::STOPPED, pid as u32, 3)
    );
    assert_eq!(delete(c, &h.id, "").unwrap(), 3);
    assert!(cgroup_dirs(&h.id).is_empty(), "cgroups removed");
    assert!(
        !h.cfg.runtime_root.join(&h.id).exists(),
        "runtime state removed"
    );
    let (code, _) = code_of(state(c, &h.id, "").unwrap_err());
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    shutdown(&h);
    // A restarted daemon finds the exit with the shim gone.
    assert_eq!(exit_record::read(&h.cfg.state_dir).unwrap(), Some(rec));
}

#[test]
fn exec_pids_kill_and_delete_leave_no_process() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("exec", &["sleep", "1000"], |_| {});
    h.launch();
    let init = create(&h, "", false).unwrap() as i32;
    let c = h.client();
    start(c, &h.id, "");
    assert_eq!(state(c, &h.id, "").unwrap().0, Status::RUNNING);
    report_rss(&h, "one running container");

    // Output to files, with its own exit code.
    let out = h.path("e1.out");
    let req = exec_req(
        &h,
        "e1",
        &["sh", "-c", "echo from-exec; echo exec-err >&2; exit 5"],
        "",
        &out,
    );
    c.exec(ctx(10), &req).unwrap();
    let (code, _) = code_of(c.exec(ctx(10), &req).unwrap_err());
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS);
    assert_eq!(state(c, &h.id, "e1").unwrap().0, Status::CREATED);
    let e1 = start(c, &h.id, "e1") as i32;
    assert!(e1 > 0 && e1 != init);
    assert_eq!(wait(c, &h.id, "e1").0, 5);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "from-exec\n");
    assert_eq!(
        std::fs::read_to_string(out.with_extension("err")).unwrap(),
        "exec-err\n"
    );
    assert_eq!(delete(c, &h.id, "e1").unwrap(), 5);
    assert_eq!(
        code_of(state(c, &h.id, "e1").unwrap_err()).0,
        ttrpc::Code::NOT_FOUND
    );

    // Stdin from a FIFO, closed by CloseIO; output to a FIFO the test reads.
    let fin = h.path("e2.in");
    let fout = h.path("e2.out");
    mkfifo(&fin);
    mkfifo(&fout);
    c.exec(
        ctx(10),
        &exec_req(&h, "e2", &["cat"], fin.to_str().unwrap(), &fout),
    )
    .unwrap();
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fout)
        .unwrap();
    let e2 = start(c, &h.id, "e2") as i32;
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fin).unwrap();
    writer.write_all(b"typed\n").unwrap();
    let mut got = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut b = [0u8; 64];
            if let Ok(n) = std::io::Read::read(&mut reader, &mut b) {
                got.extend_from_slice(&b[..n]);
            }
            got == b"typed\n"
        }),
        "cat echoed its stdin: {got:?}"
    );
    assert!(alive(e2), "cat waits for more input");
    let mut close = CloseIORequest::new();
    close.id = h.id.clone();
    close.exec_id = "e2".into();
    close.stdin = true;
    c.close_io(ctx(10), &close).unwrap();
    assert_eq!(wait(c, &h.id, "e2").0, 0, "cat saw the end of its input");
    drop(writer);
    delete(c, &h.id, "e2").unwrap();

    // With a terminal: the terminal's output is copied to stdout.
    let tout = h.path("e3.out");
    let mut req = exec_req(&h, "e3", &["sh", "-c", "tty; echo tty-exec"], "", &tout);
    req.terminal = true;
    c.exec(ctx(10), &req).unwrap();
    let e3 = start(c, &h.id, "e3") as i32;
    let mut resize = ResizePtyRequest::new();
    resize.id = h.id.clone();
    resize.exec_id = "e3".into();
    resize.width = 80;
    resize.height = 24;
    // The process may be gone already: either way the request is understood.
    let _ = c.resize_pty(ctx(10), &resize);
    assert_eq!(wait(c, &h.id, "e3").0, 0);
    let text = std::fs::read_to_string(&tout).unwrap();
    assert!(
        text.starts_with("/dev/pts/") && text.ends_with("\r\ntty-exec\r\n"),
        "{text:?}"
    );
    delete(c, &h.id, "e3").unwrap();

    let mut pids = PidsRequest::new();
    pids.id = h.id.clone();
    let listed: Vec<u32> = c
        .pids(ctx(10), &pids)
        .unwrap()
        .processes
        .iter()
        .map(|p| p.pid)
        .collect();
    assert_eq!(listed, [init as u32]);

    let mut pause = PauseRequest::new();
    pause.id = h.id.clone();
    c.pause(ctx(10), &pause).unwrap();
    assert_eq!(state(c, &h.id, "").unwrap().0, Status::PAUSED);
    let mut resume = ResumeRequest::new();
    resume.id = h.id.clone();
    c.resume(ctx(10), &resume).unwrap();
    assert_eq!(state(c, &h.id, "").unwrap().0, Status::RUNNING);
    let mut stats = StatsRequest::new();
    stats.id = h.id.clone();
    let (code, msg) = code_of(c.stats(ctx(10), &stats).unwrap_err());
    assert_eq!(code, ttrpc::Code::UNIMPLEMENTED, "{msg}");

    // A running container can be neither deleted nor shut down under.
    assert_eq!(
        code_of(delete(c, &h.id, "").unwrap_err()).0,
        ttrpc::Code::FAILED_PRECONDITION
    );
    let mut sd = ShutdownRequest::new();
    sd.id = h.id.clone();
    assert_eq!(
        code_of(c.shutdown(ctx(10), &sd).unwrap_err()).0,
        ttrpc::Code::FAILED_PRECONDITION
    );

    report_rss(&h, "one running container, after three exec processes");
    kill_req(c, &h.id, "", 9).unwrap();
    assert_eq!(wait(c, &h.id, "").0, 128 + 9);
    assert_eq!(
        code_of(kill_req(c, &h.id, "", 9).unwrap_err()).0,
        ttrpc::Code::NOT_FOUND,
        "killing a finished process"
    );
    assert_eq!(delete(c, &h.id, "").unwrap(), 137);
    for pid in [init, e1, e2, e3] {
        assert!(!alive(pid), "pid {pid} is gone");
    }
    assert!(cgroup_dirs(&h.id).is_empty());
    assert_eq!(
        std::fs::read_to_string(&h.log).unwrap(),
        "",
        "sleep printed nothing"
    );
    shutdown(&h);
}

#[test]
fn a_tty_container_logs_one_stream_and_resizes() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new(
        "tty",
        &[
            "sh",
            "-c",
            "read x; stty size; echo got $x; echo to-stderr >&2",
        ],
        |s| s["process"]["terminal"] = true.into(),
    );
    h.launch();
    let fin = h.path("in");
    mkfifo(&fin);
    create(&h, fin.to_str().unwrap(), true).unwrap();
    let c = h.client();
    start(c, &h.id, "");
    let mut resize = ResizePtyRequest::new();
    resize.id = h.id.clone();
    resize.width = 100;
    resize.height = 30;
    c.resize_pty(ctx(10), &resize).unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fin).unwrap();
    writer.write_all(b"hi\n").unwrap();
    assert_eq!(wait(c, &h.id, "").0, 0);
    drop(writer);
    let recs = log_records(&h.log);
    assert!(
        recs.iter().all(|r| r.1 == "stdout" && r.2 == "F"),
        "{recs:?}"
    );
    let contents: Vec<&str> = recs.iter().map(|r| r.3.as_str()).collect();
    // The terminal echoes the input and ends lines with CR LF; the CR before LF is dropped,
    // as containerd's CRI logger drops it.
    assert_eq!(contents, ["hi", "30 100", "got hi", "to-stderr"]);
    delete(c, &h.id, "").unwrap();
    shutdown(&h);
}

#[test]
fn the_log_reopens_after_rotation_and_long_lines_split() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new(
        "reopen",
        &[
            "sh",
            "-c",
            "while read l; do echo \"$l\"; done; printf 'no newline at the end'",
        ],
        |_| {},
    );
    h.launch();
    let fin = h.path("in");
    mkfifo(&fin);
    create(&h, fin.to_str().unwrap(), false).unwrap();
    let c = h.client();
    start(c, &h.id, "");
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fin).unwrap();
    writer.write_all(b"one\n").unwrap();
    assert!(eventually(Duration::from_secs(10), || log_records(&h.log)
        .len()
        == 1));
    let rotated = h.log.with_extension("log.1");
    std::fs::rename(&h.log, &rotated).unwrap();
    let mut up = UpdateTaskRequest::new();
    up.id = h.id.clone();
    up.annotations
        .insert(REOPEN_LOG_ANNOTATION.into(), "true".into());
    c.update(ctx(10), &up).unwrap();
    let long = "x".repeat(16 * 1024 + 100);
    writer
        .write_all(format!("two\n{long}\n").as_bytes())
        .unwrap();
    drop(writer);
    assert_eq!(wait(c, &h.id, "").0, 0);
    let old: Vec<String> = log_records(&rotated).into_iter().map(|r| r.3).collect();
    assert_eq!(old, ["one"]);
    let new: Vec<(String, String)> = log_records(&h.log)
        .into_iter()
        .map(|r| (r.2, r.3))
        .collect();
    assert_eq!(
        new.len(),
        4,
        "{:?}",
        new.iter().map(|r| r.1.len()).collect::<Vec<_>>()
    );
    assert_eq!(new[0], ("F".into(), "two".into()));
    assert_eq!(new[1], ("P".into(), "x".repeat(16 * 1024)));
    assert_eq!(new[2], ("F".into(), "x".repeat(100)));
    // Output that ends without a newline stays partial, as containerd writes it.
    assert_eq!(new[3], ("P".into(), "no newline at the end".into()));
    delete(c, &h.id, "").unwrap();
    shutdown(&h);
}

#[test]
fn an_oom_kill_is_recorded() {
    if !can_run() {
        return;
    }
    // A shell variable of 64 MiB against a 32 MiB limit (this machine has no swap).
    let mut h = Harness::new(
        "oom",
        &[
            "sh",
            "-c",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
        ],
        |s| s["linux"]["resources"] = serde_json::json!({"memory": {"limit": 33554432}}),
    );
    h.launch();
    create(&h, "", false).unwrap();
    let c = h.client();
    start(c, &h.id, "");
    let (code, _) = wait(c, &h.id, "");
    assert_eq!(code, 137, "killed by SIGKILL");
    let rec = exit_record::read(&h.cfg.state_dir).unwrap().unwrap();
    assert!(rec.oom_killed, "{rec:?}");
    delete(c, &h.id, "").unwrap();
    shutdown(&h);
}

#[test]
fn a_failed_create_reports_the_runtime_error_and_leaves_nothing() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("fail", &["/bin/nope"], |_| {});
    h.launch();
    let (code, msg) = code_of(create(&h, "", false).unwrap_err());
    assert_eq!(code, ttrpc::Code::INTERNAL);
    assert!(msg.contains("bungeo-runtime create"), "{msg}");
    assert!(msg.contains("/bin/nope"), "{msg}");
    assert!(cgroup_dirs(&h.id).is_empty());
    let c = h.client();
    assert_eq!(
        code_of(state(c, &h.id, "").unwrap_err()).0,
        ttrpc::Code::NOT_FOUND
    );
    let (code, msg) = code_of(state(c, "other", "").unwrap_err());
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    assert!(msg.contains("this shim serves"), "{msg}");
    shutdown(&h);
}

#[test]
fn a_created_container_is_deleted_without_starting() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("created", &["sleep", "1000"], |_| {});
    h.launch();
    let pid = create(&h, "", false).unwrap() as i32;
    assert!(alive(pid));
    let c = h.client();
    assert_eq!(
        code_of(create(&h, "", false).unwrap_err()).0,
        ttrpc::Code::ALREADY_EXISTS
    );
    // Killed by the runtime at its start barrier: 128 + SIGKILL.
    assert_eq!(delete(c, &h.id, "").unwrap(), 137);
    assert!(!alive(pid));
    assert!(cgroup_dirs(&h.id).is_empty());
    assert_eq!(
        exit_record::read(&h.cfg.state_dir)
            .unwrap()
            .unwrap()
            .exit_code,
        137
    );
    // Nothing is left to supervise: the shim goes away by itself, Shutdown or not.
    assert!(h.shim_gone(), "the shim exits after the init's Delete");
    assert!(!h.cfg.socket.exists());
}

#[test]
fn a_second_shim_on_the_same_socket_is_refused() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("twice", &["true"], |_| {});
    h.launch();
    let e = bungeo_shim::launch::launch(&shim_bin(), &h.cfg).unwrap_err();
    assert!(e.to_string().contains("already serves"), "{e}");
    let mut other = h.cfg.clone();
    other.socket = h.path("other.sock");
    other.runtime = h.path("no-runtime");
    let e = bungeo_shim::launch::launch(&shim_bin(), &other).unwrap_err();
    assert!(e.to_string().contains("no-runtime: no such file"), "{e}");
    assert!(!other.socket.exists());
    shutdown(&h);
}
