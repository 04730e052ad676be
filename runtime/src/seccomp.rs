//! Seccomp filters from the OCI spec, compiled with libseccomp the way runc does: unknown
//! syscall names are skipped, rules whose action is the default action are dropped, and
//! conditions on one argument index given more than once become separate (ORed) rules.
//!
//! The filter leaves no_new_privs alone (libseccomp would set it by default): the caller sets
//! it when the spec asks for it. Without no_new_privs, loading needs CAP_SYS_ADMIN, so a
//! container that drops it must load the filter before dropping capabilities.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

use crate::error::{Error, Result};

/// Syscalls take at most six arguments.
const MAX_ARGS: usize = 6;

fn arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

/// The libseccomp action for an OCI action; ERRNO and TRACE return EPERM unless told
/// otherwise, as in runc.
fn action(a: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<ScmpAction> {
    let ret = || -> Result<u16> {
        let value = errno_ret.unwrap_or(libc::EPERM as u32);
        u16::try_from(value).map_err(|_| {
            Error::InvalidSpec(format!(
                "seccomp errnoRet {value} for {a} does not fit in 16 bits"
            ))
        })
    };
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(i32::from(ret()?)),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(ret()?),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Unsupported(
                "seccomp action SCMP_ACT_NOTIFY needs a seccomp agent (listenerPath), \
                 which bungeo does not support"
                    .to_string(),
            ));
        }
    })
}

fn condition(arg: &LinuxSeccompArg) -> Result<ScmpArgCompare> {
    if arg.index() >= MAX_ARGS {
        return Err(Error::InvalidSpec(format!(
            "seccomp argument index {} is out of range 0..{MAX_ARGS}",
            arg.index()
        )));
    }
    let (op, datum) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, arg.value()),
        // OCI puts the mask in `value` and the expected result in `valueTwo`.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            ScmpCompareOp::MaskedEqual(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    // The index is below MAX_ARGS, so it fits.
    Ok(ScmpArgCompare::new(arg.index() as u32, op, datum))
}

fn seccomp_err(what: String) -> impl FnOnce(libseccomp::error::SeccompError) -> Error {
    move |e| Error::Seccomp(format!("{what}: {e}"))
}

/// Builds the filter the spec describes, without loading it.
pub fn compile(s: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let default = action(s.default_action(), s.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(seccomp_err(format!(
        "create filter with default {default:?}"
    )))?;
    ctx.set_ctl_nnp(false)
        .map_err(seccomp_err("leave no_new_privs to the caller".into()))?;

    for a in s.architectures().iter().flatten() {
        ctx.add_arch(arch(*a))
            .map_err(seccomp_err(format!("add architecture {a:?}")))?;
    }
    for flag in s.flags().iter().flatten() {
        let result = match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => ctx.set_ctl_waitkill(true),
        };
        result.map_err(seccomp_err(format!("set filter flag {flag}")))?;
    }

    for rule in s.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            tracing::debug!(syscalls = ?rule.names(), "seccomp rule has the default action: skipped");
            continue;
        }
        let args = rule.args().as_deref().unwrap_or_default();
        let conditions = args.iter().map(condition).collect::<Result<Vec<_>>>()?;
        let mut per_index = [0usize; MAX_ARGS];
        for arg in args {
            per_index[arg.index()] += 1;
        }
        // libseccomp ANDs a rule's conditions and cannot AND two on one argument; runc ORs
        // them by adding one rule per condition.
        let separate = per_index.iter().any(|n| *n > 1);

        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                tracing::debug!(syscall = %name, "seccomp: syscall unknown to libseccomp: skipped");
                continue;
            };
            let what = || format!("add seccomp rule {act:?} for {name} with {args:?}");
            if separate {
                for cond in &conditions {
                    ctx.add_rule_conditional(act, syscall, std::slice::from_ref(cond))
                        .map_err(seccomp_err(what()))?;
                }
            } else {
                ctx.add_rule_conditional(act, syscall, &conditions)
                    .map_err(seccomp_err(what()))?;
            }
        }
    }
    Ok(ctx)
}

/// Compiles the filter and loads it into the calling thread (all threads with the TSYNC flag).
pub fn load(s: &LinuxSeccomp) -> Result<()> {
    let ctx = compile(s)?;
    ctx.load().map_err(|e| {
        Error::Seccomp(format!(
            "load filter: {e} (without no_new_privs, loading needs CAP_SYS_ADMIN)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::forked::in_forked_child;
    use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder};
    use std::io::{Read, Seek};

    fn rule(names: &[&str], act: LinuxSeccompAction, errno: Option<u32>) -> LinuxSyscallBuilder {
        let b = LinuxSyscallBuilder::default()
            .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .action(act);
        match errno {
            Some(e) => b.errno_ret(e),
            None => b,
        }
    }

    fn arg(
        index: usize,
        op: LinuxSeccompOperator,
        value: u64,
        two: Option<u64>,
    ) -> LinuxSeccompArg {
        let b = LinuxSeccompArgBuilder::default()
            .index(index)
            .op(op)
            .value(value);
        match two {
            Some(v) => b.value_two(v).build(),
            None => b.build(),
        }
        .expect("arg")
    }

    fn pfc(ctx: &ScmpFilterContext) -> String {
        let mut file = tempfile::tempfile().expect("tempfile");
        ctx.export_pfc(&file).expect("export pfc");
        file.rewind().expect("rewind");
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read pfc");
        text
    }

    /// The PFC text between a syscall's header comment and the next syscall's.
    fn section<'a>(pfc: &'a str, name: &str) -> &'a str {
        let start = pfc
            .find(&format!("# filter for syscall \"{name}\""))
            .unwrap_or_else(|| panic!("{name} missing from\n{pfc}"));
        let rest = &pfc[start + 1..];
        let end = rest.find("# filter for syscall").unwrap_or(rest.len());
        &pfc[start..start + 1 + end]
    }

    fn profile() -> LinuxSeccomp {
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .default_errno_ret(38u32)
            .architectures(vec![
                Arch::ScmpArchX86_64,
                Arch::ScmpArchX86,
                Arch::ScmpArchX32,
            ])
            .syscalls(vec![
                rule(
                    &["read", "write", "no_such_syscall"],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                )
                .build()
                .expect("rule"),
                rule(&["mkdir"], LinuxSeccompAction::ScmpActErrno, Some(13))
                    .build()
                    .expect("rule"),
                // Same action as the default: dropped, as runc does.
                rule(&["rmdir"], LinuxSeccompAction::ScmpActErrno, Some(38))
                    .build()
                    .expect("rule"),
                rule(&["personality"], LinuxSeccompAction::ScmpActAllow, None)
                    .args(vec![arg(
                        0,
                        LinuxSeccompOperator::ScmpCmpMaskedEq,
                        0xff,
                        Some(8),
                    )])
                    .build()
                    .expect("rule"),
                rule(&["kill"], LinuxSeccompAction::ScmpActKillProcess, None)
                    .args(vec![
                        arg(0, LinuxSeccompOperator::ScmpCmpEq, 1, None),
                        arg(1, LinuxSeccompOperator::ScmpCmpGt, 9, None),
                    ])
                    .build()
                    .expect("rule"),
                rule(&["setns"], LinuxSeccompAction::ScmpActTrap, None)
                    .args(vec![
                        arg(1, LinuxSeccompOperator::ScmpCmpEq, 0x4000_0000, None),
                        arg(1, LinuxSeccompOperator::ScmpCmpEq, 0x2000_0000, None),
                    ])
                    .build()
                    .expect("rule"),
                rule(&["uname"], LinuxSeccompAction::ScmpActLog, None)
                    .build()
                    .expect("rule"),
                rule(&["ptrace"], LinuxSeccompAction::ScmpActTrace, Some(3))
                    .build()
                    .expect("rule"),
                rule(&["reboot"], LinuxSeccompAction::ScmpActKill, None)
                    .build()
                    .expect("rule"),
            ])
            .build()
            .expect("profile")
    }

    #[test]
    fn compile_translates_actions_conditions_and_architectures() {
        let ctx = compile(&profile()).expect("compile");
        assert!(
            !ctx.get_ctl_nnp().expect("nnp attr"),
            "no_new_privs must be left to the caller"
        );
        assert_eq!(
            ctx.get_act_default().expect("default"),
            ScmpAction::Errno(38)
        );
        for a in [ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32] {
            assert!(ctx.is_arch_present(a).expect("arch"), "{a:?} missing");
        }
        let text = pfc(&ctx);
        assert!(section(&text, "read").contains("ALLOW"), "{text}");
        assert!(section(&text, "mkdir").contains("ERRNO(13)"), "{text}");
        assert!(
            !text.contains("\"rmdir\""),
            "default-action rule kept:\n{text}"
        );
        let personality = section(&text, "personality");
        assert!(
            personality.contains("$a0.lo32 & 0x000000ff == 8"),
            "{personality}"
        );
        let kill = section(&text, "kill");
        assert!(kill.contains("KILL_PROCESS"), "{kill}");
        assert!(kill.contains("$a0") && kill.contains("$a1"), "{kill}");
        let setns = section(&text, "setns");
        // Two conditions on one argument: two ORed rules, each with its own action.
        assert!(
            setns.contains("== 1073741824") && setns.contains("== 536870912"),
            "{setns}"
        );
        assert_eq!(setns.matches("action TRAP").count(), 2, "{setns}");
        assert!(section(&text, "uname").contains("LOG"), "{text}");
        assert!(section(&text, "ptrace").contains("TRACE(3)"), "{text}");
        assert!(section(&text, "reboot").contains("KILL"), "{text}");
    }

    #[test]
    fn compile_rejects_what_cannot_be_honoured() {
        let notify = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![
                rule(&["mkdir"], LinuxSeccompAction::ScmpActNotify, None)
                    .build()
                    .expect("rule"),
            ])
            .build()
            .expect("profile");
        assert!(matches!(compile(&notify), Err(Error::Unsupported(_))));

        let big_errno = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .default_errno_ret(70000u32)
            .build()
            .expect("profile");
        let err = compile(&big_errno).expect_err("errno too big");
        assert!(err.to_string().contains("70000"), "{err}");

        let bad_index = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![
                rule(&["kill"], LinuxSeccompAction::ScmpActErrno, None)
                    .args(vec![arg(6, LinuxSeccompOperator::ScmpCmpEq, 1, None)])
                    .build()
                    .expect("rule"),
            ])
            .build()
            .expect("profile");
        assert!(matches!(compile(&bad_index), Err(Error::InvalidSpec(_))));
    }

    #[test]
    fn errno_defaults_to_eperm() {
        assert_eq!(
            action(LinuxSeccompAction::ScmpActErrno, None).expect("action"),
            ScmpAction::Errno(libc::EPERM)
        );
        assert_eq!(
            action(LinuxSeccompAction::ScmpActTrace, None).expect("action"),
            ScmpAction::Trace(libc::EPERM as u16)
        );
    }

    #[test]
    fn loaded_filter_makes_mkdir_fail_with_eperm() {
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![
                rule(
                    &["mkdir", "mkdirat"],
                    LinuxSeccompAction::ScmpActErrno,
                    None,
                )
                .build()
                .expect("rule"),
            ])
            .build()
            .expect("profile");
        let tmp = tempfile::tempdir().expect("tempdir");
        let before = tmp.path().join("before");
        let after = tmp.path().join("after");
        let out = in_forked_child(|| {
            std::fs::create_dir(&before).map_err(|e| format!("mkdir before load: {e}"))?;
            load(&profile).map_err(|e| e.to_string())?;
            let errno = match std::fs::create_dir(&after) {
                Ok(()) => return Err("mkdir succeeded under the filter".into()),
                Err(e) => e.raw_os_error(),
            };
            let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
            let nnp = status
                .lines()
                .find_map(|l| l.strip_prefix("NoNewPrivs:"))
                .map(str::trim)
                .unwrap_or("?")
                .to_string();
            Ok(format!("{errno:?} nnp={nnp}"))
        })
        .expect("child");
        assert_eq!(out, format!("Some({}) nnp=0", libc::EPERM));
        assert!(before.is_dir());
        assert!(!after.exists());
        // The parent is not filtered.
        std::fs::create_dir(&after).expect("mkdir in the parent");
    }
}
