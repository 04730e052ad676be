//! The three operations on a network list, as libcni runs them: ADD through the plugins in
//! order, each given the previous one's result; DEL in reverse order, each given the ADD's
//! result; CHECK in order with the ADD's result, from version 0.4.0 on.

use std::path::Path;

use nix::sys::statfs::{NSFS_MAGIC, statfs};
use serde_json::Value;

use super::args::{RuntimeArgs, plugin_stdin};
use super::conf::{NetworkList, PluginConf};
use super::exec::Plugins;
use super::result::CniResult;
use super::version_at_least;
use crate::error::{CniPluginFailure, Error, Result};

/// Whether `path` is a live network namespace (a pin or a `/proc/<pid>/ns/net`), so it can be
/// passed to a DEL; after a reboot the pin is gone and DEL gets an empty `CNI_NETNS`.
pub fn netns_is_alive(path: &Path) -> bool {
    !path.as_os_str().is_empty() && statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

fn run(
    list: &NetworkList,
    plugin: &PluginConf,
    command: &'static str,
    rt: &RuntimeArgs,
    prev: Option<&Value>,
    plugins: &Plugins,
) -> Result<Vec<u8>> {
    let failed = |code: Option<u64>, message: String| {
        Error::CniPlugin(Box::new(CniPluginFailure {
            network: list.name.clone(),
            plugin: plugin.plugin_type.clone(),
            command: match command {
                "ADD" => "add",
                "DEL" => "delete",
                _ => "check",
            },
            code,
            message,
        }))
    };
    let binary = plugins
        .find(&plugin.plugin_type)
        .ok_or_else(|| Error::CniPluginNotFound {
            plugin: plugin.plugin_type.clone(),
            dirs: plugins.cni_path(),
        })?;
    let env = rt.env(command, &plugins.cni_path())?;
    let stdin = plugin_stdin(list, plugin, prev, &rt.capabilities);
    plugins
        .exec(&binary, &env, &stdin)
        .map_err(|f| failed(f.code, f.message))
}

/// ADD: runs every plugin in order, chaining results, and returns the last plugin's result.
/// On failure the caller runs [`del`] (with no result) to undo what the plugins before it
/// did, as the spec asks of runtimes.
pub fn add(list: &NetworkList, rt: &RuntimeArgs, plugins: &Plugins) -> Result<CniResult> {
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        let out = run(list, plugin, "ADD", rt, prev.as_ref(), plugins)?;
        let value: Value = serde_json::from_slice(&out).map_err(|e| {
            Error::CniPlugin(Box::new(CniPluginFailure {
                network: list.name.clone(),
                plugin: plugin.plugin_type.clone(),
                command: "add",
                code: None,
                message: format!(
                    "its result is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }))
        })?;
        prev = Some(value);
    }
    let last = list
        .plugins
        .last()
        .map_or("", |p| p.plugin_type.as_str())
        .to_owned();
    let raw = prev.unwrap_or(Value::Null);
    CniResult::parse(raw, &format!("plugin type={last:?} name={:?}", list.name))
}

/// DEL: runs every plugin in reverse order, each given `prev_result` (the ADD's result) from
/// version 0.4.0 on. Every plugin is asked even when one fails, so a failure of one leaves as
/// little as possible behind; the first failure is returned. A repeated DEL is fine: plugins
/// must accept it.
pub fn del(
    list: &NetworkList,
    rt: &RuntimeArgs,
    prev_result: Option<&Value>,
    plugins: &Plugins,
) -> Result<()> {
    let prev = prev_result.filter(|_| version_at_least(&list.cni_version, "0.4.0"));
    let mut first_error = None;
    for plugin in list.plugins.iter().rev() {
        if let Err(e) = run(list, plugin, "DEL", rt, prev, plugins) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// CHECK: asks every plugin in order whether the pod's network is as ADD left it. Networks
/// before 0.4.0 have no CHECK; a list with `disableCheck` passes without a call.
pub fn check(
    list: &NetworkList,
    rt: &RuntimeArgs,
    prev_result: &Value,
    plugins: &Plugins,
) -> Result<()> {
    if !version_at_least(&list.cni_version, "0.4.0") {
        return Err(Error::Unsupported(format!(
            "network {:?} has cniVersion {}: CHECK needs 0.4.0 or later",
            list.name, list.cni_version
        )));
    }
    if list.disable_check {
        return Ok(());
    }
    for plugin in &list.plugins {
        run(list, plugin, "CHECK", rt, Some(prev_result), plugins)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
