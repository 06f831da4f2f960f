//! The CNI protocol as the spec (1.1.0) defines it: versions, configuration,
//! arguments, results and errors.

pub mod args;
pub mod config;
pub mod error;
pub mod result;
pub mod version;

pub use args::CniArgs;
pub use config::{NetConf, PortMapping};
pub use error::{CniError, Code};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::Version;
