//! weft-cni, black box: the built binary is exec'd the way a runtime does,
//! inside a throwaway "node" namespace, against throwaway pod namespaces,
//! and judged by real packets and by what it leaves in the kernel and on
//! disk. Root only; nothing here touches the host's own namespace.
//!
//! One test binary (modules below) so the suite links once.

mod common;

mod basic;
mod chain;
mod errors;
mod fuzz;
mod hardening;
mod ipv6;
mod options;
mod reference;
mod spoof6;
mod stress;
mod versions;
