//! The cluster as weft sees it, and the pure compilers from it to what a
//! node's kernel should hold.
//!
//! Both sources (the Kubernetes API through kube-rs watchers, and the
//! standalone directory of manifests) produce the same `Object`s and feed
//! the same `ClusterState`. Compilers read a `ClusterState` and return
//! values; they never touch the kernel, so they are tested as tables.

pub mod alloc;
pub mod bridge;
pub mod cluster;
pub mod dns;
pub mod egress;
pub mod guard;
pub mod health;
pub mod manifest;
pub mod nftdoc;
pub mod proxy;
pub mod routes;
pub mod services;
pub mod subnets;
pub mod tracer;

pub use cluster::{ClusterState, Object, ObjectKey, KINDS};
/// The Kubernetes API types, for `for_each_kind!` expanded in other crates.
pub use k8s_openapi as k8s;
