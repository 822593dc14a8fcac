//! Secure Boot templates: the PK, KEK, db and dbx a new VM's variable store starts
//! with.
//!
//! - `microsoft`: Microsoft's keys, as Hyper-V and Azure confidential VMs ship them:
//!   PK "Windows OEM Devices PK"; KEK "Microsoft Corporation KEK CA 2011" and "KEK 2K
//!   CA 2023"; db the Windows production CAs (PCA 2011, Windows UEFI CA 2023) and the
//!   third-party UEFI CAs (2011, 2023); dbx Microsoft's published revocation list.
//!   Boots Windows and shim-based Linux.
//! - `linux`: the same PK, KEK and dbx; db only the third-party UEFI CAs, so Linux
//!   distributions that boot through Microsoft-signed shim (Debian, Ubuntu, Fedora,
//!   RHEL, SUSE) boot and Windows boot managers do not.
//! - custom: the owner's own PK, KEK, db and dbx ([`custom`]).
//!
//! The certificates are Microsoft's published DER files (`certs/microsoft`, provenance
//! in its MANIFEST.md), embedded in the binary.

use tcg_eventlog::Guid;

use crate::Error;
use crate::authvar::{AuthenticatedUpdate, EfiTime, SECURE_BOOT_ATTRIBUTES};
use crate::esl::{Entry, MICROSOFT_OWNER, Signature, SignatureDb};
use crate::varstore::{SECURE_BOOT_ENABLE_GUID, Variable, VariableStore, secure_boot_namespace};

const OEM_DEVICES_PK: &[u8] = include_bytes!("../certs/microsoft/oem-devices-pk.der");
const KEK_2011: &[u8] = include_bytes!("../certs/microsoft/kek-ca-2011.der");
const KEK_2023: &[u8] = include_bytes!("../certs/microsoft/kek-2k-ca-2023.der");
const WINDOWS_PCA_2011: &[u8] = include_bytes!("../certs/microsoft/windows-pca-2011.der");
const WINDOWS_UEFI_CA_2023: &[u8] = include_bytes!("../certs/microsoft/windows-uefi-ca-2023.der");
const UEFI_CA_2011: &[u8] = include_bytes!("../certs/microsoft/uefi-ca-2011.der");
const UEFI_CA_2023: &[u8] = include_bytes!("../certs/microsoft/uefi-ca-2023.der");
const DBX_UPDATE: &[u8] = include_bytes!("../certs/microsoft/dbx-update-amd64.bin");

/// A built-in template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// Windows and third-party (shim) boot loaders.
    Microsoft,
    /// Third-party (shim) boot loaders only.
    Linux,
}

impl std::str::FromStr for Template {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "microsoft" => Ok(Self::Microsoft),
            "linux" => Ok(Self::Linux),
            other => Err(Error::Usage(format!(
                "unknown template {other:?} (microsoft, linux; or give --pk/--kek/--db for a custom one)"
            ))),
        }
    }
}

fn certs(owner: Guid, ders: &[&[u8]]) -> SignatureDb {
    SignatureDb {
        entries: ders
            .iter()
            .map(|d| Entry {
                owner,
                signature: Signature::X509(d.to_vec()),
            })
            .collect(),
    }
}

/// Microsoft's published dbx (the payload of its signed update).
pub fn microsoft_dbx() -> Result<SignatureDb, Error> {
    SignatureDb::parse(AuthenticatedUpdate::parse(DBX_UPDATE)?.payload)
}

/// The keys of a built-in template.
pub fn keys(template: Template) -> Result<Keys, Error> {
    let ms = MICROSOFT_OWNER;
    let db: &[&[u8]] = match template {
        Template::Microsoft => &[
            WINDOWS_PCA_2011,
            WINDOWS_UEFI_CA_2023,
            UEFI_CA_2011,
            UEFI_CA_2023,
        ],
        Template::Linux => &[UEFI_CA_2011, UEFI_CA_2023],
    };
    Ok(Keys {
        pk: certs(ms, &[OEM_DEVICES_PK]),
        kek: certs(ms, &[KEK_2011, KEK_2023]),
        db: certs(ms, db),
        dbx: microsoft_dbx()?,
    })
}

/// PK, KEK, db and dbx.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// The platform key (one certificate).
    pub pk: SignatureDb,
    /// Key exchange keys.
    pub kek: SignatureDb,
    /// Allowed signatures.
    pub db: SignatureDb,
    /// Forbidden signatures.
    pub dbx: SignatureDb,
}

/// Checks owner-supplied keys: PK exactly one certificate, KEK only certificates, db
/// and dbx non-empty where it matters.
pub fn custom(keys: Keys) -> Result<Keys, Error> {
    let only_certs = |db: &SignatureDb| {
        db.entries
            .iter()
            .all(|e| matches!(e.signature, Signature::X509(_)))
    };
    if keys.pk.entries.len() != 1 || !only_certs(&keys.pk) {
        return Err(Error::Usage(
            "PK must be exactly one X.509 certificate".into(),
        ));
    }
    if keys.kek.entries.is_empty() || !only_certs(&keys.kek) {
        return Err(Error::Usage(
            "KEK must hold at least one X.509 certificate and nothing else".into(),
        ));
    }
    if keys.db.entries.is_empty() {
        return Err(Error::Usage("db is empty: nothing could boot".into()));
    }
    Ok(keys)
}

/// A variable store holding `keys` with Secure Boot on (`SecureBootEnable` = 1 and
/// `CustomMode` = 0, so firmware is in user mode), written at `time`.
pub fn store(keys: &Keys, time: EfiTime) -> VariableStore {
    let mut store = VariableStore::default();
    for (name, db) in [
        ("PK", &keys.pk),
        ("KEK", &keys.kek),
        ("db", &keys.db),
        ("dbx", &keys.dbx),
    ] {
        if db.entries.is_empty() {
            continue;
        }
        store.set(Variable {
            name: name.into(),
            guid: secure_boot_namespace(name),
            attributes: SECURE_BOOT_ATTRIBUTES,
            time: time.to_bytes(),
            data: db.encode(),
            digest: None,
        });
    }
    for (name, guid, value) in [
        ("SecureBootEnable", SECURE_BOOT_ENABLE_GUID, 1u8),
        ("CustomMode", CUSTOM_MODE_GUID, 0u8),
    ] {
        store.set(Variable {
            name: name.into(),
            guid,
            attributes: 0x3, // NV | BS
            time: [0; 16],
            data: vec![value],
            digest: None,
        });
    }
    store
}

/// `EDKII_CUSTOM_MODE_GUID`.
pub const CUSTOM_MODE_GUID: Guid = Guid::from_fields(
    0xc076_ec0c,
    0x7028,
    0x4399,
    [0xa0, 0x72, 0x71, 0xee, 0x5c, 0x44, 0x8b, 0x9f],
);
