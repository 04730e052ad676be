//! Network config lists: finding the file to use in a config directory, parsing `.conflist`
//! files and wrapping a single-plugin `.conf` into a list, as libcni and go-cni do.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{SUPPORTED_VERSIONS, version_tuple};
use crate::error::{Error, Result};

/// File extensions read as network configs, as libcni's `ConfFiles` lists them.
pub const CONF_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// One plugin of a network: its `type` (the binary's name), the capabilities it declares, and
/// its config object as written.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    pub plugin_type: String,
    /// Capabilities declared `true` in the plugin's `capabilities` object.
    pub capabilities: Vec<String>,
    pub raw: Map<String, Value>,
}

/// A parsed network config list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    /// The version the plugins are called with (the highest of `cniVersions` bungeo speaks,
    /// or `cniVersion`).
    pub cni_version: String,
    pub disable_check: bool,
    pub plugins: Vec<PluginConf>,
    /// The list as JSON text; a `.conf` appears wrapped. Kept so a later DEL uses exactly
    /// what ADD used, whatever happens to the file.
    pub bytes: String,
}

impl NetworkList {
    /// Parses a config list (`.conflist` content); `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<NetworkList> {
        let invalid = |message: String| Error::CniConfig(format!("{source}: {message}"));
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
        let Value::Object(list) = value else {
            return Err(invalid("not a JSON object".to_owned()));
        };
        let name = string_field(&list, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("no network \"name\"".to_owned()))?;
        let cni_version = pick_version(&list).map_err(invalid)?;
        let disable_check = match list.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            // libcni accepts the string forms too.
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(other) => return Err(invalid(format!("disableCheck {other} is not a boolean"))),
        };
        let Some(Value::Array(raw_plugins)) = list.get("plugins") else {
            return Err(invalid("no \"plugins\" array".to_owned()));
        };
        if raw_plugins.is_empty() {
            return Err(invalid("the \"plugins\" array is empty".to_owned()));
        }
        let mut plugins = Vec::with_capacity(raw_plugins.len());
        for (i, plugin) in raw_plugins.iter().enumerate() {
            let Value::Object(raw) = plugin else {
                return Err(invalid(format!("plugins[{i}] is not an object")));
            };
            plugins.push(plugin_conf(raw).map_err(|m| invalid(format!("plugins[{i}]: {m}")))?);
        }
        Ok(NetworkList {
            name,
            cni_version,
            disable_check,
            plugins,
            bytes: text.to_owned(),
        })
    }

    /// Wraps a single-plugin config (`.conf` content) into a list of that one plugin, as
    /// libcni's `ConfListFromConf` does.
    pub fn from_conf(text: &str, source: &str) -> Result<NetworkList> {
        let invalid = |message: String| Error::CniConfig(format!("{source}: {message}"));
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
        let Value::Object(conf) = value else {
            return Err(invalid("not a JSON object".to_owned()));
        };
        // Somebody put a list into a .conf file: read it as one.
        if conf.contains_key("plugins") {
            return Self::parse(text, source);
        }
        let mut list = Map::new();
        for key in ["cniVersion", "cniVersions", "name", "disableCheck"] {
            if let Some(v) = conf.get(key) {
                list.insert(key.to_owned(), v.clone());
            }
        }
        list.insert(
            "plugins".to_owned(),
            Value::Array(vec![Value::Object(conf)]),
        );
        let wrapped = Value::Object(list).to_string();
        Self::parse(&wrapped, source)
    }
}

fn string_field(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The version to call the plugins with: the highest supported entry of `cniVersions`
/// (CNI 1.1.0), or `cniVersion`.
fn pick_version(list: &Map<String, Value>) -> std::result::Result<String, String> {
    if let Some(Value::Array(versions)) = list.get("cniVersions") {
        let best = versions
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .max_by_key(|v| version_tuple(v));
        if let Some(best) = best {
            return Ok(best.to_owned());
        }
    }
    let version = string_field(list, "cniVersion").ok_or_else(|| "no \"cniVersion\"".to_owned())?;
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(format!(
            "cniVersion {version:?} is not supported (bungeo speaks {})",
            SUPPORTED_VERSIONS.join(", ")
        ));
    }
    Ok(version)
}

fn plugin_conf(raw: &Map<String, Value>) -> std::result::Result<PluginConf, String> {
    let plugin_type = string_field(raw, "type").unwrap_or_default();
    // The type is a file name in the plugin directories.
    if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type.starts_with('.') {
        return Err(format!("invalid plugin \"type\" {plugin_type:?}"));
    }
    let capabilities = match raw.get("capabilities") {
        Some(Value::Object(caps)) => caps
            .iter()
            .filter(|(_, v)| v.as_bool() == Some(true))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => Vec::new(),
    };
    Ok(PluginConf {
        plugin_type,
        capabilities,
        raw: raw.clone(),
    })
}

/// The config files of `dir` in the order they are considered: lexical, with the extensions
/// of [`CONF_EXTENSIONS`], hidden files (temporary files being written) left out. A missing
/// directory has none.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read CNI config directory", dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read CNI config directory", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let wanted = !name.starts_with('.')
            && Path::new(name.as_ref())
                .extension()
                .is_some_and(|ext| CONF_EXTENSIONS.iter().any(|e| ext == *e));
        // A symlinked file counts; a directory does not.
        if wanted && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// The network of the lexically first config file of `dir`, with the file it came from;
/// `None` when the directory has no config file. A first file that is invalid is an error,
/// not skipped, as with containerd: the operator's intent is unclear.
pub fn load_dir(dir: &Path) -> Result<Option<(PathBuf, NetworkList)>> {
    let Some(first) = config_files(dir)?.into_iter().next() else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&first)
        .map_err(|e| Error::io("read CNI config file", &first, e))?;
    let source = first.display().to_string();
    let list = if first.extension().is_some_and(|e| e == "conflist") {
        NetworkList::parse(&text, &source)?
    } else {
        NetworkList::from_conf(&text, &source)?
    };
    Ok(Some((first, list)))
}

/// Writes `text` to `dir/name` crash-safely (temporary hidden file, fsync, rename), creating
/// `dir` if needed.
pub fn write_conf_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create CNI config directory", dir, e))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("write CNI config file", &path, e)
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"net","plugins":[
        {"type":"bridge","bridge":"b0","ipam":{"type":"host-local"}},
        {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#;

    #[test]
    fn a_conflist_parses_with_its_plugins_and_capabilities() {
        let list = NetworkList::parse(LIST, "x").unwrap();
        assert_eq!(list.name, "net");
        assert_eq!(list.cni_version, "1.0.0");
        assert!(!list.disable_check);
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(list.plugins[0].plugin_type, "bridge");
        assert!(list.plugins[0].capabilities.is_empty());
        assert_eq!(
            list.plugins[1].capabilities,
            vec!["portMappings".to_owned()]
        );
        assert_eq!(list.plugins[0].raw["bridge"], "b0");
        assert_eq!(list.bytes, LIST);
    }

    #[test]
    fn invalid_lists_say_what_is_wrong_and_where() {
        for (text, needle) in [
            ("{", "invalid JSON"),
            ("[]", "not a JSON object"),
            (r#"{"cniVersion":"1.0.0","plugins":[{"type":"a"}]}"#, "name"),
            (r#"{"name":"n","plugins":[{"type":"a"}]}"#, "cniVersion"),
            (
                r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"a"}]}"#,
                "not supported",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "plugins"),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "empty"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../sh"}]}"#,
                "plugins[0]: invalid plugin \"type\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
                "type",
            ),
        ] {
            let err = NetworkList::parse(text, "/etc/cni/net.d/10-x.conflist").unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("/etc/cni/net.d/10-x.conflist"), "{msg}");
            assert!(msg.contains(needle), "{msg} lacks {needle}");
        }
    }

    #[test]
    fn cni_versions_picks_the_highest_supported() {
        let list = NetworkList::parse(
            r#"{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.1.0","9.0.0"],"name":"n",
                "plugins":[{"type":"a"}],"disableCheck":true}"#,
            "x",
        )
        .unwrap();
        assert_eq!(list.cni_version, "1.1.0");
        assert!(list.disable_check);
    }

    #[test]
    fn a_conf_is_wrapped_into_a_list() {
        let conf = r#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"b1"}"#;
        let list = NetworkList::from_conf(conf, "x").unwrap();
        assert_eq!(list.name, "single");
        assert_eq!(list.cni_version, "0.4.0");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0].plugin_type, "bridge");
        assert_eq!(list.plugins[0].raw["bridge"], "b1");
        // The stored bytes are the list, which parses to the same network.
        assert_eq!(NetworkList::parse(&list.bytes, "y").unwrap(), list);
        // A list in a .conf file is read as a list.
        assert_eq!(NetworkList::from_conf(LIST, "x").unwrap().plugins.len(), 2);
        let err = NetworkList::from_conf(r#"{"cniVersion":"0.4.0","name":"n"}"#, "x");
        assert!(err.unwrap_err().to_string().contains("type"));
    }

    #[test]
    fn the_lexically_first_config_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_dir(&dir.path().join("missing")).unwrap(), None);
        assert_eq!(load_dir(dir.path()).unwrap(), None);
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("README", "not a config");
        write(".00-hidden.conflist", "{");
        std::fs::create_dir(dir.path().join("00-dir.conf")).unwrap();
        assert_eq!(load_dir(dir.path()).unwrap(), None);
        write("20-b.conflist", &LIST.replace("\"net\"", "\"b\""));
        write(
            "10-a.conf",
            r#"{"cniVersion":"1.0.0","name":"a","type":"ptp"}"#,
        );
        write("30-c.json", "{");
        assert_eq!(
            config_files(dir.path())
                .unwrap()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            vec!["10-a.conf", "20-b.conflist", "30-c.json"]
        );
        let (path, list) = load_dir(dir.path()).unwrap().unwrap();
        assert_eq!(path, dir.path().join("10-a.conf"));
        assert_eq!(list.name, "a");
        assert_eq!(list.plugins[0].plugin_type, "ptp");
        // An invalid first file is an error, not skipped.
        write("05-bad.json", "{");
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("05-bad.json") && err.contains("invalid JSON"),
            "{err}"
        );
    }

    #[test]
    fn conf_files_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("net.d");
        let path = write_conf_file(&sub, "10-x.conflist", LIST).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), LIST);
        write_conf_file(&sub, "10-x.conflist", "{}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}");
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 1);
    }
}
