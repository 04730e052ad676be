//! Device access rules, as the cgroup v1 devices controller applies them, and their
//! compilation to the eBPF program (`BPF_PROG_TYPE_CGROUP_DEVICE`) that enforces the same rules
//! on cgroup v2, which has no devices files.
//!
//! The rules of an OCI spec's `linux.resources.devices` are written one by one to a v1 cgroup's
//! `devices.allow` and `devices.deny`, and the kernel folds them into a default (allow or deny)
//! and a list of exceptions. [`DevicePolicy`] folds them the same way, so a container is
//! allowed exactly the same devices on a v1 or hybrid node (the kernel's own fold) and on a v2
//! node (this one, compiled).

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{Error, Result};

/// The device rules every container gets after its own, as libcgroups (and runc) add them:
/// the standard character devices, mknod of anything, the console, ptys and tun.
pub(crate) const DEFAULT_DEVICE_RULES: [&str; 12] = [
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 5:0 rwm",
    "c 1:9 rwm",
    "c 1:8 rwm",
    "c *:* m",
    "b *:* m",
    "c 5:1 rwm",
    "c 136:* rwm",
    "c 5:2 rwm",
    "c 10:200 rwm",
];

/// Access bits, with the kernel's values (`BPF_DEVCG_ACC_*`).
pub(crate) const MKNOD: u32 = 1;
pub(crate) const READ: u32 = 2;
pub(crate) const WRITE: u32 = 4;

/// Device kinds, with the kernel's values (`BPF_DEVCG_DEV_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Block = 1,
    Char = 2,
}

/// One rule as written to `devices.allow` or `devices.deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub allow: bool,
    /// `None`: `a`, every device (the rule then resets the policy, whatever else it says).
    pub kind: Option<Kind>,
    /// `None`: `*`.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u32,
}

fn access_bits(access: &str) -> Result<u32> {
    access.chars().try_fold(0, |bits, c| match c {
        'r' => Ok(bits | READ),
        'w' => Ok(bits | WRITE),
        'm' => Ok(bits | MKNOD),
        other => Err(Error::InvalidArgument(format!(
            "device cgroup access {access:?}: {other:?} is not r, w or m"
        ))),
    })
}

fn number(what: &str, n: Option<i64>) -> Result<Option<u32>> {
    n.map(|n| {
        u32::try_from(n).map_err(|_| {
            Error::InvalidArgument(format!("device cgroup {what} {n} is not a device number"))
        })
    })
    .transpose()
}

impl Rule {
    /// From an OCI spec rule; a missing type means `a`, a missing number `*`.
    pub fn from_oci(rule: &LinuxDeviceCgroup) -> Result<Rule> {
        let kind = match rule.typ().unwrap_or_default() {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(Kind::Block),
            LinuxDeviceType::C => Some(Kind::Char),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "device cgroup rule {rule}: type {} is not a, b or c",
                    other.as_str()
                )));
            }
        };
        Ok(Rule {
            allow: rule.allow(),
            kind,
            major: number("major", rule.major())?,
            minor: number("minor", rule.minor())?,
            access: access_bits(rule.access().as_deref().unwrap_or(""))?,
        })
    }

    /// From the `devices.allow` syntax (`c 1:3 rwm`, `b *:* m`).
    pub fn parse(allow: bool, text: &str) -> Result<Rule> {
        let bad = || Error::InvalidArgument(format!("device cgroup rule {text:?}"));
        let mut fields = text.split_whitespace();
        let kind = match fields.next().ok_or_else(bad)? {
            "a" => None,
            "b" => Some(Kind::Block),
            "c" => Some(Kind::Char),
            _ => return Err(bad()),
        };
        let (major, minor) = match fields.next() {
            Some(numbers) => numbers.split_once(':').ok_or_else(bad)?,
            None => ("*", "*"),
        };
        let num = |s: &str| -> Result<Option<u32>> {
            if s == "*" {
                Ok(None)
            } else {
                s.parse().map(Some).map_err(|_| bad())
            }
        };
        let rule = Rule {
            allow,
            kind,
            major: num(major)?,
            minor: num(minor)?,
            access: access_bits(fields.next().unwrap_or(""))?,
        };
        match fields.next() {
            Some(_) => Err(bad()),
            None => Ok(rule),
        }
    }
}

/// A device as a request names it: a kind, numbers, and the access wanted (the tests'
/// reference for what the program decides).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub kind: Kind,
    pub major: u32,
    pub minor: u32,
    pub access: u32,
}

/// An exception to the default: a kind, numbers (`None`: any) and the access it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exception {
    kind: Kind,
    major: Option<u32>,
    minor: Option<u32>,
    access: u32,
}

impl Exception {
    #[cfg(test)]
    fn covers_device(&self, r: &Request) -> bool {
        self.kind == r.kind
            && self.major.is_none_or(|m| m == r.major)
            && self.minor.is_none_or(|m| m == r.minor)
    }
}

/// What a cgroup's device rules come to, as the v1 controller folds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DevicePolicy {
    default_allow: bool,
    exceptions: Vec<Exception>,
}

impl DevicePolicy {
    /// Folds rules in order, as writing them to `devices.allow`/`devices.deny` one by one
    /// does (kernel `devcgroup_update_access`), starting from the parent's allow-all:
    /// - an `a` rule resets: its verdict becomes the default and every exception goes;
    /// - a rule against the default adds its access to the exception with the same kind and
    ///   numbers (creating it);
    /// - a rule agreeing with the default takes its access off that exact exception.
    pub fn fold(rules: impl IntoIterator<Item = Rule>) -> DevicePolicy {
        let mut policy = DevicePolicy {
            default_allow: true,
            exceptions: Vec::new(),
        };
        for rule in rules {
            let Some(kind) = rule.kind else {
                policy.default_allow = rule.allow;
                policy.exceptions.clear();
                continue;
            };
            let same =
                |e: &Exception| e.kind == kind && e.major == rule.major && e.minor == rule.minor;
            let existing = policy.exceptions.iter_mut().find(|e| same(e));
            if rule.allow != policy.default_allow {
                match existing {
                    Some(e) => e.access |= rule.access,
                    None => policy.exceptions.push(Exception {
                        kind,
                        major: rule.major,
                        minor: rule.minor,
                        access: rule.access,
                    }),
                }
            } else if let Some(e) = existing {
                e.access &= !rule.access;
            }
            policy.exceptions.retain(|e| e.access != 0);
        }
        policy
    }

    /// A container's policy: its own rules, then [`DEFAULT_DEVICE_RULES`], as the v1 path
    /// writes them.
    pub fn for_container(rules: &[LinuxDeviceCgroup]) -> Result<DevicePolicy> {
        let mut all = rules
            .iter()
            .map(Rule::from_oci)
            .collect::<Result<Vec<_>>>()?;
        for text in DEFAULT_DEVICE_RULES {
            all.push(Rule::parse(true, text)?);
        }
        Ok(DevicePolicy::fold(all))
    }

    /// Whether the request is allowed (kernel `devcgroup_legacy_check_permission`): under a
    /// deny default, one exception must cover all the access asked for; under an allow
    /// default, no exception may cover any of it. The reference the program is tested against.
    #[cfg(test)]
    pub fn permits(&self, r: &Request) -> bool {
        if self.default_allow {
            !self
                .exceptions
                .iter()
                .any(|e| e.covers_device(r) && e.access & r.access != 0)
        } else {
            self.exceptions
                .iter()
                .any(|e| e.covers_device(r) && r.access & !e.access == 0)
        }
    }

    /// The eBPF program deciding as [`DevicePolicy::permits`] does. It reads the kernel's
    /// `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` (`access_type`
    /// is the access bits << 16 | the kind) from r1 and returns 1 to allow, 0 to deny.
    pub fn program(&self) -> Vec<Insn> {
        let mut p = vec![
            Insn::load_u32(2, 1, 0),
            Insn::and_imm(2, 0xffff),
            Insn::load_u32(3, 1, 0),
            Insn::rsh_imm(3, 16),
            Insn::load_u32(4, 1, 4),
            Insn::load_u32(5, 1, 8),
        ];
        let verdict = i32::from(!self.default_allow);
        for e in &self.exceptions {
            // Each condition that fails jumps past this exception's two-instruction verdict.
            let mut block = vec![Insn::jne_imm(2, e.kind as i32)];
            if let Some(major) = e.major {
                block.push(Insn::jne_imm(4, major as i32));
            }
            if let Some(minor) = e.minor {
                block.push(Insn::jne_imm(5, minor as i32));
            }
            block.push(Insn::mov_reg(1, 3));
            block.push(Insn::and_imm(1, e.access as i32));
            if self.default_allow {
                // Denied when any access asked for is in the exception.
                block.push(Insn::jeq_imm(1, 0));
            } else {
                // Allowed when all of it is.
                block.push(Insn::jne_reg(1, 3));
            }
            let len = block.len();
            for (i, insn) in block.iter_mut().enumerate() {
                if insn.is_jump() {
                    insn.off = (len - i - 1 + 2) as i16;
                }
            }
            p.extend(block);
            p.push(Insn::mov_imm(0, verdict));
            p.push(Insn::exit());
        }
        p.push(Insn::mov_imm(0, i32::from(self.default_allow)));
        p.push(Insn::exit());
        p
    }
}

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u8,
    /// dst register in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61;
const ALU_AND_K: u8 = 0x54;
const ALU_RSH_K: u8 = 0x74;
const ALU_MOV_K: u8 = 0xb4;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JEQ_K: u8 = 0x15;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        }
    }
    fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(LDX_MEM_W, dst, src, off, 0)
    }
    fn and_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(ALU_AND_K, dst, 0, 0, imm)
    }
    fn rsh_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(ALU_RSH_K, dst, 0, 0, imm)
    }
    fn mov_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(ALU_MOV_K, dst, 0, 0, imm)
    }
    fn mov_reg(dst: u8, src: u8) -> Insn {
        Insn::new(ALU64_MOV_X, dst, src, 0, 0)
    }
    fn jeq_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(JMP_JEQ_K, dst, 0, 0, imm)
    }
    fn jne_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(JMP_JNE_K, dst, 0, 0, imm)
    }
    fn jne_reg(dst: u8, src: u8) -> Insn {
        Insn::new(JMP_JNE_X, dst, src, 0, 0)
    }
    fn exit() -> Insn {
        Insn::new(JMP_EXIT, 0, 0, 0, 0)
    }
    fn is_jump(&self) -> bool {
        matches!(self.code, JMP_JEQ_K | JMP_JNE_K | JMP_JNE_X)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    /// Runs `program` on a request the way the kernel would, for the opcodes
    /// [`DevicePolicy::program`] emits (and panics on any other: the test then fails).
    fn run(program: &[Insn], r: &Request) -> bool {
        let ctx = [(r.access << 16) | r.kind as u32, r.major, r.minor];
        let mut reg = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            let imm = i.imm as u32 as u64;
            let jump = |taken: bool, pc: &mut usize| {
                if taken {
                    *pc = (*pc as isize + i.off as isize) as usize;
                }
            };
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    reg[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                ALU_AND_K => reg[dst] = (reg[dst] as u32 & imm as u32) as u64,
                ALU_RSH_K => reg[dst] = ((reg[dst] as u32) >> imm) as u64,
                ALU_MOV_K => reg[dst] = imm,
                ALU64_MOV_X => reg[dst] = reg[src],
                JMP_JEQ_K => jump(reg[dst] == imm, &mut pc),
                JMP_JNE_K => jump(reg[dst] != imm, &mut pc),
                JMP_JNE_X => jump(reg[dst] != reg[src], &mut pc),
                JMP_EXIT => return reg[0] == 1,
                other => panic!("opcode {other:#x} not emitted"),
            }
        }
    }

    fn rules(list: &[(bool, &str)]) -> Vec<Rule> {
        list.iter()
            .map(|(allow, text)| Rule::parse(*allow, text).expect("rule"))
            .collect()
    }

    fn req(kind: Kind, major: u32, minor: u32, access: u32) -> Request {
        Request {
            kind,
            major,
            minor,
            access,
        }
    }

    /// Every request over a small space of devices and accesses, decided by the fold and by
    /// the compiled program, which must agree.
    fn agree(policy: &DevicePolicy) {
        let program = policy.program();
        for kind in [Kind::Block, Kind::Char] {
            for major in [0, 1, 5, 8, 136] {
                for minor in [0, 1, 3, 5, 9] {
                    for access in 1..8 {
                        let r = req(kind, major, minor, access);
                        assert_eq!(
                            run(&program, &r),
                            policy.permits(&r),
                            "{r:?} under {policy:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn what_kubelet_and_the_defaults_give_a_container() {
        let deny_all = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .expect("deny all");
        let policy = DevicePolicy::for_container(&[deny_all]).expect("policy");
        agree(&policy);
        let allowed = |k, ma, mi, a| policy.permits(&req(k, ma, mi, a));
        assert!(allowed(Kind::Char, 1, 3, READ | WRITE), "/dev/null");
        assert!(allowed(Kind::Char, 136, 4, READ | WRITE), "a pty");
        assert!(allowed(Kind::Block, 8, 0, MKNOD), "mknod of anything");
        assert!(!allowed(Kind::Block, 8, 0, READ), "the host's disk");
        assert!(!allowed(Kind::Char, 1, 1, READ), "/dev/mem");
        assert!(!allowed(Kind::Char, 1, 11, READ), "/dev/kmsg");
        assert!(
            !allowed(Kind::Char, 1, 3, READ | 8),
            "no access bit beyond rwm"
        );
    }

    #[test]
    fn a_privileged_container_may_use_every_device() {
        let allow_all = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()
            .expect("allow all");
        let policy = DevicePolicy::for_container(&[allow_all]).expect("policy");
        assert!(policy.default_allow);
        assert!(policy.exceptions.is_empty());
        assert_eq!(policy.program().len(), 8, "loads, then return 1");
        agree(&policy);
    }

    #[test]
    fn rules_fold_as_the_v1_controller_folds_them() {
        // Accesses granted in two rules add up on the same device.
        let p = DevicePolicy::fold(rules(&[(false, "a"), (true, "c 1:3 r"), (true, "c 1:3 w")]));
        assert!(p.permits(&req(Kind::Char, 1, 3, READ | WRITE)));
        agree(&p);
        // A deny takes access off the exact exception only, not off a wider one.
        let p = DevicePolicy::fold(rules(&[
            (false, "a"),
            (true, "c 1:* rw"),
            (true, "c 1:3 rw"),
            (false, "c 1:3 w"),
        ]));
        assert!(p.permits(&req(Kind::Char, 1, 3, READ)));
        assert!(
            p.permits(&req(Kind::Char, 1, 3, WRITE)),
            "c 1:* still covers it"
        );
        agree(&p);
        // Under an allow default, denies are exceptions that any overlap triggers.
        let p = DevicePolicy::fold(rules(&[(false, "b 8:* w"), (false, "c 1:1 rwm")]));
        assert!(p.default_allow);
        assert!(!p.permits(&req(Kind::Block, 8, 1, READ | WRITE)));
        assert!(p.permits(&req(Kind::Block, 8, 1, READ)));
        assert!(!p.permits(&req(Kind::Char, 1, 1, MKNOD)));
        assert!(p.permits(&req(Kind::Char, 1, 3, READ | WRITE | MKNOD)));
        agree(&p);
        // An `a` rule wipes everything before it.
        let p = DevicePolicy::fold(rules(&[(true, "c 1:1 r"), (false, "a *:* rwm")]));
        assert_eq!(
            p,
            DevicePolicy {
                default_allow: false,
                exceptions: Vec::new()
            }
        );
        agree(&p);
    }

    #[test]
    fn random_rule_lists_compile_to_what_they_fold_to() {
        // A small deterministic generator: the same lists on every run.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..300 {
            let count = next(8);
            let mut list = Vec::new();
            for _ in 0..count {
                let kind = ["a", "b", "c", "c"][next(4) as usize];
                let num = |n: u64| match n {
                    0 => "*".to_string(),
                    n => [0, 1, 5, 8, 136][(n - 1) as usize].to_string(),
                };
                let access: String = ["r", "w", "m"]
                    .iter()
                    .filter(|_| next(2) == 1)
                    .copied()
                    .collect();
                let text = format!("{kind} {}:{} {access}", num(next(6)), num(next(6)));
                list.push(Rule::parse(next(2) == 1, &text).expect("rule"));
            }
            agree(&DevicePolicy::fold(list));
        }
    }

    #[test]
    fn rules_outside_the_controllers_vocabulary_are_refused() {
        for text in ["x 1:3 r", "c 1 r", "c 1:3 rx", "c -1:3 r", "c 1:3 r extra"] {
            assert!(Rule::parse(true, text).is_err(), "{text}");
        }
        let fifo = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::P)
            .access("rw")
            .build()
            .expect("fifo rule");
        let err = DevicePolicy::for_container(&[fifo]).expect_err("p is not a cgroup type");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        let negative = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(-1i64)
            .access("r")
            .build()
            .expect("negative major");
        assert!(DevicePolicy::for_container(&[negative]).is_err());
    }

    #[test]
    fn a_missing_access_grants_nothing_as_on_v1() {
        let p = DevicePolicy::fold(rules(&[(false, "a"), (true, "c 1:3")]));
        assert!(!p.permits(&req(Kind::Char, 1, 3, READ)));
        agree(&p);
    }
}
