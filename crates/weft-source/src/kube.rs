//! The Kubernetes source: kube-rs watchers on the kinds weft acts on, all
//! feeding one `ClusterState`. A state is published only once every kind
//! has finished its initial list, so the reconciler never acts on a
//! half-listed cluster (which would look like nodes leaving).

use crate::latest::Latest;
use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use weft_model::{ClusterState, Object, ObjectKey};

/// One watcher event, with the kind erased.
enum Ev {
    Init(&'static str),
    InitApply(&'static str, Object),
    InitDone(&'static str),
    Apply(Object),
    Delete(Object),
    Error(&'static str, String),
}

type EvStream = Pin<Box<dyn Stream<Item = Ev> + Send>>;

fn watch<K>(client: &Client, kind: &'static str, wrap: fn(K) -> Object) -> EvStream
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    Box::pin(
        watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |r| match r {
                Ok(Event::Init) => Ev::Init(kind),
                Ok(Event::InitApply(o)) => Ev::InitApply(kind, wrap(o)),
                Ok(Event::InitDone) => Ev::InitDone(kind),
                Ok(Event::Apply(o)) => Ev::Apply(wrap(o)),
                Ok(Event::Delete(o)) => Ev::Delete(wrap(o)),
                Err(e) => Ev::Error(kind, e.to_string()),
            }),
    )
}

/// Applies one event; returns whether the state may have changed.
fn apply(
    state: &mut ClusterState,
    buffers: &mut BTreeMap<&'static str, Vec<Object>>,
    synced: &mut BTreeSet<&'static str>,
    ev: Ev,
) -> bool {
    match ev {
        Ev::Init(k) => {
            buffers.insert(k, Vec::new());
            false
        }
        Ev::InitApply(k, o) => {
            buffers.entry(k).or_default().push(o);
            false
        }
        Ev::InitDone(k) => {
            // Replace the kind's objects atomically with the fresh list.
            let fresh = buffers.remove(k).unwrap_or_default();
            state.objects.retain(|key: &ObjectKey, _| key.kind != k);
            for o in fresh {
                state.apply(o);
            }
            synced.insert(k);
            true
        }
        Ev::Apply(o) => {
            state.apply(o);
            true
        }
        Ev::Delete(o) => {
            state.delete(&o.key());
            true
        }
        Ev::Error(k, e) => {
            tracing::warn!(kind = k, error = %e, "watch error; retrying with backoff");
            false
        }
    }
}

macro_rules! stream_of {
    ($(($v:ident, $t:ty, $namespaced:literal)),* $(,)?) => {
        /// The watcher of one kind, by name; None for a kind weft does not
        /// model.
        fn stream_of(client: &Client, kind: &str) -> Option<EvStream> {
            match kind {
                $(stringify!($v) => Some(watch::<$t>(client, stringify!($v), |o| Object::$v(Arc::new(o)))),)*
                _ => None,
            }
        }
    };
}
weft_model::for_each_kind!(stream_of);

/// Watches the given kinds until the process ends, publishing every new
/// state. Each consumer names only what it reads (`weft dns` needs three
/// kinds, and holding every Pod would cost it most of its memory); a kind
/// weft does not model is logged and skipped. `transform` reduces each
/// object as it arrives (see `dir::Transform`).
pub async fn run(
    client: Client,
    out: Arc<Latest<ClusterState>>,
    kinds: &[&str],
    transform: Option<crate::dir::Transform>,
) {
    let streams: Vec<EvStream> = kinds
        .iter()
        .filter_map(|k| {
            let s = stream_of(&client, k);
            if s.is_none() {
                tracing::error!(kind = k, "not a kind weft models; not watched");
            }
            s
        })
        .collect();
    let n = streams.len();
    let mut all = futures::stream::select_all(streams);
    let mut state = ClusterState::default();
    let mut buffers = BTreeMap::new();
    let mut synced = BTreeSet::new();
    while let Some(ev) = all.next().await {
        let ev = match (transform, ev) {
            (Some(t), Ev::InitApply(k, o)) => match t(o) {
                Some(o) => Ev::InitApply(k, o),
                None => continue,
            },
            (Some(t), Ev::Apply(o)) => match t(o) {
                Some(o) => Ev::Apply(o),
                None => continue,
            },
            (_, ev) => ev,
        };
        if apply(&mut state, &mut buffers, &mut synced, ev) && synced.len() == n {
            out.publish(state.clone());
        }
    }
}

/// A client from `--kubeconfig`, or in-cluster config / the default
/// kubeconfig when none is given.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    Client::try_from(config).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::k8s::api::core::v1::Node;

    fn node(name: &str) -> Object {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        Object::Node(std::sync::Arc::new(n))
    }

    #[test]
    fn relist_replaces_a_kind_atomically() {
        let mut s = ClusterState::default();
        let mut b = BTreeMap::new();
        let mut synced = BTreeSet::new();
        apply(&mut s, &mut b, &mut synced, Ev::Init("Node"));
        apply(
            &mut s,
            &mut b,
            &mut synced,
            Ev::InitApply("Node", node("a")),
        );
        apply(
            &mut s,
            &mut b,
            &mut synced,
            Ev::InitApply("Node", node("b")),
        );
        assert!(s.node("a").is_none(), "nothing applies before InitDone");
        assert!(apply(&mut s, &mut b, &mut synced, Ev::InitDone("Node")));
        assert!(s.node("a").is_some() && s.node("b").is_some());
        // A relist that no longer has "a" removes it.
        apply(&mut s, &mut b, &mut synced, Ev::Init("Node"));
        apply(
            &mut s,
            &mut b,
            &mut synced,
            Ev::InitApply("Node", node("b")),
        );
        apply(&mut s, &mut b, &mut synced, Ev::InitDone("Node"));
        assert!(s.node("a").is_none() && s.node("b").is_some());
        apply(&mut s, &mut b, &mut synced, Ev::Delete(node("b")));
        assert!(s.node("b").is_none());
    }
}
