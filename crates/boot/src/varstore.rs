//! A VM's UEFI variable store: the non-volatile variables its firmware keeps (PK, KEK,
//! db, dbx, SecureBootEnable, boot entries, …).
//!
//! Its serialized form is the JSON that QEMU's `uefi-vars` device and `virt-fw-vars`
//! read and write (`{"version": 2, "variables": [{"name", "guid", "attr", "data",
//! "time"}]}`, data and time in hex), so a store can be handed to those tools as it is.
//! opencvm keeps it in the VM's VMGS file (file 1, `BIOS_NVRAM`) or in a file, and
//! converts it to and from an OVMF variable store image ([`crate::ovmf`]).

use serde::{Deserialize, Serialize};
use tcg_eventlog::Guid;

use crate::Error;
use crate::authvar::EfiTime;
use crate::esl::{SignatureDb, parse_guid};

/// `EDKII_SECURE_BOOT_ENABLE_GUID` (edk2's `SecureBootEnable`, NV|BS, one byte).
pub const SECURE_BOOT_ENABLE_GUID: Guid = Guid::from_fields(
    0xf0a3_0bc7,
    0xaf08,
    0x4556,
    [0x99, 0xc4, 0x00, 0x10, 0x09, 0xc9, 0x3a, 0x44],
);
/// shim's variable namespace (`MokList`, `SbatLevel`, …).
pub const SHIM_LOCK_GUID: Guid = Guid::from_fields(
    0x605d_ab50,
    0xe046,
    0x4300,
    [0xab, 0xb6, 0x3d, 0xd8, 0x10, 0xdd, 0x8b, 0x23],
);
/// Stores larger than this are refused (a 4M OVMF image holds 256 KiB of variables).
pub const MAX_STORE_JSON: usize = 8 << 20;
/// More variables than this are refused.
pub const MAX_VARIABLES: usize = 4096;

/// One variable.
#[derive(Clone, PartialEq, Eq)]
pub struct Variable {
    /// The name (UTF-16 in firmware).
    pub name: String,
    /// The vendor GUID.
    pub guid: Guid,
    /// The attributes (0x27 for PK/KEK/db/dbx).
    pub attributes: u32,
    /// The `EFI_TIME` of the last authenticated write (zero for other variables).
    pub time: [u8; 16],
    /// The value.
    pub data: Vec<u8>,
    /// The `digest` field of QEMU's JSON (its record of the certificate that last
    /// wrote a private authenticated variable), kept as read.
    pub digest: Option<Vec<u8>>,
}

impl std::fmt::Debug for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variable")
            .field("name", &self.name)
            .field("guid", &self.guid.to_string())
            .field("attributes", &format_args!("{:#x}", self.attributes))
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// The variables of one VM, in write order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VariableStore {
    /// The variables; a (name, GUID) pair appears at most once.
    pub variables: Vec<Variable>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonStore {
    version: u32,
    variables: Vec<JsonVariable>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonVariable {
    name: String,
    guid: String,
    attr: u32,
    data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
}

/// `EFI_VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS`.
const TIME_BASED: u32 = 0x20;

impl VariableStore {
    /// The variable `name` in `guid`.
    pub fn get(&self, name: &str, guid: Guid) -> Option<&Variable> {
        self.variables
            .iter()
            .find(|v| v.name == name && v.guid == guid)
    }

    /// Sets (replaces) a variable, keeping its position when it exists.
    pub fn set(&mut self, v: Variable) {
        match self
            .variables
            .iter_mut()
            .find(|o| o.name == v.name && o.guid == v.guid)
        {
            Some(slot) => *slot = v,
            None => self.variables.push(v),
        }
    }

    /// The signature database held by PK, KEK (global namespace), db or dbx (image
    /// security database); empty when the variable is absent.
    pub fn signature_db(&self, name: &str) -> Result<SignatureDb, Error> {
        match self.get(name, secure_boot_namespace(name)) {
            Some(v) => SignatureDb::parse(&v.data),
            None => Ok(SignatureDb::default()),
        }
    }

    /// Whether firmware boots this store with Secure Boot on: PK is enrolled and
    /// edk2's `SecureBootEnable` is 1 (edk2 creates it as 1 when PK exists and it does
    /// not).
    pub fn secure_boot(&self) -> bool {
        let pk = self
            .get("PK", tcg_eventlog::Guid::EFI_GLOBAL_VARIABLE)
            .is_some_and(|v| !v.data.is_empty());
        let enable = self
            .get("SecureBootEnable", SECURE_BOOT_ENABLE_GUID)
            .map(|v| v.data.first() == Some(&1))
            .unwrap_or(true);
        pk && enable
    }

    /// The QEMU `uefi-vars` JSON of this store.
    pub fn to_json(&self) -> String {
        let store = JsonStore {
            version: 2,
            variables: self
                .variables
                .iter()
                .map(|v| JsonVariable {
                    name: v.name.clone(),
                    guid: v.guid.to_string(),
                    attr: v.attributes,
                    data: hex::encode(&v.data),
                    time: (v.attributes & TIME_BASED != 0 || v.time != [0; 16])
                        .then(|| hex::encode(v.time)),
                    digest: v.digest.as_ref().map(hex::encode),
                })
                .collect(),
        };
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string_pretty(&store).unwrap_or_default()
    }

    /// Reads a store from QEMU `uefi-vars` JSON (version 2).
    pub fn from_json(text: &[u8]) -> Result<Self, Error> {
        if text.len() > MAX_STORE_JSON {
            return Err(Error::Store(format!("over {MAX_STORE_JSON} bytes")));
        }
        let store: JsonStore =
            serde_json::from_slice(text).map_err(|e| Error::Store(e.to_string()))?;
        if store.version != 2 {
            return Err(Error::Store(format!(
                "version {} (only 2 is read)",
                store.version
            )));
        }
        if store.variables.len() > MAX_VARIABLES {
            return Err(Error::Store(format!("more than {MAX_VARIABLES} variables")));
        }
        let mut out = Self::default();
        for v in store.variables {
            let bad = |what: &str| Error::Store(format!("variable {:?}: {what}", v.name));
            let guid = parse_guid(&v.guid).map_err(|_| bad("malformed guid"))?;
            let data = hex::decode(&v.data).map_err(|_| bad("data is not hex"))?;
            let mut time = [0u8; 16];
            if let Some(t) = &v.time {
                let bytes = hex::decode(t).map_err(|_| bad("time is not hex"))?;
                if bytes.len() != 16 {
                    return Err(bad("time is not a 16-byte EFI_TIME"));
                }
                time.copy_from_slice(&bytes);
            }
            let digest = v
                .digest
                .as_deref()
                .map(hex::decode)
                .transpose()
                .map_err(|_| bad("digest is not hex"))?;
            if v.name.is_empty() || out.get(&v.name, guid).is_some() {
                return Err(bad("empty or repeated name"));
            }
            out.variables.push(Variable {
                name: v.name,
                guid,
                attributes: v.attr,
                time,
                data,
                digest,
            });
        }
        Ok(out)
    }

    /// The timestamp of an authenticated variable, when it has one.
    pub fn time_of(&self, name: &str, guid: Guid) -> Option<EfiTime> {
        self.get(name, guid)
            .filter(|v| v.attributes & TIME_BASED != 0)
            .and_then(|v| EfiTime::parse(&v.time).ok())
    }
}

/// The namespace of a Secure Boot variable: the global one for PK and KEK, the image
/// security database for db, dbx, dbt and dbr.
pub fn secure_boot_namespace(name: &str) -> Guid {
    match name {
        "PK" | "KEK" => tcg_eventlog::Guid::EFI_GLOBAL_VARIABLE,
        _ => tcg_eventlog::Guid::IMAGE_SECURITY_DATABASE,
    }
}

impl VariableStore {
    /// Applies a time-based authenticated update of PK, KEK, db, dbx or dbt, as
    /// `SetVariable` does in user mode: the update must verify under PK (for PK and
    /// KEK) or under PK or a KEK certificate (for the databases); without
    /// `APPEND_WRITE` its timestamp must be later than the variable's, and an empty
    /// payload deletes the variable; with it, the payload's entries not already present
    /// are appended and the later timestamp kept. Returns the subject the update
    /// verified under.
    pub fn apply_update(
        &mut self,
        name: &str,
        update: &[u8],
        attributes: u32,
    ) -> Result<String, Error> {
        use crate::authvar::{APPEND_WRITE, AuthenticatedUpdate};
        if !["PK", "KEK", "db", "dbx", "dbt"].contains(&name) {
            return Err(Error::Usage(format!(
                "{name} is not a Secure Boot variable (PK, KEK, db, dbx, dbt)"
            )));
        }
        if attributes & TIME_BASED == 0 {
            return Err(Error::Usage(
                "the attributes lack TIME_BASED_AUTHENTICATED_WRITE (0x20)".into(),
            ));
        }
        let guid = secure_boot_namespace(name);
        let update = AuthenticatedUpdate::parse(update)?;
        let payload = SignatureDb::parse(update.payload)?;
        let mut authorities = self.signature_db("PK")?;
        if authorities.entries.is_empty() {
            return Err(Error::AuthVariable(
                "no PK is enrolled (setup mode): updates are not verified here; create the store from a template".into(),
            ));
        }
        if !matches!(name, "PK" | "KEK") {
            authorities
                .entries
                .extend(self.signature_db("KEK")?.entries);
        }
        let append = attributes & APPEND_WRITE != 0;
        let stored_attributes = attributes & !APPEND_WRITE;
        // The stored variable's attributes must match and its timestamp must be
        // readable: an update is never applied against an unknown time.
        let previous = match self.get(name, guid) {
            Some(v) => {
                if v.attributes != stored_attributes {
                    return Err(Error::AuthVariable(format!(
                        "attributes {stored_attributes:#x} differ from the stored variable's {:#x}",
                        v.attributes
                    )));
                }
                Some(EfiTime::parse(&v.time).map_err(|_| {
                    Error::AuthVariable(format!("the stored {name} has a malformed timestamp"))
                })?)
            }
            None => None,
        };
        if name == "PK" && append {
            return Err(Error::AuthVariable(
                "PK cannot be appended to: it holds exactly one certificate".into(),
            ));
        }
        if name == "PK"
            && !(payload.entries.is_empty()
                || (payload.entries.len() == 1
                    && matches!(payload.entries[0].signature, crate::esl::Signature::X509(_))))
        {
            return Err(Error::AuthVariable(
                "a PK update must hold exactly one X.509 certificate (or nothing, to delete PK)"
                    .into(),
            ));
        }
        let subject = update.verify(name, guid, attributes, &authorities, previous)?;
        match self
            .variables
            .iter()
            .position(|v| v.name == name && v.guid == guid)
        {
            Some(i) if append => {
                // As edk2: entries already present are dropped from each new list (a
                // list left empty goes), the rest is appended after the stored bytes,
                // which stay as they are.
                let existing = SignatureDb::parse(&self.variables[i].data)?;
                let new =
                    crate::esl::filter_lists(update.payload, |e| !existing.entries.contains(e))?;
                let v = &mut self.variables[i];
                v.data.extend_from_slice(&new);
                if EfiTime::parse(&v.time).is_ok_and(|t| update.time > t) {
                    v.time = update.time.to_bytes();
                }
            }
            // An empty payload deletes the variable.
            Some(i) if update.payload.is_empty() => {
                self.variables.remove(i);
            }
            _ => {
                if !update.payload.is_empty() {
                    // Stored as sent: these are the bytes firmware measures.
                    self.set(Variable {
                        name: name.into(),
                        guid,
                        attributes: stored_attributes,
                        time: update.time.to_bytes(),
                        data: update.payload.to_vec(),
                        digest: None,
                    });
                }
            }
        }
        Ok(subject)
    }
}
