//! Network namespaces: open one by path and run code inside it.
//!
//! `setns` changes the calling *thread*; running the work on a fresh thread
//! means the caller's own namespace can never be left switched by an early
//! return or a panic.

use crate::error::KernelError;
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    pub fn open(path: &Path) -> Result<NetNs, KernelError> {
        let file = File::open(path)
            .map_err(|e| KernelError::io(format!("open netns {}", path.display()), e))?;
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a new thread that has entered this namespace.
    pub fn run<T: Send, F: FnOnce() -> Result<T, KernelError> + Send>(
        &self,
        f: F,
    ) -> Result<T, KernelError> {
        let fd = self.file.as_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| KernelError::io("setns", std::io::Error::from(e)))?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(KernelError::Other("namespace worker panicked".into())))
        })
    }
}
