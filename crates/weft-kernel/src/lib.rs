//! The one crate that touches the kernel: netlink, network namespaces,
//! nftables, sysctls and the on-disk IPAM store with its locks.
//!
//! Everything above this crate deals in values from `weft-core`; everything
//! here is a thin, parameterised wrapper (every host path is an argument) so
//! tests can point it at temp dirs and throwaway namespaces.

pub mod clock;
pub mod conntrack;
pub mod error;
pub mod ipam_store;
pub mod net;
pub mod netns;
pub mod nft;
pub mod nft_elements;
pub mod overlay;
pub mod rps;
pub mod sysctl;
#[cfg(feature = "testing")]
pub mod testing;
pub mod traits;

pub use error::KernelError;
