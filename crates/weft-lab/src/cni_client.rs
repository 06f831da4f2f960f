//! The runtime side of CNI, as libcni does it: run a conflist's plugins in
//! order for ADD (each gets the list's name and cniVersion, the previous
//! result as prevResult, and the runtimeConfig keys it declared in
//! `capabilities`) and in reverse for DEL.

use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum CniCallError {
    #[error("{plugin} {command}: {msg} (code {code})")]
    Plugin {
        plugin: String,
        command: String,
        code: u64,
        msg: String,
    },
    #[error("{0}")]
    Exec(String),
}

/// Where plugins live and which namespace they run in (the node's).
pub struct CniRuntime {
    pub plugin_dirs: Vec<PathBuf>,
    /// `ip netns` name the plugins are exec'd in; None for the caller's own.
    pub netns: Option<String>,
}

pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub args: &'a str,
    /// Capability arguments: portMappings, ips, mac, dns…
    pub runtime_config: &'a Value,
}

impl CniRuntime {
    fn find(&self, ty: &str) -> Result<PathBuf, CniCallError> {
        self.plugin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                CniCallError::Exec(format!("plugin {ty:?} not found in {:?}", self.plugin_dirs))
            })
    }

    fn call(
        &self,
        command: &str,
        plugin: &Value,
        att: &Attachment,
        stdin: &Value,
    ) -> Result<Option<Value>, CniCallError> {
        let ty = plugin.get("type").and_then(Value::as_str).unwrap_or("");
        let bin = self.find(ty)?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let path = self
            .plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", att.container_id)
            .env("CNI_NETNS", att.netns)
            .env("CNI_IFNAME", att.ifname)
            .env("CNI_ARGS", att.args)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| CniCallError::Exec(format!("exec {}: {e}", bin.display())))?;
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.to_string().as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| CniCallError::Exec(format!("wait {}: {e}", bin.display())))?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let (code, msg) = parsed
                .as_ref()
                .map(|v| {
                    (
                        v.get("code").and_then(Value::as_u64).unwrap_or(0),
                        v.get("msg")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    )
                })
                .unwrap_or((0, String::from_utf8_lossy(&out.stderr).trim().to_string()));
            return Err(CniCallError::Plugin {
                plugin: ty.to_string(),
                command: command.to_string(),
                code,
                msg,
            });
        }
        Ok(parsed)
    }

    /// The config one plugin of the list sees.
    fn plugin_conf(list: &Value, plugin: &Value, att: &Attachment, prev: Option<&Value>) -> Value {
        let mut conf: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
        conf.insert("cniVersion".into(), list["cniVersion"].clone());
        conf.insert("name".into(), list["name"].clone());
        let mut rc = Map::new();
        if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
            for (cap, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(v) = att.runtime_config.get(cap) {
                        rc.insert(cap.clone(), v.clone());
                    }
                }
            }
        }
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        if let Some(p) = prev {
            conf.insert("prevResult".into(), p.clone());
        }
        Value::Object(conf)
    }

    pub fn add(&self, list: &Value, att: &Attachment) -> Result<Value, CniCallError> {
        let mut prev: Option<Value> = None;
        for plugin in plugins(list) {
            let conf = Self::plugin_conf(list, plugin, att, prev.as_ref());
            prev = self.call("ADD", plugin, att, &conf)?;
        }
        Ok(prev.unwrap_or_else(|| json!({})))
    }

    /// DEL through every plugin in reverse, carrying on past failures and
    /// reporting the first.
    pub fn del(
        &self,
        list: &Value,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<(), CniCallError> {
        let mut first_err = None;
        for plugin in plugins(list).iter().rev() {
            let conf = Self::plugin_conf(list, plugin, att, prev);
            if let Err(e) = self.call("DEL", plugin, att, &conf) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn plugins(list: &Value) -> Vec<&Value> {
    list.get("plugins")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}
