//! An emulated AMD secure processor (AMD-SP) for SEV-SNP.
//!
//! It produces evidence that differs from a real machine's only in the root key that
//! signs it: the same report layout per product, the same certificate shapes, the same
//! launch digest as the SNP firmware computes.
//!
//! - [`launch`]: the launch digest (chained SHA-384 of PAGE_INFO structures).
//! - [`ovmf`] and [`vmsa`]: a measured launch of an OVMF image as QEMU performs it.
//! - [`platform`]: the emulated AMD-SP: chip identity, TCB, key hierarchy, state.
//! - [`guest`]: launch with a policy (page by page, with an ID block), reports,
//!   extended reports, derived keys.
//! - [`idblock`]: the ID block and ID authentication structure.
//! - `certs`: certificates in AMD's shapes under the emulator's roots.

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod certs;
pub mod guest;
pub mod idblock;
pub mod platform;
mod seeded_rsa;

pub mod launch;
pub mod ovmf;
pub mod vmsa;
