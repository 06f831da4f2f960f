//! The lab's API store: the cluster's manifests, one file per object under
//! `<lab>/cluster/<kind>/`, written by rename so the agents' directory
//! source never reads half a file, under one lock per lab.

use super::*;

/// Serialises lab commands on one lab (an `apply` racing a `down`).
pub(crate) fn lock(dir: &Path) -> Result<Flock<File>, LabError> {
    fs::create_dir_all(dir).map_err(|e| msg(format!("create {}: {e}", dir.display())))?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| msg(format!("lock: {e}")))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| msg(format!("lock: {e}")))
}

pub(crate) fn write_file(p: &Path, text: &str) -> Result<(), LabError> {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(|e| msg(format!("create {}: {e}", d.display())))?;
    }
    // Rename into place: the agents' watcher sees whole files only.
    let tmp = p.with_extension("tmp");
    fs::write(&tmp, text)
        .and_then(|_| fs::rename(&tmp, p))
        .map_err(|e| msg(format!("write {}: {e}", p.display())))
}

/// Where the lab keeps an object's manifest in the cluster directory.
pub(crate) fn manifest_path(dir: &Path, o: &Object) -> PathBuf {
    let k = o.key();
    let file = if k.namespace.is_empty() {
        format!("{}.yaml", k.name)
    } else {
        format!("{}.{}.yaml", k.namespace, k.name)
    };
    dir.join("cluster")
        .join(k.kind.to_ascii_lowercase())
        .join(file)
}

pub(crate) fn store(dir: &Path, o: &Object) -> Result<(), LabError> {
    let text = o
        .to_yaml()
        .map_err(|e| msg(format!("serialise {}: {e}", o.key())))?;
    // k8s-openapi writes apiVersion and kind itself.
    write_file(&manifest_path(dir, o), &text)
}

pub(crate) fn unstore(dir: &Path, o: &Object) {
    let _ = fs::remove_file(manifest_path(dir, o));
}

pub(crate) fn check_duplicates(objs: &[Object]) -> Result<(), LabError> {
    let mut seen = std::collections::HashSet::new();
    for o in objs {
        if !seen.insert(o.key()) {
            return Err(msg(format!("{} appears twice in the manifests", o.key())));
        }
    }
    Ok(())
}

/// The cluster as stored, for allocating against it (as an API server
/// would against etcd).
pub(crate) fn cluster_state(dir: &Path) -> weft_model::ClusterState {
    let mut cluster = weft_model::ClusterState::default();
    for o in manifest::load(&dir.join("cluster")).unwrap_or_default() {
        cluster.apply(o);
    }
    cluster
}
