//! Receive packet steering on a link: which CPUs may run the stack for
//! packets the link receives. Set through sysfs, the only interface the
//! kernel has for it, so `sys` must be the sysfs of the caller's own
//! network namespace (the link's index is checked against it).
//!
//! Why weft uses it: a pod's packets enter the node through one veth,
//! whose receive work (the bridge, routing, the next veth, the receiving
//! socket) otherwise runs on the sending CPU, after the sender's own copy.
//! Steering it by flow hash lets a second CPU take it.

use crate::error::KernelError;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// The hex mask (`rps_cpus` format: 32-bit groups, most significant
/// first, comma-separated) of the CPUs in a `cpu/online` list such as
/// `0-3,6`. None if the list does not parse or is empty.
pub fn mask_of(online: &str) -> Option<String> {
    let mut cpus = Vec::new();
    for part in online.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let c = part.parse::<usize>().ok()?;
                (c, c)
            }
        };
        if a > b || b >= 8192 {
            return None;
        }
        cpus.extend(a..=b);
    }
    let max = *cpus.iter().max()?;
    let mut words = vec![0u32; max / 32 + 1];
    for c in cpus {
        words[c / 32] |= 1 << (c % 32);
    }
    Some(
        words
            .iter()
            .rev()
            .map(|w| format!("{w:08x}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Lets every online CPU take `dev`'s receive work, on each of its
/// receive queues. `sys` is normally `/sys`.
pub fn spread(sys: &Path, dev: &str, index: u32) -> Result<(), KernelError> {
    let online_path = sys.join("devices/system/cpu/online");
    let online = std::fs::read_to_string(&online_path)
        .map_err(|e| KernelError::io(format!("read {}", online_path.display()), e))?;
    // One CPU: nowhere to steer to.
    if online.trim().parse::<usize>().is_ok() {
        return Ok(());
    }
    let mask = mask_of(&online)
        .ok_or_else(|| KernelError::Other(format!("cannot parse CPU list {online:?}")))?;
    let link = sys.join("class/net").join(dev);
    // Everything below goes through one handle on the link's directory, so
    // the link checked is the link written: a link renamed, or deleted and
    // its name reused, between the check and the writes leaves the handle
    // on the old directory, where every write fails.
    let at = |what: &str, e: nix::Error| {
        KernelError::io(
            format!("{what} {}", link.display()),
            std::io::Error::from(e),
        )
    };
    let dir = open(
        &link,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| at("open", e))?;
    // A sysfs mounted for another namespace would show another link (or
    // none) under this name.
    let mut seen = String::new();
    if let Ok(fd) = openat(
        &dir,
        "ifindex",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        let _ = File::from(fd).read_to_string(&mut seen);
    }
    if seen.trim() != index.to_string() {
        return Err(KernelError::Other(format!(
            "{}: not link #{index} of this namespace",
            link.display()
        )));
    }
    let queues = link.join("queues");
    let rd = std::fs::read_dir(&queues)
        .map_err(|e| KernelError::io(format!("read {}", queues.display()), e))?;
    for q in rd.flatten() {
        let name = q.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("rx-") {
            let rel = format!("queues/{name}/rps_cpus");
            let fd = openat(
                &dir,
                rel.as_str(),
                OFlag::O_WRONLY | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| at(&format!("open {rel} in"), e))?;
            File::from(fd)
                .write_all(mask.as_bytes())
                .map_err(|e| KernelError::io(format!("write {rel} in {}", link.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_of_cpu_lists() {
        assert_eq!(mask_of("0-1\n").as_deref(), Some("00000003"));
        assert_eq!(mask_of("0").as_deref(), Some("00000001"));
        assert_eq!(mask_of("0-3,6").as_deref(), Some("0000004f"));
        assert_eq!(mask_of("0-33").as_deref(), Some("00000003,ffffffff"));
        assert_eq!(mask_of(""), None);
        assert_eq!(mask_of("3-1"), None);
        assert_eq!(mask_of("x"), None);
    }

    #[test]
    fn refuses_a_link_of_another_namespace() {
        let d = std::env::temp_dir().join(format!("weft-rps-{}", std::process::id()));
        let q = d.join("class/net/veth1/queues/rx-0");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::create_dir_all(d.join("devices/system/cpu")).unwrap();
        std::fs::write(d.join("devices/system/cpu/online"), "0-1\n").unwrap();
        std::fs::write(d.join("class/net/veth1/ifindex"), "7\n").unwrap();
        std::fs::write(q.join("rps_cpus"), "0\n").unwrap();
        assert!(spread(&d, "veth1", 8).is_err());
        assert_eq!(std::fs::read_to_string(q.join("rps_cpus")).unwrap(), "0\n");
        spread(&d, "veth1", 7).unwrap();
        assert_eq!(
            std::fs::read_to_string(q.join("rps_cpus")).unwrap(),
            "00000003"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
