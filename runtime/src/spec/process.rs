//! The container process: arguments from the CRI command/args and the image's ENTRYPOINT/CMD,
//! the environment, and the working directory.

use k8s_cri::v1::{ContainerConfig, KeyValue};
use serde::Deserialize;

/// PATH containerd puts first in every container's environment.
pub(super) const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an OCI image config that shape the process.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(super) struct ImageConfig {
    #[serde(rename = "User", deserialize_with = "null_as_default")]
    pub user: String,
    #[serde(rename = "Env", deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    #[serde(rename = "WorkingDir", deserialize_with = "null_as_default")]
    pub working_dir: String,
}

/// Image configs written by Docker carry `null` for absent lists.
fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ImageConfig {
    /// Reads the image config from the full OCI image config JSON (`{"config": {...}}`) or from
    /// its inner `config` object; `null` means an image without config.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Self, String> {
        let inner = match v {
            serde_json::Value::Null => return Ok(Self::default()),
            serde_json::Value::Object(o) => match o.get("config") {
                Some(serde_json::Value::Null) => return Ok(Self::default()),
                Some(c) => c,
                None if o.contains_key("rootfs") || o.contains_key("architecture") => {
                    return Ok(Self::default());
                }
                None => v,
            },
            _ => return Err("expected a JSON object".to_string()),
        };
        Self::deserialize(inner).map_err(|e| e.to_string())
    }
}

/// The process arguments by containerd's rules: a CRI command replaces the image ENTRYPOINT and
/// drops its CMD; CRI args alone replace the CMD; neither keeps ENTRYPOINT + CMD. An ENTRYPOINT
/// of exactly `[""]` means "no entrypoint" (how `docker build` records `ENTRYPOINT []`).
pub(super) fn args(
    c: &ContainerConfig,
    image: &ImageConfig,
) -> std::result::Result<Vec<String>, String> {
    let mut command = c.command.clone();
    let mut args = c.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone();
        }
        if !(image.entrypoint.len() == 1 && image.entrypoint[0].is_empty()) {
            command = image.entrypoint.clone();
        }
    }
    if command.is_empty() && args.is_empty() {
        return Err("no command specified".to_string());
    }
    command.extend(args);
    Ok(command)
}

/// Refuses NUL bytes in the command, arguments, working directory and environment: execve
/// cannot pass them, so the runtime would fail at create with an opaque error.
pub(super) fn check_no_nul(c: &ContainerConfig) -> std::result::Result<(), String> {
    let strings = c
        .command
        .iter()
        .chain(&c.args)
        .map(|s| ("command and args", s.as_str()))
        .chain(std::iter::once(("working_dir", c.working_dir.as_str())))
        .chain(
            c.envs
                .iter()
                .flat_map(|kv| [("envs", kv.key.as_str()), ("envs", kv.value.as_str())]),
        );
    for (what, s) in strings {
        if s.contains('\0') {
            return Err(format!(
                "{what} contain a NUL byte: {:?}",
                s.get(..64).unwrap_or(s)
            ));
        }
    }
    Ok(())
}

/// The working directory: the CRI one, else the image's, else `/`.
pub(super) fn cwd(
    c: &ContainerConfig,
    image: &ImageConfig,
) -> std::result::Result<std::path::PathBuf, String> {
    let dir = if !c.working_dir.is_empty() {
        c.working_dir.as_str()
    } else if !image.working_dir.is_empty() {
        image.working_dir.as_str()
    } else {
        "/"
    };
    // The runtime would refuse a relative cwd at start; say so at create.
    if !dir.starts_with('/') {
        return Err(format!("working directory {dir:?} is not an absolute path"));
    }
    Ok(dir.into())
}

/// The environment in containerd's order: the default PATH, `TERM=xterm` with a TTY, HOSTNAME,
/// the image's variables, then the CRI ones. A later value for a key replaces the earlier one in
/// place (containerd 1.6 keeps both when the image and the CRI set the same key, so the
/// process's getenv sees the image's; bungeo lets the CRI win); an entry without `=` unsets the
/// key. HOME is added from the user's passwd entry when nothing set it, as runc does at exec.
pub(super) fn env(
    hostname: &str,
    tty: bool,
    image_env: &[String],
    cri_env: &[KeyValue],
    home: &str,
) -> Vec<String> {
    let mut env = EnvList::default();
    env.apply(DEFAULT_PATH_ENV);
    if tty {
        env.apply("TERM=xterm");
    }
    env.apply(&format!("HOSTNAME={hostname}"));
    for e in image_env {
        env.apply(e);
    }
    for kv in cri_env {
        env.apply(&format!("{}={}", kv.key, kv.value));
    }
    if !env.contains("HOME") {
        env.apply(&format!("HOME={home}"));
    }
    env.into_vec()
}

/// An ordered environment where each key appears once.
#[derive(Default)]
struct EnvList {
    entries: Vec<Option<String>>,
    index: std::collections::HashMap<String, usize>,
}

impl EnvList {
    fn apply(&mut self, entry: &str) {
        match entry.split_once('=') {
            Some((key, _)) => match self.index.get(key) {
                Some(&i) => self.entries[i] = Some(entry.to_string()),
                None => {
                    self.index.insert(key.to_string(), self.entries.len());
                    self.entries.push(Some(entry.to_string()));
                }
            },
            None => {
                if let Some(i) = self.index.remove(entry) {
                    self.entries[i] = None;
                }
            }
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    fn into_vec(self) -> Vec<String> {
        self.entries.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn config(command: &[&str], args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_replaces_entrypoint_and_cmd() {
        let img = image(&["/entry"], &["cmd-arg"]);
        assert_eq!(
            args(&config(&["/bin/sh"], &[]), &img).unwrap(),
            strs(&["/bin/sh"])
        );
        assert_eq!(
            args(&config(&["/bin/sh"], &["-c", "true"]), &img).unwrap(),
            strs(&["/bin/sh", "-c", "true"])
        );
    }

    #[test]
    fn args_alone_replace_cmd_and_keep_entrypoint() {
        let img = image(&["/entry", "e1"], &["cmd-arg"]);
        assert_eq!(
            args(&config(&[], &["a1", "a2"]), &img).unwrap(),
            strs(&["/entry", "e1", "a1", "a2"])
        );
    }

    #[test]
    fn neither_uses_entrypoint_then_cmd() {
        let img = image(&["/entry"], &["c1", "c2"]);
        assert_eq!(
            args(&config(&[], &[]), &img).unwrap(),
            strs(&["/entry", "c1", "c2"])
        );
        let img = image(&[], &["/bin/sh"]);
        assert_eq!(args(&config(&[], &[]), &img).unwrap(), strs(&["/bin/sh"]));
    }

    #[test]
    fn empty_string_entrypoint_counts_as_none() {
        let img = image(&[""], &["/bin/date"]);
        assert_eq!(args(&config(&[], &[]), &img).unwrap(), strs(&["/bin/date"]));
        let img = image(&[""], &[]);
        assert_eq!(
            args(&config(&[], &[]), &img).unwrap_err(),
            "no command specified"
        );
    }

    #[test]
    fn nul_bytes_are_refused() {
        assert!(check_no_nul(&config(&["sh"], &["-c", "true"])).is_ok());
        assert!(check_no_nul(&config(&["sh\0x"], &[])).is_err());
        assert!(check_no_nul(&config(&["sh"], &["a\0"])).is_err());
        let mut c = config(&["sh"], &[]);
        c.envs = vec![KeyValue {
            key: "A\0".into(),
            value: "v".into(),
        }];
        assert!(check_no_nul(&c).is_err());
        c.envs[0].key = "A".into();
        c.envs[0].value = "x\0y".into();
        assert!(check_no_nul(&c).is_err());
    }

    #[test]
    fn nothing_at_all_is_an_error() {
        let err = args(&config(&[], &[]), &ImageConfig::default()).unwrap_err();
        assert_eq!(err, "no command specified");
    }

    #[test]
    fn cwd_prefers_cri_then_image_then_root() {
        let mut img = ImageConfig {
            working_dir: "/img".into(),
            ..Default::default()
        };
        let mut c = config(&["x"], &[]);
        assert_eq!(cwd(&c, &img).unwrap(), std::path::PathBuf::from("/img"));
        c.working_dir = "/cri".into();
        assert_eq!(cwd(&c, &img).unwrap(), std::path::PathBuf::from("/cri"));
        c.working_dir.clear();
        img.working_dir.clear();
        assert_eq!(cwd(&c, &img).unwrap(), std::path::PathBuf::from("/"));
        c.working_dir = "relative".into();
        assert!(cwd(&c, &img).unwrap_err().contains("not an absolute path"));
    }

    #[test]
    fn env_order_and_override() {
        let image_env = strs(&["PATH=/img/bin", "A=image", "B=image"]);
        let cri = vec![
            KeyValue {
                key: "A".into(),
                value: "cri".into(),
            },
            KeyValue {
                key: "C".into(),
                value: "x=y".into(),
            },
            KeyValue {
                key: "A".into(),
                value: "cri2".into(),
            },
        ];
        let got = env("pod-host", false, &image_env, &cri, "/root");
        assert_eq!(
            got,
            strs(&[
                "PATH=/img/bin",
                "HOSTNAME=pod-host",
                "A=cri2",
                "B=image",
                "C=x=y",
                "HOME=/root"
            ])
        );
    }

    #[test]
    fn env_keeps_home_when_set_and_supports_unset() {
        let image_env = strs(&["HOME=/custom", "DROP=1", "DROP"]);
        let got = env("h", false, &image_env, &[], "/root");
        assert_eq!(got, strs(&[DEFAULT_PATH_ENV, "HOSTNAME=h", "HOME=/custom"]));
        let got = env("h", true, &strs(&["PATH=/x"]), &[], "/");
        assert_eq!(
            got,
            strs(&["PATH=/x", "TERM=xterm", "HOSTNAME=h", "HOME=/"])
        );
    }

    #[test]
    fn image_config_accepts_full_or_inner_or_null_fields() {
        let full = json!({"architecture": "amd64", "config": {"Env": ["A=1"], "Cmd": ["sh"], "Entrypoint": null, "User": "nobody", "WorkingDir": "/w"}});
        let c = ImageConfig::from_json(&full).unwrap();
        assert_eq!(c.env, strs(&["A=1"]));
        assert_eq!(c.cmd, strs(&["sh"]));
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.user, "nobody");
        assert_eq!(c.working_dir, "/w");
        let inner = json!({"Cmd": ["x"]});
        assert_eq!(ImageConfig::from_json(&inner).unwrap().cmd, strs(&["x"]));
        assert_eq!(
            ImageConfig::from_json(&json!({"architecture": "amd64", "rootfs": {}})).unwrap(),
            ImageConfig::default()
        );
        assert_eq!(
            ImageConfig::from_json(&serde_json::Value::Null).unwrap(),
            ImageConfig::default()
        );
        assert!(ImageConfig::from_json(&json!({"config": {"Cmd": "not-a-list"}})).is_err());
        assert!(ImageConfig::from_json(&json!([1])).is_err());
    }
}
