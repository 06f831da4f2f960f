use std::io;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("nft: {message}")]
    Nft {
        failure: NftFailure,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

/// What an `nft` failure means. The binary reports only text, so it is
/// read once, here, where nft's message arrives; callers branch on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftFailure {
    /// A table, chain, set or element named does not exist (ENOENT).
    Missing,
    /// Something added already exists (EEXIST).
    Exists,
    /// Something deleted is still in use (EBUSY).
    Busy,
    Other,
}

impl NftFailure {
    fn of(message: &str) -> NftFailure {
        // nft prints strerror() of the kernel's answer.
        if message.contains("No such file or directory") {
            NftFailure::Missing
        } else if message.contains("File exists") {
            NftFailure::Exists
        } else if message.contains("Device or resource busy") {
            NftFailure::Busy
        } else {
            NftFailure::Other
        }
    }
}

impl KernelError {
    /// An `nft` failure from its message.
    pub fn nft(message: impl Into<String>) -> Self {
        let message = message.into();
        KernelError::Nft {
            failure: NftFailure::of(&message),
            message,
        }
    }

    /// What an `nft` failure means; None for other errors.
    pub fn nft_failure(&self) -> Option<NftFailure> {
        match self {
            KernelError::Nft { failure, .. } => Some(*failure),
            _ => None,
        }
    }

    pub fn io(op: impl Into<String>, source: io::Error) -> Self {
        KernelError::Io {
            op: op.into(),
            source,
        }
    }

    pub fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        KernelError::Netlink {
            op: op.into(),
            source,
        }
    }

    /// The positive errno behind the failure, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            KernelError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc_errno::ENOENT | libc_errno::ENODEV | libc_errno::ESRCH)
        ) || matches!(self, KernelError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc_errno::EEXIST)
    }
}

/// The few errno values we branch on (nix re-exports them, but plain numbers
/// keep this file free of platform enums).
pub mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EADDRNOTAVAIL: i32 = 99;
}
