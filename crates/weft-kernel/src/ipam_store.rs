//! The on-disk IPAM store, in host-local's layout so the two can share a
//! data directory:
//!
//! ```text
//! <dataDir>/<network>/lock                  flock'd for every change
//! <dataDir>/<network>/<ip>                  "<containerID>\r\n<ifname>", or
//!                                           "<containerID>" (host-local < 0.7)
//! <dataDir>/<network>/last_reserved_ip.<N>  round-robin cursor of range set N
//! <dataDir>/<network>/weft/<id>_<ifname>    weft's record of an attachment
//! ```
//!
//! Reservation files are created complete (written to a temp name, then
//! hard-linked into place, which fails if the name exists), so a kill -9 at
//! any instant leaves either no reservation or a whole one, never two owners.
//! The per-attachment record makes DEL O(1): no directory scan.
//!
//! The directory of a network that an ADD created and then failed in is
//! removed again (`remove_if_unused`), so `open` makes sure the lock it got
//! is still the directory's lock file, and starts over if not.

use crate::error::KernelError;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
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

/// Record file name: container IDs are runtime-chosen strings, so every
/// byte outside a safe alphabet is hex-escaped, `_` included: the one bare
/// `_` separates the two parts, and `attachment_of_record` reverses it.
fn record_name(id: &str, ifname: &str) -> String {
    let mut s = String::with_capacity(id.len() + ifname.len() + 1);
    for (i, part) in [id, ifname].iter().enumerate() {
        if i == 1 {
            s.push('_');
        }
        for b in part.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                s.push(b as char);
            } else {
                s.push_str(&format!("%{b:02x}"));
            }
        }
    }
    s
}

/// The (containerID, ifname) a record file's name stands for, so a record
/// whose content is lost can still be traced to its attachment.
pub fn attachment_of_record(name: &str) -> Option<(String, String)> {
    fn unescape(s: &str) -> Option<String> {
        let mut out = Vec::with_capacity(s.len());
        let mut it = s.bytes();
        while let Some(b) = it.next() {
            if b == b'%' {
                let hex = [it.next()?, it.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            } else {
                out.push(b);
            }
        }
        String::from_utf8(out).ok()
    }
    let (id, ifname) = name.split_once('_')?;
    let (id, ifname) = (unescape(id)?, unescape(ifname)?);
    (!id.is_empty() && !ifname.is_empty() && !name.starts_with(TMP)).then_some((id, ifname))
}

/// Who holds an address, as its reservation file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// `<containerID>\r\n<ifname>`, as host-local (since CNI 0.7) and weft
    /// write it; a bare `\n` is taken too.
    Attachment { id: String, ifname: String },
    /// `<containerID>` alone: host-local before CNI 0.7, when a container
    /// had one attachment per network, so it holds for any ifname.
    Container { id: String },
    /// No content: host-local creates the file, then writes it, so a
    /// writer killed in between leaves this.
    Empty,
    /// Content that is not text, or a file that cannot be read.
    Unreadable(String),
    /// A directory, or anything else that is not a regular file, under a
    /// reservation's name.
    NotAFile,
}

impl Holder {
    pub fn parse(bytes: &[u8]) -> Holder {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Holder::Unreadable("not UTF-8".into());
        };
        let text = text.trim();
        if text.is_empty() {
            return Holder::Empty;
        }
        match text.split_once('\n') {
            Some((id, ifname)) => Holder::Attachment {
                id: id.trim().to_string(),
                ifname: ifname.trim().to_string(),
            },
            None => Holder::Container {
                id: text.to_string(),
            },
        }
    }

    /// Whether this is the reservation of that attachment.
    pub fn is(&self, id: &str, ifname: &str) -> bool {
        match self {
            Holder::Attachment { id: i, ifname: f } => i == id.trim() && f == ifname,
            Holder::Container { id: i } => i == id.trim(),
            _ => false,
        }
    }

    /// Whether this file could be that attachment's reservation, whole or
    /// cut short (a torn write keeps a prefix of the content). Conservative
    /// by design: GC frees nothing for which this holds of a live
    /// attachment.
    pub fn may_be(&self, id: &str, ifname: &str) -> bool {
        match self {
            Holder::Attachment { id: i, ifname: f } => {
                i == id.trim() && ifname.starts_with(f.as_str())
            }
            Holder::Container { id: i } => id.trim().starts_with(i.as_str()),
            Holder::Empty | Holder::Unreadable(_) | Holder::NotAFile => true,
        }
    }
}

/// One of the network's reservation files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub holder: Holder,
}

/// One of weft's attachment records, as found on disk.
#[derive(Debug, Clone)]
pub struct RecordFile {
    /// The file name, for reports.
    pub name: String,
    /// The attachment the name stands for, if it decodes.
    pub attachment: Option<(String, String)>,
    /// The content, or why it could not be read.
    pub content: Result<String, String>,
}

/// The network name becomes a directory under the data directory: refuse
/// anything that would resolve elsewhere, whatever the caller checked.
fn check_network(network: &str) -> Result<(), KernelError> {
    if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0']) {
        return Err(KernelError::Other(format!(
            "ipam store: network name {:?} is not a plain directory name",
            network.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

impl IpamStore {
    /// Opens (creating if needed) and locks `<data_dir>/<network>`.
    pub fn open(data_dir: &Path, network: &str) -> Result<IpamStore, KernelError> {
        check_network(network)?;
        let dir = data_dir.join(network);
        let lock_path = dir.join("lock");
        // Only a concurrent `remove_if_unused` makes a round fail, and it
        // runs once per failed first ADD: a few rounds are plenty.
        for _ in 0..16 {
            fs::create_dir_all(dir.join(RECORDS)).map_err(io("create", &dir))?;
            let f = match OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
            {
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                r => r.map_err(io("open", &lock_path))?,
            };
            let lock = Flock::lock(f, FlockArg::LockExclusive)
                .map_err(|(_, e)| KernelError::io("flock", std::io::Error::from(e)))?;
            // Removed while we waited: this lock guards nothing any more.
            let held = lock.metadata().map_err(io("stat", &lock_path))?;
            match fs::metadata(&lock_path) {
                Ok(m) if (m.dev(), m.ino()) == (held.dev(), held.ino()) => {
                    return Ok(IpamStore { dir, _lock: lock })
                }
                _ => continue,
            }
        }
        Err(KernelError::Other(format!(
            "ipam store {}: removed every time it was opened",
            dir.display()
        )))
    }

    /// Opens and locks `<data_dir>/<network>` if it exists; for the verbs
    /// that only read or undo (DEL, CHECK, GC, STATUS), which have nothing
    /// to do in a network never used and must not leave its directory.
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<IpamStore>, KernelError> {
        check_network(network)?;
        if !data_dir.join(network).is_dir() {
            return Ok(None);
        }
        IpamStore::open(data_dir, network).map(Some)
    }

    /// Removes the network's directory if nothing in it is worth keeping:
    /// no reservation, no record, nothing unknown; only the lock, the
    /// cursors and the empty records directory. For an ADD that created the
    /// directory and then failed. Returns whether it was removed.
    pub fn remove_if_unused(self) -> Result<bool, KernelError> {
        let d = &self.dir;
        let mut cursors = Vec::new();
        for e in fs::read_dir(d).map_err(io("read", d))? {
            let name = e.map_err(io("read", d))?.file_name();
            match name.to_str() {
                Some("lock") | Some(RECORDS) => {}
                Some(n) if n.starts_with("last_reserved_ip.") => cursors.push(d.join(n)),
                _ => return Ok(false),
            }
        }
        let records = d.join(RECORDS);
        match fs::remove_dir(&records) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            // Not empty: a record (or its temp) is there after all.
            Err(_) => return Ok(false),
        }
        for c in cursors {
            fs::remove_file(&c).map_err(io("remove", &c))?;
        }
        // The lock file goes last, while we still hold it: whoever waits
        // on it then sees it unlinked and starts over (see `open`).
        let lock = d.join("lock");
        fs::remove_file(&lock).map_err(io("remove", &lock))?;
        fs::remove_dir(d).map_err(io("remove", d))?;
        Ok(true)
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

    /// The holder of `ip`; None if the address is free.
    pub fn holder(&self, ip: IpAddr) -> Option<Holder> {
        let p = self.dir.join(ip.to_string());
        match fs::read(&p) {
            Ok(b) => Some(Holder::parse(&b)),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(_) if p.symlink_metadata().is_ok_and(|m| !m.is_file()) => Some(Holder::NotAFile),
            Err(e) => Some(Holder::Unreadable(e.to_string())),
        }
    }

    /// Releases `ip` if (and only if) the attachment holds it.
    pub fn release(&self, ip: IpAddr, id: &str, ifname: &str) -> Result<(), KernelError> {
        if !self.holder(ip).is_some_and(|h| h.is(id, ifname)) {
            return Ok(());
        }
        self.free(ip)
    }

    /// Frees `ip` whoever holds it (GC, having judged the holder gone).
    pub fn free(&self, ip: IpAddr) -> Result<(), KernelError> {
        let p = self.dir.join(ip.to_string());
        match fs::remove_file(&p) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io("remove", &p)(e)),
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

    /// Every reservation file, whatever its state. O(n); GC and the
    /// record-less fallback of DEL are its only users.
    pub fn reservations(&self) -> Result<Vec<Reservation>, KernelError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io("read", &self.dir))? {
            let e = e.map_err(io("read", &self.dir))?;
            let name = e.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let holder = if e.file_type().is_ok_and(|t| !t.is_file()) {
                Holder::NotAFile
            } else {
                // Gone since the listing: nobody holds it.
                let Some(h) = self.holder(ip) else { continue };
                h
            };
            out.push(Reservation { ip, holder });
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

    /// Every record, readable or not, for GC.
    pub fn records(&self) -> Result<Vec<RecordFile>, KernelError> {
        let d = self.dir.join(RECORDS);
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(io("read", &d))? {
            let e = e.map_err(io("read", &d))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP) {
                continue;
            }
            out.push(RecordFile {
                attachment: attachment_of_record(&name),
                content: fs::read_to_string(e.path()).map_err(|e| e.to_string()),
                name,
            });
        }
        Ok(out)
    }

    /// Removes a record by its file name (one whose content is lost).
    pub fn del_record_file(&self, name: &str) -> Result<(), KernelError> {
        let p = self.dir.join(RECORDS).join(name);
        if name.contains('/') || name.starts_with('.') {
            return Err(KernelError::Other(format!("not a record name: {name:?}")));
        }
        match fs::remove_file(&p) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io("remove", &p)(e)),
            _ => Ok(()),
        }
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
        let a = Holder::Attachment {
            id: "a".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(s.holder(ip), Some(a));
        s.release(ip, "b", "eth0").unwrap();
        s.release(ip, "a", "eth1").unwrap();
        assert!(s.holder(ip).is_some());
        s.release(ip, "a", "eth0").unwrap();
        assert!(s.holder(ip).is_none());
        assert_eq!(fs::read_to_string(d.join("net/lock")).unwrap(), "");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn records_round_trip_with_odd_ids() {
        let d = tmpdir();
        let s = IpamStore::open(&d, "net").unwrap();
        s.put_record("x/../y", "eth0", "{}").unwrap();
        s.put_record("a", "b.tmp", "{}").unwrap();
        s.put_record("c_1", "名", "{}").unwrap();
        fs::write(d.join("net/weft/.tmp-a_eth0"), "torn").unwrap();
        assert_eq!(s.records().unwrap().len(), 3);
        s.sweep_temps();
        assert!(!d.join("net/weft/.tmp-a_eth0").exists());
        let mut names: Vec<_> = s
            .records()
            .unwrap()
            .into_iter()
            .map(|r| r.attachment.unwrap())
            .collect();
        names.sort();
        let want = [("a", "b.tmp"), ("c_1", "名"), ("x/../y", "eth0")];
        assert_eq!(
            names,
            want.map(|(i, f)| (i.to_string(), f.to_string())).to_vec()
        );
        s.del_record("a", "b.tmp").unwrap();
        s.del_record("c_1", "名").unwrap();
        assert_eq!(s.get_record("x/../y", "eth0").as_deref(), Some("{}"));
        assert_eq!(s.records().unwrap().len(), 1);
        s.del_record("x/../y", "eth0").unwrap();
        s.del_record("x/../y", "eth0").unwrap();
        assert!(s.records().unwrap().is_empty());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn every_reservation_format_has_a_holder() {
        let att = |i: &str, f: &str| Holder::Attachment {
            id: i.into(),
            ifname: f.into(),
        };
        assert_eq!(Holder::parse(b"abc\r\neth0"), att("abc", "eth0"));
        assert_eq!(Holder::parse(b"abc\neth0\n"), att("abc", "eth0"));
        let old = Holder::parse(b"abc\n");
        assert_eq!(old, Holder::Container { id: "abc".into() });
        assert!(old.is("abc", "eth0") && old.is("abc", "net1") && !old.is("abcd", "eth0"));
        assert_eq!(Holder::parse(b""), Holder::Empty);
        assert_eq!(Holder::parse(b" \r\n"), Holder::Empty);
        assert!(matches!(Holder::parse(b"\xff\xfe"), Holder::Unreadable(_)));
        // Torn writes of abc/eth0 may be it; other attachments are not.
        for torn in [&b"ab"[..], b"abc\r", b"abc\r\net", b""] {
            assert!(Holder::parse(torn).may_be("abc", "eth0"), "{torn:?}");
        }
        assert!(!Holder::parse(b"abd").may_be("abc", "eth0"));
        assert!(!Holder::parse(b"abc\r\neth1").may_be("abc", "eth0"));
    }

    #[test]
    fn odd_files_are_reported_not_fatal() {
        let d = tmpdir();
        let s = IpamStore::open(&d, "net").unwrap();
        fs::create_dir(d.join("net/10.0.0.9")).unwrap();
        fs::write(d.join("net/10.0.0.8"), "").unwrap();
        fs::write(d.join("net/10.0.0.7"), "old-style-id").unwrap();
        let mut r = s.reservations().unwrap();
        r.sort_by_key(|r| r.ip);
        let holders: Vec<_> = r.into_iter().map(|r| r.holder).collect();
        assert_eq!(
            holders,
            [
                Holder::Container {
                    id: "old-style-id".into()
                },
                Holder::Empty,
                Holder::NotAFile
            ]
        );
        s.release("10.0.0.7".parse().unwrap(), "old-style-id", "eth0")
            .unwrap();
        assert!(!d.join("net/10.0.0.7").exists());
        drop(s);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_network_name_cannot_leave_the_data_dir() {
        let d = tmpdir();
        for bad in ["", ".", "..", "../x", "a/b", "/abs"] {
            assert!(IpamStore::open(&d.join("a"), bad).is_err(), "{bad:?}");
        }
        assert!(!d.join("x").exists() && !d.join("a").exists());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_unused_store_is_removed_and_a_waiter_starts_over() {
        let d = tmpdir();
        let s = IpamStore::open(&d, "net").unwrap();
        s.set_last_reserved(0, "10.0.0.2".parse().unwrap()).unwrap();
        // Someone waits for the lock while the store is removed.
        let waiter = {
            let d = d.clone();
            std::thread::spawn(move || {
                let s = IpamStore::open(&d, "net").unwrap();
                s.reserve("10.0.0.3".parse().unwrap(), "b", "eth0").unwrap()
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(s.remove_if_unused().unwrap());
        assert!(waiter.join().unwrap(), "the waiter's reservation was lost");
        assert!(d.join("net/10.0.0.3").exists());
        // A store that holds something stays.
        let s = IpamStore::open(&d, "net").unwrap();
        assert!(!s.remove_if_unused().unwrap());
        let s = IpamStore::open(&d, "net").unwrap();
        s.free("10.0.0.3".parse().unwrap()).unwrap();
        s.put_record("a", "eth0", "{}").unwrap();
        assert!(!s.remove_if_unused().unwrap());
        assert!(d.join("net/weft").exists());
        fs::remove_dir_all(d).unwrap();
    }
}
