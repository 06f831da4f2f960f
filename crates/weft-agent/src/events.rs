//! Refused external addresses reported on their Services, as Kubernetes
//! Events (`events.k8s.io/v1`), so that whoever owns a Service sees with
//! `kubectl describe service` why an externalIP or LoadBalancer IP does
//! nothing: the log and the metric are on the node, out of their sight.
//!
//! Each agent reports from its own node (the reporting instance), as
//! kube-proxy does; kube-rs's recorder folds repeats into a series.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use std::collections::BTreeMap;
use tokio::sync::mpsc::Receiver;
use weft_model::guard::Refused;
use weft_model::{ClusterState, Object, ObjectKey};

/// The Event's reason, as `kubectl describe` shows it.
pub const REASON: &str = "ExternalIPRefused";

/// The API limits an Event's note to 1 kB.
const NOTE_MAX: usize = 1024;

/// One Event per Service, listing every newly refused address. The
/// Service's uid comes from `state`: `kubectl describe` finds a Service's
/// Events by it.
pub fn refusal_events(state: &ClusterState, refused: &[Refused]) -> Vec<(ObjectReference, Event)> {
    let mut by_service: BTreeMap<(&str, &str), Vec<&Refused>> = BTreeMap::new();
    for r in refused {
        by_service
            .entry((r.namespace.as_str(), r.name.as_str()))
            .or_default()
            .push(r);
    }
    by_service
        .into_iter()
        .map(|((namespace, name), rs)| {
            let key = ObjectKey {
                kind: "Service",
                namespace: namespace.to_string(),
                name: name.to_string(),
            };
            let uid = match state.objects.get(&key) {
                Some(Object::Service(s)) => s.metadata.uid.clone(),
                _ => None,
            };
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some(namespace.to_string()),
                name: Some(name.to_string()),
                uid,
                ..Default::default()
            };
            let mut note = String::new();
            for r in rs {
                let line = format!("{} {} refused: {}; ", r.field, r.ip, r.why);
                if note.len() + line.len() > NOTE_MAX {
                    break;
                }
                note.push_str(&line);
            }
            let event = Event {
                type_: EventType::Warning,
                reason: REASON.into(),
                note: Some(note.trim_end_matches([' ', ';']).to_string()),
                action: "Proxy".into(),
                secondary: None,
            };
            (reference, event)
        })
        .collect()
}

/// Publishes the Events of each batch of refusals until the sender goes.
/// A failed publish (no permission to create Events, the API server away)
/// is logged and dropped: the refusal itself is already in force, and the
/// log line and metric remain.
pub async fn report(client: Client, node: String, mut rx: Receiver<Vec<(ObjectReference, Event)>>) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "weft-agent".into(),
            instance: Some(node),
        },
    );
    while let Some(batch) = rx.recv().await {
        for (reference, event) in batch {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(
                    service = %format!(
                        "{}/{}",
                        reference.namespace.as_deref().unwrap_or(""),
                        reference.name.as_deref().unwrap_or("")
                    ),
                    error = %e,
                    "cannot report the refused external address as an Event"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn refused(ns: &str, name: &str, ip: &str) -> Refused {
        Refused {
            namespace: ns.into(),
            name: name.into(),
            field: "spec.externalIPs",
            ip: ip.parse::<IpAddr>().unwrap(),
            why: "falls on a ClusterIP".into(),
        }
    }

    #[test]
    fn one_event_per_service_with_its_uid() {
        let mut state = ClusterState::default();
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop, uid: u-1}\nspec: {clusterIPs: [10.96.0.20], ports: [{port: 80}]}\n";
        for o in weft_model::manifest::parse(std::path::Path::new("s.yaml"), y).unwrap() {
            state.apply(o);
        }
        let evs = refusal_events(
            &state,
            &[
                refused("shop", "web", "10.96.0.10"),
                refused("shop", "web", "172.30.0.11"),
                refused("default", "gone", "10.96.0.1"),
            ],
        );
        assert_eq!(evs.len(), 2);
        let (r, e) = &evs[1];
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.uid.as_deref(), Some("u-1"));
        assert_eq!(r.kind.as_deref(), Some("Service"));
        assert_eq!(e.reason, REASON);
        assert_eq!(e.type_, EventType::Warning);
        let note = e.note.as_deref().unwrap();
        assert!(
            note.contains("10.96.0.10") && note.contains("172.30.0.11"),
            "{note}"
        );
        // A Service no longer in the state still gets its Event, without uid.
        assert_eq!(evs[0].0.uid, None);
    }

    #[test]
    fn the_note_stays_within_the_api_limit() {
        let state = ClusterState::default();
        let many: Vec<Refused> = (0..200)
            .map(|i| refused("default", "big", &format!("192.0.2.{i}")))
            .collect();
        let evs = refusal_events(&state, &many);
        assert_eq!(evs.len(), 1);
        assert!(evs[0].1.note.as_deref().unwrap().len() <= NOTE_MAX);
    }
}
