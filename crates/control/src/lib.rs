//! The control plane: confidential VMs in Azure's model, for tenants, on SNP hosts.
//!
//! - [`validate`]: what a create request may ask for (every refusal, stable codes);
//! - [`store`]: tenants, credentials, regions, hosts, VMs and their events, image
//!   artifacts, on SQLite or PostgreSQL; placement as a conditional write;
//! - [`artifact`]: importing a disk image for a catalog entry (its boot loader must
//!   pass Secure Boot under the entry's template);
//! - [`service`]: the operations, with access checked from the contract's table;
//! - [`server`]: the HTTP API (`openapi/control.json`).
//!
//! What this release does not do yet, and says so in every VM's events
//! (`not_enforced`): start a VM (launch through a host's secure processor, attest,
//! release the VMGS key, Secure Boot, unlock the disk), pre-encrypt its OS disk, and
//! check a customer key against the key vault.

#![forbid(unsafe_code)]

pub mod artifact;
pub mod local;
pub mod server;
pub mod service;
pub mod store;
pub mod validate;

pub use service::{Caller, Control, ControlConfig, OpenError, Role};
