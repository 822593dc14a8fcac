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
//! - [`agent`]: what the control plane asks of a host agent (the attested boot);
//! - [`remote`]: host agents in processes of their own (`cvm host run`), reached
//!   over HTTP wherever they registered.
//!
//! What this release does not do yet, and says so in the VM's events
//! (`not_enforced`): pre-encrypt an OS disk and unlock it at boot, and check a
//! customer key against the key vault.

#![forbid(unsafe_code)]

pub mod agent;
pub mod artifact;
pub mod local;
pub mod remote;
pub mod server;
pub mod service;
pub mod store;
pub mod validate;

pub use service::{Caller, Control, ControlConfig, DEFAULT_SAGA_LEASE, OpenError, Role};

/// Runs the control plane's parsers on `data` (a fuzz target's entry point): the
/// contract's request bodies, the create request's validation, and the price table
/// with a quote for every size. Must never panic.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<control_api::CreateVmRequest>(data)
        && let Ok(spec) = validate::validate(&req, "eastus")
    {
        let _ = catalog::PriceTable::default_table().quote(
            spec.size,
            &spec.region,
            spec.image.os,
            spec.encryption == validate::Encryption::DiskWithGuestState,
            spec.os_disk_gib,
        );
    }
    let _ = serde_json::from_slice::<control_api::PriceRequest>(data);
    let _ = serde_json::from_slice::<control_api::RegisterHostRequest>(data);
    let _ = serde_json::from_slice::<control_api::RegisterAgentRequest>(data);
    // A host agent's answers (`crate::remote` parses them).
    let _ = serde_json::from_slice::<agent::wire::StartLine>(data);
    let _ = serde_json::from_slice::<agent::wire::Outcome>(data);
    let _ = serde_json::from_slice::<agent::BootSpec>(data);
    let _ = serde_json::from_slice::<control_api::Vm>(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(table) = catalog::PriceTable::parse(text)
    {
        for size in catalog::sizes::ALL {
            for os in [catalog::OsType::Linux, catalog::OsType::Windows] {
                let _ = table.quote(size, "eastus", os, true, validate::MAX_OS_DISK_GIB);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_parse_survives_the_seeds_and_their_truncations() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/control");
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        seeds.push(catalog::prices::DEFAULT_TABLE.as_bytes().to_vec());
        for s in seeds {
            for cut in 0..=s.len() {
                super::fuzz_parse(&s[..cut]);
            }
        }
    }
}
