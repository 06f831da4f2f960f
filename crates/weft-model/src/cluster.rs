//! The in-memory cluster: the objects weft acts on, keyed like the API.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every kind weft models, in this one place: the variant of `Object`, its
/// Rust type and whether it is namespaced. The `Object` enum, the manifest
/// decoder, the lab's store and the sources' watchers are all generated
/// from it (`for_each_kind!(some_macro)` hands the list to a macro), so a
/// new kind (a custom resource with `k8s_openapi::Resource` implemented
/// for its type) is one line here plus the compilers that read it.
#[macro_export]
macro_rules! for_each_kind {
    ($m:ident) => {
        $m! {
            (Node, $crate::k8s::api::core::v1::Node, false),
            (Pod, $crate::k8s::api::core::v1::Pod, true),
            (Namespace, $crate::k8s::api::core::v1::Namespace, false),
            (Service, $crate::k8s::api::core::v1::Service, true),
            (EndpointSlice, $crate::k8s::api::discovery::v1::EndpointSlice, true),
            (NetworkPolicy, $crate::k8s::api::networking::v1::NetworkPolicy, true),
        }
    };
}

macro_rules! define_objects {
    ($(($v:ident, $t:ty, $namespaced:literal)),* $(,)?) => {
        /// One API object of a kind weft understands.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Object {
            $($v(Arc<$t>),)*
        }

        /// Every kind's name, as manifests and the API spell it.
        pub const KINDS: &[&str] = &[$(stringify!($v)),*];

        impl Object {
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Object::$v(_) => stringify!($v),)*
                }
            }

            fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Object::$v(o) => &o.metadata,)*
                }
            }

            /// Whether objects of this kind live in a namespace.
            pub fn namespaced(&self) -> bool {
                match self {
                    $(Object::$v(_) => $namespaced,)*
                }
            }

            /// Whether two objects are the same: the same allocation
            /// (sources keep unchanged objects, so this is the common,
            /// O(1) case) or equal.
            pub fn same(&self, other: &Object) -> bool {
                match (self, other) {
                    $((Object::$v(a), Object::$v(b)) => Arc::ptr_eq(a, b) || a == b,)*
                    #[allow(unreachable_patterns)]
                    _ => false,
                }
            }

            /// The object as YAML (apiVersion and kind included).
            pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
                match self {
                    $(Object::$v(o) => serde_yaml::to_string(o.as_ref()),)*
                }
            }

            /// Decodes an object of `kind`, the error carrying the path of
            /// the field at fault; None for a kind weft does not model.
            pub fn decode(
                kind: &str,
                v: serde_yaml::Value,
            ) -> Option<Result<Object, serde_path_to_error::Error<serde_yaml::Error>>> {
                match kind {
                    $(stringify!($v) => Some(
                        serde_path_to_error::deserialize::<_, $t>(v).map(|o| Object::$v(Arc::new(o))),
                    ),)*
                    _ => None,
                }
            }
        }
    };
}

for_each_kind!(define_objects);

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
    pub fn key(&self) -> ObjectKey {
        let m = self.meta();
        ObjectKey {
            kind: self.kind(),
            namespace: if self.namespaced() {
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
