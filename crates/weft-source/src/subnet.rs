//! Standalone pod-subnet allocation. When a Node has no spec.podCIDRs, its
//! agent takes the lowest free subnet of the cluster CIDR and records it in
//! `<state>/.weft/podcidrs.json` under a lock, so agents on one host (the
//! lab) or sharing the directory agree, and a restart keeps the subnet.

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use weft_model::ClusterState;

pub struct Allocations {
    dir: PathBuf,
}

impl Allocations {
    pub fn new(state_dir: &Path) -> Allocations {
        Allocations {
            dir: state_dir.join(".weft"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> PathBuf {
        self.dir.join("podcidrs.json")
    }

    pub fn read(&self) -> BTreeMap<String, Vec<IpNet>> {
        std::fs::read_to_string(self.file())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// The node's subnet, allocating one if it has none.
    pub fn ensure(
        &self,
        node: &str,
        cluster: IpNet,
        prefix: u8,
        state: &ClusterState,
    ) -> std::io::Result<Vec<IpNet>> {
        std::fs::create_dir_all(&self.dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("podcidrs.lock"))?;
        let _lock =
            Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))?;
        let mut all = self.read();
        if let Some(c) = all.get(node) {
            return Ok(c.clone());
        }
        let mut taken: Vec<IpNet> = all.values().flatten().copied().collect();
        for n in state.nodes() {
            if let Some(spec) = &n.spec {
                taken.extend(
                    spec.pod_cidrs
                        .iter()
                        .flatten()
                        .filter_map(|c| c.parse::<IpNet>().ok()),
                );
            }
        }
        let c = weft_model::subnets::allocate(cluster, prefix, &taken).ok_or_else(|| {
            std::io::Error::other(format!("cluster CIDR {cluster} has no free /{prefix} left"))
        })?;
        all.insert(node.to_string(), vec![c]);
        let tmp = self.dir.join("podcidrs.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&all).unwrap_or_default())?;
        std::fs::rename(&tmp, self.file())?;
        Ok(vec![c])
    }
}

/// Fills in spec.podCIDRs from the allocations for nodes that lack them.
pub fn overlay(state: &mut ClusterState, allocs: &BTreeMap<String, Vec<IpNet>>) {
    for o in state.objects.values_mut() {
        if let weft_model::Object::Node(n) = o {
            let name = n.metadata.name.clone().unwrap_or_default();
            let Some(c) = allocs.get(&name) else { continue };
            let lacks = n.spec.as_ref().is_none_or(|s| {
                s.pod_cidrs.as_ref().is_none_or(|p| p.is_empty()) && s.pod_cidr.is_none()
            });
            if lacks {
                // Copy-on-write: the source's own object stays as it was.
                let spec = std::sync::Arc::make_mut(n)
                    .spec
                    .get_or_insert_with(Default::default);
                spec.pod_cidrs = Some(c.iter().map(|c| c.to_string()).collect());
                spec.pod_cidr = c.first().map(|c| c.to_string());
            }
        }
    }
}
