//! sysctl reads and writes, by slash-separated key (`net/ipv4/ip_forward`, so
//! interface names with dots survive). `root` is normally `/proc/sys`; a namespace's values are
//! reached by writing from a thread inside it (see `NetNs::run`).

use crate::error::KernelError;
use std::path::Path;

pub fn write(root: &Path, key: &str, value: &str) -> Result<(), KernelError> {
    let path = root.join(key);
    std::fs::write(&path, value)
        .map_err(|e| KernelError::io(format!("write {}", path.display()), e))
}

pub fn read(root: &Path, key: &str) -> Result<String, KernelError> {
    let path = root.join(key);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| KernelError::io(format!("read {}", path.display()), e))
}
