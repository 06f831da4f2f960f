//! What a running lab consists of, saved after every step so `down` can
//! always find everything that was made.

use crate::LabError;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub ip: IpAddr,
    /// The supervisor (a restart loop around `weft agent`); its process
    /// group holds the agent.
    pub agent_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub ips: Vec<String>,
    pub pid: Option<u32>,
    /// The CNI ADD result, handed back as prevResult on DEL.
    pub result: Value,
    /// The conflist the pod was added with (DEL must use the same).
    pub conflist: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub backend: String,
    pub cluster_cidr: IpNet,
    pub underlay: IpNet,
    pub underlay_netns: String,
    pub external_netns: String,
    pub external_ip: IpAddr,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    /// The stub upstream DNS server (dnsmasq) on the external host.
    #[serde(default)]
    pub upstream_dns_pid: Option<u32>,
}

impl LabState {
    pub fn save(&self, dir: &Path) -> Result<(), LabError> {
        let p = dir.join("state.json");
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::Msg(e.to_string()))?;
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|e| LabError::Msg(format!("write {}: {e}", p.display())))
    }

    pub fn load(dir: &Path) -> Result<Option<LabState>, LabError> {
        let p = dir.join("state.json");
        match std::fs::read_to_string(&p) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| LabError::Msg(format!("{}: {e}", p.display()))),
            Err(_) => Ok(None),
        }
    }
}
