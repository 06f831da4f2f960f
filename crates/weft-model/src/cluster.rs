//! The in-memory cluster: the objects weft acts on, keyed like the API.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One API object of a kind weft understands.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Node(Arc<Node>),
    Pod(Arc<Pod>),
    Namespace(Arc<Namespace>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    NetworkPolicy(Arc<NetworkPolicy>),
}

/// kind, namespace ("" for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Node(_) => "Node",
            Object::Pod(_) => "Pod",
            Object::Namespace(_) => "Namespace",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::NetworkPolicy(_) => "NetworkPolicy",
        }
    }

    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        }
    }

    /// Whether two objects are the same: the same allocation (sources
    /// keep unchanged objects, so this is the common, O(1) case) or equal.
    pub fn same(&self, other: &Object) -> bool {
        match (self, other) {
            (Object::Node(a), Object::Node(b)) => Arc::ptr_eq(a, b) || a == b,
            (Object::Pod(a), Object::Pod(b)) => Arc::ptr_eq(a, b) || a == b,
            (Object::Namespace(a), Object::Namespace(b)) => Arc::ptr_eq(a, b) || a == b,
            (Object::Service(a), Object::Service(b)) => Arc::ptr_eq(a, b) || a == b,
            (Object::EndpointSlice(a), Object::EndpointSlice(b)) => Arc::ptr_eq(a, b) || a == b,
            (Object::NetworkPolicy(a), Object::NetworkPolicy(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let m = self.meta();
        let namespaced = !matches!(self, Object::Node(_) | Object::Namespace(_));
        ObjectKey {
            kind: self.kind(),
            namespace: if namespaced {
                m.namespace.clone().unwrap_or_else(|| "default".into())
            } else {
                String::new()
            },
            name: m.name.clone().unwrap_or_default(),
        }
    }
}

/// Every object, by key. Objects sit behind `Arc`, so a snapshot clones
/// cheaply and unchanged objects stay pointer-equal across snapshots, which
/// is how the agent finds what changed (`Object::same`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    pub objects: BTreeMap<ObjectKey, Object>,
}

impl ClusterState {
    pub fn apply(&mut self, o: Object) {
        self.objects.insert(o.key(), o);
    }

    /// Keys whose object differs between `self` (older) and `next`: added,
    /// removed or changed. A merge of two sorted maps, O(n) pointer checks.
    pub fn changed<'a>(
        &'a self,
        next: &'a ClusterState,
    ) -> Vec<(&'a ObjectKey, Option<&'a Object>, Option<&'a Object>)> {
        let mut out = Vec::new();
        let mut a = self.objects.iter().peekable();
        let mut b = next.objects.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((ka, oa)), None) => {
                    out.push((*ka, Some(*oa), None));
                    a.next();
                }
                (None, Some((kb, ob))) => {
                    out.push((*kb, None, Some(*ob)));
                    b.next();
                }
                (Some((ka, oa)), Some((kb, ob))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => {
                        out.push((*ka, Some(*oa), None));
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        out.push((*kb, None, Some(*ob)));
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !oa.same(ob) {
                            out.push((*ka, Some(*oa), Some(*ob)));
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        out
    }

    pub fn delete(&mut self, k: &ObjectKey) -> Option<Object> {
        self.objects.remove(k)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.objects.values().filter_map(|o| match o {
            Object::Node(n) => Some(n.as_ref()),
            _ => None,
        })
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.objects.values().filter_map(|o| match o {
            Object::Pod(p) => Some(p.as_ref()),
            _ => None,
        })
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        match self.objects.get(&ObjectKey {
            kind: "Node",
            namespace: String::new(),
            name: name.to_string(),
        }) {
            Some(Object::Node(n)) => Some(n),
            _ => None,
        }
    }
}
