//! The pure core of weft: types, validation and the desired-state compilers.
//!
//! Nothing here reads or writes the kernel or the filesystem. Every function
//! takes its inputs as values and returns values, so all of it is unit-tested
//! without root.

pub mod cni;
pub mod ipam;
pub mod nft;
