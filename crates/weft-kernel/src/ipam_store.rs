//! The on-disk IPAM store, in host-local's layout so the two can share a
//! data directory:
//!
//! ```text
//! <dataDir>/<network>/lock                  flock'd for every change
//! <dataDir>/<network>/<ip>                  "<containerID>\r\n<ifname>"
//! <dataDir>/<network>/last_reserved_ip.<N>  round-robin cursor of range set N
//! <dataDir>/<network>/weft/<id>_<ifname>    weft's record of an attachment
//! ```
//!
//! Reservation files are created complete (written to a temp name, then
//! hard-linked into place, which fails if the name exists), so a kill -9 at
//! any instant leaves either no reservation or a whole one, never two owners.
//! The per-attachment record makes DEL O(1): no directory scan.

use crate::error::KernelError;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

const LINE_BREAK: &str = "\r\n";
const RECORDS: &str = "weft";
/// Prefix of files being written; never a reservation or a record.
const TMP: &str = ".tmp-";

/// An open, locked network directory. The lock is released on drop.
pub struct IpamStore {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn io(op: &str, p: &Path) -> impl FnOnce(std::io::Error) -> KernelError {
    let op = format!("{op} {}", p.display());
    move |e| KernelError::io(op, e)
}

/// Record file name: container IDs are runtime-chosen strings, so anything
/// outside a safe alphabet is hex-escaped.
fn record_name(id: &str, ifname: &str) -> String {
    let mut s = String::with_capacity(id.len() + ifname.len() + 1);
    for (i, part) in [id, ifname].iter().enumerate() {
        if i == 1 {
            s.push('_');
        }
        for c in part.chars() {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                s.push(c);
            } else {
                s.push_str(&format!("%{:02x}", c as u32));
            }
        }
    }
    s
}

impl IpamStore {
    /// Opens (creating if needed) and locks `<data_dir>/<network>`.
    pub fn open(data_dir: &Path, network: &str) -> Result<IpamStore, KernelError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(dir.join(RECORDS)).map_err(io("create", &dir))?;
        let lock_path = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| KernelError::io("flock", std::io::Error::from(e)))?;
        Ok(IpamStore { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `content` to `path` only if `path` does not exist, atomically.
    fn create_exclusive(&self, path: &Path, content: &str) -> Result<bool, KernelError> {
        let tmp = self
            .dir
            .join(format!("{TMP}{}-{}", std::process::id(), rand_suffix()));
        {
            let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(content.as_bytes()).map_err(io("write", &tmp))?;
        }
        let r = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io("link", path)(e)),
        }
    }

    /// Reserves `ip` for the attachment; false if someone holds it.
    pub fn reserve(&self, ip: IpAddr, id: &str, ifname: &str) -> Result<bool, KernelError> {
        self.create_exclusive(
            &self.dir.join(ip.to_string()),
            &format!("{}{LINE_BREAK}{ifname}", id.trim()),
        )
    }

    /// The holder of `ip`, if reserved.
    pub fn owner(&self, ip: IpAddr) -> Option<(String, String)> {
        let s = fs::read_to_string(self.dir.join(ip.to_string())).ok()?;
        let mut it = s.split(LINE_BREAK);
        let id = it.next().unwrap_or("").trim().to_string();
        let ifname = it.next().unwrap_or("").trim().to_string();
        Some((id, ifname))
    }

    /// Releases `ip` if (and only if) the attachment holds it.
    pub fn release(&self, ip: IpAddr, id: &str, ifname: &str) -> Result<(), KernelError> {
        match self.owner(ip) {
            Some((oid, oif)) if oid == id.trim() && (oif == ifname || oif.is_empty()) => {
                let p = self.dir.join(ip.to_string());
                match fs::remove_file(&p) {
                    Err(e) if e.kind() != ErrorKind::NotFound => Err(io("remove", &p)(e)),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("last_reserved_ip.{set}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), KernelError> {
        let p = self.dir.join(format!("last_reserved_ip.{set}"));
        fs::write(&p, ip.to_string()).map_err(io("write", &p))
    }

    /// Every reservation: (ip, containerID, ifname). O(n); GC and the
    /// record-less fallback of DEL are its only users.
    pub fn reservations(&self) -> Result<Vec<(IpAddr, String, String)>, KernelError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io("read", &self.dir))? {
            let e = e.map_err(io("read", &self.dir))?;
            let name = e.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let (id, ifname) = self.owner(ip).unwrap_or_default();
            out.push((ip, id, ifname));
        }
        Ok(out)
    }

    /// Removes temp files a killed writer left behind, of reservations and
    /// of records.
    pub fn sweep_temps(&self) {
        for d in [self.dir.clone(), self.dir.join(RECORDS)] {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(TMP) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    fn record_path(&self, id: &str, ifname: &str) -> PathBuf {
        self.dir.join(RECORDS).join(record_name(id, ifname))
    }

    pub fn put_record(&self, id: &str, ifname: &str, content: &str) -> Result<(), KernelError> {
        let p = self.record_path(id, ifname);
        // A prefix, not an extension: record names contain dots, and no
        // record name starts with '.'.
        let tmp = self
            .dir
            .join(RECORDS)
            .join(format!("{TMP}{}", record_name(id, ifname)));
        fs::write(&tmp, content).map_err(io("write", &tmp))?;
        fs::rename(&tmp, &p).map_err(io("rename", &p))
    }

    pub fn get_record(&self, id: &str, ifname: &str) -> Option<String> {
        fs::read_to_string(self.record_path(id, ifname)).ok()
    }

    pub fn del_record(&self, id: &str, ifname: &str) -> Result<(), KernelError> {
        let p = self.record_path(id, ifname);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io("remove", &p)(e)),
            _ => Ok(()),
        }
    }

    /// All records' contents, for GC.
    pub fn records(&self) -> Vec<String> {
        let d = self.dir.join(RECORDS);
        fs::read_dir(&d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(TMP))
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .collect()
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "weft-ipam-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reserve_is_exclusive_and_release_checks_owner() {
        let d = tmpdir();
        let s = IpamStore::open(&d, "net").unwrap();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(s.reserve(ip, "a", "eth0").unwrap());
        assert!(!s.reserve(ip, "b", "eth0").unwrap());
        assert_eq!(s.owner(ip), Some(("a".into(), "eth0".into())));
        s.release(ip, "b", "eth0").unwrap();
        assert!(s.owner(ip).is_some());
        s.release(ip, "a", "eth0").unwrap();
        assert!(s.owner(ip).is_none());
        assert_eq!(fs::read_to_string(d.join("net/lock")).unwrap(), "");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn records_round_trip_with_odd_ids() {
        let d = tmpdir();
        let s = IpamStore::open(&d, "net").unwrap();
        s.put_record("x/../y", "eth0", "{}").unwrap();
        s.put_record("a", "b.tmp", "{}").unwrap();
        fs::write(d.join("net/weft/.tmp-a_eth0"), "torn").unwrap();
        assert_eq!(s.records().len(), 2);
        s.sweep_temps();
        assert!(!d.join("net/weft/.tmp-a_eth0").exists());
        s.del_record("a", "b.tmp").unwrap();
        assert_eq!(s.get_record("x/../y", "eth0").as_deref(), Some("{}"));
        assert_eq!(s.records().len(), 1);
        s.del_record("x/../y", "eth0").unwrap();
        s.del_record("x/../y", "eth0").unwrap();
        assert!(s.records().is_empty());
        fs::remove_dir_all(d).unwrap();
    }
}
