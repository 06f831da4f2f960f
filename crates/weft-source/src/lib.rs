//! Where the cluster state comes from, shared by every daemon (the agent,
//! `weft dns`, and next the gateway):
//!
//! ```text
//!  Kubernetes API (kube-rs watchers)  ─┐
//!                                      ├─▶ ClusterState ─▶ Latest (newest wins) ─▶ consumer
//!  manifest directory (inotify + scan) ┘
//! ```
//!
//! Each consumer names the kinds it reads (`kube::run`'s `kinds`), so none
//! holds or watches more than it needs; the kinds themselves are listed
//! once, in `weft_model::for_each_kind!`. No kernel code is linked here:
//! `weft dns` reads the model without rtnetlink or nft.
//!
//! Two more things every daemon shares sit here too: `admin`, the small
//! HTTP server they answer `/healthz` and `/metrics` on, and `lifecycle`,
//! how they stop (signals, drain, exit codes).

pub mod admin;
pub mod dir;
pub mod kube;
pub mod latest;
pub mod lifecycle;
pub mod subnet;

use std::sync::atomic::AtomicU64;

/// What a source counts, for the consumer's `/metrics`.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Manifests rejected (the file's last good objects stay in force).
    pub manifest_errors: AtomicU64,
}
