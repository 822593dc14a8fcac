//! What a confidential VM can be ordered as, and what it costs.
//!
//! - [`sizes`]: every size of the DCasv5, DCadsv5, ECasv5 and ECadsv5 series and the
//!   two isolated EC96i sizes, with the vCPUs, memory and temporary disk Azure
//!   publishes for them (sources in the module). All are AMD SEV-SNP sizes.
//! - [`regions`]: the default region list (regions with SNP hosts, and one without).
//! - [`images`]: the OS image catalog, each entry with its Secure Boot template.
//! - [`prices`]: the price table (replaceable; the defaults are dated and sourced).
//!
//! This crate holds facts only; the control plane decides what a request may do with
//! them.

#![forbid(unsafe_code)]

pub mod images;
pub mod prices;
pub mod regions;
pub mod sizes;

pub use images::{Image, OsType};
pub use prices::{PriceError, PriceTable, Quote};
pub use regions::Region;
pub use sizes::{Series, Size};
