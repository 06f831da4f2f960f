//! The standalone source: a directory of ordinary Kubernetes manifests,
//! watched for changes. Directories whose name starts with '.' hold weft's
//! own bookkeeping and are not read as manifests.
//!
//! Pod subnets allocated in standalone mode (`.weft/podcidrs.json`) are
//! folded into the Nodes they belong to, as the API server would hold them.
//!
//! A file that fails to parse is reported (file, document, field) and its
//! last good contents stay in force; the rest of the directory still
//! applies.

use crate::latest::Latest;
use crate::SourceStats;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use weft_model::{manifest, ClusterState, Object};

/// How often directory mtimes are checked. Writers that rename files into
/// place (the lab, kubectl-like tools, editors) bump a directory mtime, so
/// changes are seen within this period. With inotify (the normal case)
/// a change wakes the source at once, and this is only the fallback.
const POLL: Duration = Duration::from_millis(20);
/// How long a wakeup waits for the rest of a burst of events.
const COALESCE: Duration = Duration::from_millis(2);
/// The mtime check's period when inotify is watching too: only a net.
const POLL_WATCHED: Duration = Duration::from_millis(250);
/// How often every file's mtime is checked, for in-place edits.
const FULL_SCAN: Duration = Duration::from_secs(1);
/// Directory mtimes come from a coarse clock (a few ms on Linux); a
/// directory changed this close to a scan is scanned again.
const RACY: Duration = Duration::from_millis(50);

#[derive(Default)]
struct FileCache {
    /// mtime, length and inode: writers replace files by rename, which
    /// gives a new inode even when time and length look the same.
    stamp: Option<(SystemTime, u64, u64)>,
    objects: Vec<Object>,
}

pub struct DirSource {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileCache>,
    dir_stamps: Vec<(PathBuf, Option<SystemTime>)>,
    /// When the last scan started.
    scanned_at: SystemTime,
    /// Set when a scan left a file for later (caught mid-write).
    rescan_soon: bool,
    last: Option<ClusterState>,
    transform: Option<Transform>,
}

/// Reduces an object as it is read, or drops it (None): a consumer that
/// needs a few fields of many objects (`weft dns`) keeps only those.
pub type Transform = fn(Object) -> Option<Object>;

fn walk(root: &Path, dirs: &mut Vec<PathBuf>, files: &mut Vec<PathBuf>) {
    dirs.push(root.to_path_buf());
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, dirs, files);
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(p);
        }
    }
}

impl DirSource {
    pub fn new(root: PathBuf) -> DirSource {
        DirSource {
            root,
            files: BTreeMap::new(),
            dir_stamps: Vec::new(),
            scanned_at: SystemTime::UNIX_EPOCH,
            rescan_soon: false,
            last: None,
            transform: None,
        }
    }

    pub fn with_transform(mut self, t: Transform) -> DirSource {
        self.transform = Some(t);
        self
    }

    fn dirs_changed(&self) -> bool {
        self.dir_stamps.is_empty()
            || self.dir_stamps.iter().any(|(d, m)| {
                // A directory changed within RACY of the last scan may have
                // changed again after it in the same clock tick (a file
                // written, then renamed into place), leaving its mtime as
                // the scan saw it: look again.
                let racy =
                    m.is_some_and(|m| self.scanned_at.duration_since(m).map_or(true, |d| d < RACY));
                racy || std::fs::metadata(d).and_then(|m| m.modified()).ok() != *m
            })
    }

    /// Rescans; returns a new state when it differs from the last one.
    pub fn scan(&mut self, stats: &SourceStats) -> Option<ClusterState> {
        self.scanned_at = SystemTime::now();
        self.rescan_soon = false;
        let mut dirs = Vec::new();
        let mut paths = Vec::new();
        walk(&self.root, &mut dirs, &mut paths);
        // Subnet allocations are part of the cluster's state (in Kubernetes
        // they are Node.spec.podCIDRs): watch them like the manifests, so a
        // node's new subnet reaches every agent at once.
        let allocs = crate::subnet::Allocations::new(&self.root);
        dirs.push(allocs.dir().to_path_buf());
        self.dir_stamps = dirs
            .into_iter()
            .map(|d| {
                let m = std::fs::metadata(&d).and_then(|m| m.modified()).ok();
                (d, m)
            })
            .collect();
        self.files.retain(|p, _| paths.contains(p));
        for p in paths {
            let Ok(md) = std::fs::metadata(&p) else {
                continue;
            };
            let mtime = md.modified().ok();
            let stamp = mtime.map(|m| (m, md.len(), std::os::unix::fs::MetadataExt::ino(&md)));
            // An empty file changed just now is most likely being written
            // (truncated, not yet filled): keep what it held, and look
            // again once the moment has passed (`run` does). An mtime in
            // the future (a clock stepped back) is not "just now".
            let fresh =
                mtime.is_some_and(|m| self.scanned_at.duration_since(m).is_ok_and(|d| d < RACY));
            if md.len() == 0 && fresh && self.files.contains_key(&p) {
                self.rescan_soon = true;
                continue;
            }
            let entry = self.files.entry(p.clone()).or_default();
            if entry.stamp.is_some() && entry.stamp == stamp {
                continue;
            }
            entry.stamp = stamp;
            match std::fs::read_to_string(&p)
                .map_err(|e| manifest::ManifestError::Read {
                    file: p.clone(),
                    msg: e.to_string(),
                })
                .and_then(|t| manifest::parse(&p, &t))
            {
                Ok(objs) => {
                    entry.objects = match self.transform {
                        Some(t) => objs.into_iter().filter_map(t).collect(),
                        None => objs,
                    }
                }
                Err(e) => {
                    stats.manifest_errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "manifest rejected; its last good version stays in force");
                }
            }
        }
        let mut state = ClusterState::default();
        for f in self.files.values() {
            for o in &f.objects {
                state.apply(o.clone());
            }
        }
        crate::subnet::overlay(&mut state, &allocs.read());
        if self.last.as_ref() == Some(&state) {
            return None;
        }
        self.last = Some(state.clone());
        Some(state)
    }

    /// Watches forever, publishing each new state. Woken by inotify on
    /// every directory scanned; the mtime checks and the periodic full
    /// scan stay as a net for what inotify cannot see (a full queue, a
    /// filesystem without events, a watch the kernel refused).
    pub fn run(mut self, out: Arc<Latest<ClusterState>>, stats: Arc<SourceStats>) {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        // 50 agents polling every 20 ms is 2,500 wakeups a second on a lab
        // host, and up to 20 ms before one sees a change.
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; polling"))
            .ok();
        // Not IN_MODIFY: an in-place write truncates first, and a scan
        // woken then would read the file empty. IN_CLOSE_WRITE comes once
        // the writer is done; IN_CREATE is for new directories.
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CLOSE_WRITE;
        let mut watched: std::collections::HashSet<PathBuf> = Default::default();
        // Every directory still unwatched gets a watch. True if any did:
        // a file may have landed in it before its watch, so scan again.
        let mut degraded = inotify.is_none();
        let mut watch = |dirs: &[(PathBuf, Option<SystemTime>)], degraded: &mut bool| {
            let Some(i) = &inotify else { return false };
            let mut added = false;
            for (d, _) in dirs {
                if watched.contains(d) {
                    continue;
                }
                match i.add_watch(d.as_path(), mask) {
                    Ok(_) => {
                        watched.insert(d.clone());
                        added = true;
                    }
                    Err(e) => {
                        if !*degraded {
                            tracing::warn!(dir = %d.display(), error = %e, "cannot watch; polling");
                        }
                        *degraded = true;
                    }
                }
            }
            added
        };
        let root = [(self.root.clone(), None)];
        watch(&root, &mut degraded);
        let mut last_full = Instant::now();
        let mut scan_now = true;
        loop {
            if scan_now {
                last_full = Instant::now();
                if let Some(s) = self.scan(&stats) {
                    out.publish(s);
                }
                scan_now = watch(&self.dir_stamps, &mut degraded);
                if scan_now {
                    continue;
                }
            }
            let mut wait = if degraded { POLL } else { POLL_WATCHED };
            if self.rescan_soon {
                wait = wait.min(RACY);
            }
            let woken = match &inotify {
                Some(i) => {
                    let fd = std::os::fd::AsFd::as_fd(i);
                    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
                    match nix::poll::poll(&mut fds, ms) {
                        Ok(n) if n > 0 => {
                            // A writer's burst (a bulk apply, pod statuses)
                            // comes as many events close together: take
                            // them all into one scan.
                            let mut any = drain(i);
                            std::thread::sleep(COALESCE);
                            any |= drain(i);
                            any
                        }
                        Ok(_) | Err(nix::errno::Errno::EINTR) => false,
                        Err(_) => {
                            std::thread::sleep(POLL);
                            false
                        }
                    }
                }
                None => {
                    std::thread::sleep(wait);
                    false
                }
            };
            scan_now = woken
                || self.rescan_soon
                || self.dirs_changed()
                || last_full.elapsed() >= FULL_SCAN;
        }
    }
}

/// Reads every queued event; true if one may change the state. A writer
/// that renames files into place first writes `<name>.tmp`, and those
/// events alone are not worth a scan.
fn drain(i: &nix::sys::inotify::Inotify) -> bool {
    let mut any = false;
    while let Ok(events) = i.read_events() {
        if events.is_empty() {
            break;
        }
        any |= events.iter().any(|e| {
            e.name
                .as_ref()
                .is_none_or(|n| !n.to_string_lossy().ends_with(".tmp"))
        });
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_caught_empty_mid_write_keeps_its_objects() {
        let d = std::env::temp_dir().join(format!("weft-dirsrc-empty-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("n.yaml");
        std::fs::write(&f, "kind: Node\nmetadata: {name: node-1}\n").unwrap();
        let m = SourceStats::default();
        let mut s = DirSource::new(d.clone());
        assert!(s.scan(&m).unwrap().node("node-1").is_some());
        // Truncated, as an in-place writer does first.
        std::fs::write(&f, "").unwrap();
        assert!(
            s.scan(&m).is_none(),
            "a just-emptied file is taken as mid-write"
        );
        // Still empty once the moment has passed: the edit was meant.
        std::thread::sleep(RACY + Duration::from_millis(20));
        assert!(s.scan(&m).unwrap().node("node-1").is_none());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bad_file_keeps_last_good_objects() {
        let d = std::env::temp_dir().join(format!("weft-dirsrc-{}", std::process::id()));
        std::fs::create_dir_all(d.join(".weft")).unwrap();
        let f = d.join("n.yaml");
        std::fs::write(&f, "kind: Node\nmetadata: {name: node-1}\n").unwrap();
        std::fs::write(d.join(".weft/x.yaml"), "garbage: [").unwrap();
        let m = SourceStats::default();
        let mut s = DirSource::new(d.clone());
        let st = s.scan(&m).unwrap();
        assert!(st.node("node-1").is_some());
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&f, "kind: Node\nmetadata: {name: Node_1}\n").unwrap();
        assert!(s.scan(&m).is_none(), "a bad edit must not change the state");
        assert_eq!(m.manifest_errors.load(Relaxed), 1);
        std::fs::remove_file(&f).unwrap();
        assert!(s.scan(&m).unwrap().node("node-1").is_none());
        std::fs::remove_dir_all(d).unwrap();
    }
}
