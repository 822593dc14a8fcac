//! Azure's HCL report: what the paravisor writes to vTPM NV index `0x01400001`.
//!
//! Layout (offsets from the start of the NV blob, little-endian):
//!
//! | offset | size | field |
//! |--------|------|-------|
//! | 0x000  | 32   | header: signature `HCLA` (u32 0x414c4348), version (1 or 2), report_size, request_type, status, reserved\[3\] |
//! | 0x020  | 1184 | the SNP attestation report |
//! | 0x4C0  | 20   | IGVM request data: data_size, version (1), report_type (2 = SNP), report_data_hash_type (1 SHA-256, 2 SHA-384, 3 SHA-512), variable_data_size |
//! | 0x4D4  | var  | runtime claims (JSON) |
//!
//! followed by zero padding up to the NV index size. Header version 2 is what newer
//! Azure paravisors write (OpenVMM's `IgvmAttestRequestHeader`): its layout is version
//! 1's, so both parse and verify the same way; any other header version is refused.
//! The IGVM request data stays at version 1 in this blob (version 2 of the *request*
//! data adds a capability bitmap for host requests only) and other versions are refused. The SNP report binds the runtime
//! claims: `REPORT_DATA` starts with their hash (type above) and the rest is zero.

use aws_lc_rs::digest;
use serde_json::Value;

use crate::report::{AttestationReport, REPORT_LEN, ReportError};

const HEADER_LEN: usize = 0x20;
const IGVM_OFFSET: usize = HEADER_LEN + REPORT_LEN;
const IGVM_LEN: usize = 0x14;
const VAR_OFFSET: usize = IGVM_OFFSET + IGVM_LEN;
/// `HCLA` as a little-endian u32.
pub const HCL_SIGNATURE: u32 = 0x414c_4348;
/// Largest runtime-claims document accepted (the NV index is a few KiB).
pub const MAX_VAR_DATA: usize = 64 * 1024;

/// Why an HCL report could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HclError {
    /// Shorter than the fixed part, or than the sizes it declares.
    #[error("HCL report truncated: need {need} bytes, got {got}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// Not an HCL report.
    #[error("not an HCL report (signature {0:#010x})")]
    Signature(u32),
    /// A field holds an unsupported or inconsistent value.
    #[error("HCL report field {field} is {value} ({problem})")]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong.
        problem: &'static str,
    },
    /// Bytes after the runtime claims are not zero padding.
    #[error("HCL report has non-zero bytes after the runtime claims at offset {0:#x}")]
    Trailing(usize),
    /// The embedded SNP report is malformed.
    #[error("embedded SNP report: {0}")]
    Report(#[from] ReportError),
    /// The runtime claims are not a JSON object.
    #[error("runtime claims are not a JSON object: {0}")]
    Claims(String),
}

/// The hash that binds the runtime claims into REPORT_DATA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimsHash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl ClaimsHash {
    fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            ClaimsHash::Sha256 => &digest::SHA256,
            ClaimsHash::Sha384 => &digest::SHA384,
            ClaimsHash::Sha512 => &digest::SHA512,
        }
    }
}

/// Lays out an HCL report as Azure's paravisor writes it: header (`report_size` =
/// the bytes up to the end of the claims, request type 2, status 0), `report`, the IGVM
/// request data (SNP, SHA-256) and `claims`, zero-padded to `nv_size`. The caller
/// binds the claims: `report`'s REPORT_DATA must start with SHA-256(`claims`).
/// (Opencvm's vTPM serves it at NV index `0x01400001`.)
pub fn encode(
    report: &[u8; REPORT_LEN],
    claims: &[u8],
    nv_size: usize,
) -> Result<Vec<u8>, HclError> {
    let end = VAR_OFFSET + claims.len();
    if claims.len() > MAX_VAR_DATA || end > nv_size {
        return Err(HclError::Truncated {
            need: end,
            got: nv_size,
        });
    }
    let (Ok(var_size), Ok(total)) = (u32::try_from(claims.len()), u32::try_from(end)) else {
        return Err(HclError::Truncated {
            need: end,
            got: nv_size,
        });
    };
    let mut out = Vec::with_capacity(nv_size);
    for w in [HCL_SIGNATURE, 1, total, 2, 0, 0, 0, 0] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(report);
    for w in [IGVM_LEN as u32 + var_size, 1, 2, 1, var_size] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(claims);
    out.resize(nv_size, 0);
    Ok(out)
}

/// A parsed HCL report.
#[derive(Clone, Debug)]
pub struct HclReport {
    version: u32,
    request_type: u32,
    status: u32,
    report: AttestationReport,
    hash: ClaimsHash,
    var_data: Vec<u8>,
    claims: serde_json::Map<String, Value>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

impl HclReport {
    /// Whether `data` starts like an HCL report.
    pub fn looks_like(data: &[u8]) -> bool {
        data.len() >= 4 && u32_at(data, 0) == HCL_SIGNATURE
    }

    /// Parses an HCL report.
    pub fn parse(data: &[u8]) -> Result<Self, HclError> {
        if data.len() < VAR_OFFSET {
            return Err(HclError::Truncated {
                need: VAR_OFFSET,
                got: data.len(),
            });
        }
        let signature = u32_at(data, 0);
        if signature != HCL_SIGNATURE {
            return Err(HclError::Signature(signature));
        }
        let field = |field, value: u32, problem| HclError::Field {
            field,
            value: value.into(),
            problem,
        };
        let version = u32_at(data, 4);
        if !matches!(version, 1 | 2) {
            return Err(field("version", version, "only versions 1 and 2 are known"));
        }
        let report_size = u32_at(data, 8);
        let request_type = u32_at(data, 12);
        let status = u32_at(data, 16);
        for off in [20, 24, 28] {
            let v = u32_at(data, off);
            if v != 0 {
                return Err(field("reserved", v, "must be zero"));
            }
        }
        let data_size = u32_at(data, IGVM_OFFSET);
        let igvm_version = u32_at(data, IGVM_OFFSET + 4);
        let report_type = u32_at(data, IGVM_OFFSET + 8);
        let hash_type = u32_at(data, IGVM_OFFSET + 12);
        let var_size = u32_at(data, IGVM_OFFSET + 16);
        if igvm_version != 1 {
            return Err(field(
                "igvm.version",
                igvm_version,
                "only version 1 is known",
            ));
        }
        if report_type != 2 {
            return Err(field(
                "igvm.report_type",
                report_type,
                "only 2 (SEV-SNP) is supported",
            ));
        }
        let hash = match hash_type {
            1 => ClaimsHash::Sha256,
            2 => ClaimsHash::Sha384,
            3 => ClaimsHash::Sha512,
            other => return Err(field("igvm.report_data_hash_type", other, "unknown hash")),
        };
        let var_len = var_size as usize;
        if var_len > MAX_VAR_DATA {
            return Err(field("igvm.variable_data_size", var_size, "too large"));
        }
        if data_size as usize != IGVM_LEN + var_len {
            return Err(field(
                "igvm.data_size",
                data_size,
                "does not match variable_data_size",
            ));
        }
        if report_size as usize != VAR_OFFSET + var_len {
            return Err(field(
                "report_size",
                report_size,
                "does not match the sizes inside",
            ));
        }
        let end = VAR_OFFSET + var_len;
        if data.len() < end {
            return Err(HclError::Truncated {
                need: end,
                got: data.len(),
            });
        }
        if let Some(pos) = data[end..].iter().position(|&b| b != 0) {
            return Err(HclError::Trailing(end + pos));
        }
        let report = AttestationReport::parse(&data[HEADER_LEN..IGVM_OFFSET])?;
        let var_data = data[VAR_OFFSET..end].to_vec();
        let claims = match serde_json::from_slice::<Value>(&var_data) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(HclError::Claims("not an object".into())),
            Err(e) => return Err(HclError::Claims(e.to_string())),
        };
        Ok(HclReport {
            version,
            request_type,
            status,
            report,
            hash,
            var_data,
            claims,
        })
    }

    /// Header version.
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Header request type (2 = AK certificate request).
    pub fn request_type(&self) -> u32 {
        self.request_type
    }
    /// Header status.
    pub fn status(&self) -> u32 {
        self.status
    }
    /// The SNP report inside.
    pub fn report(&self) -> &AttestationReport {
        &self.report
    }
    /// The runtime claims as received (the bytes that are hashed).
    pub fn runtime_data(&self) -> &[u8] {
        &self.var_data
    }
    /// The runtime claims.
    pub fn claims(&self) -> &serde_json::Map<String, Value> {
        &self.claims
    }
    /// The hash binding the claims into REPORT_DATA.
    pub fn claims_hash(&self) -> ClaimsHash {
        self.hash
    }

    /// Whether REPORT_DATA is the hash of the runtime claims followed by zeros.
    pub fn runtime_data_bound(&self) -> bool {
        let d = digest::digest(self.hash.algorithm(), &self.var_data);
        let rd = self.report.report_data();
        let n = d.as_ref().len();
        rd[..n] == *d.as_ref() && rd[n..].iter().all(|&b| b == 0)
    }

    /// A key from the claims' `keys` array by `kid` (such as `HCLAkPub`), as a JWK.
    pub fn key(&self, kid: &str) -> Option<&serde_json::Map<String, Value>> {
        self.claims
            .get("keys")?
            .as_array()?
            .iter()
            .filter_map(Value::as_object)
            .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
    }

    /// The RSA modulus and exponent (base64url, as in the JWK) of a claims key.
    pub fn rsa_key_components(&self, kid: &str) -> Option<(&str, &str)> {
        let k = self.key(kid)?;
        if k.get("kty").and_then(Value::as_str) != Some("RSA") {
            return None;
        }
        Some((k.get("n")?.as_str()?, k.get("e")?.as_str()?))
    }

    /// The `vm-configuration` claims.
    pub fn vm_configuration(&self) -> Option<&serde_json::Map<String, Value>> {
        self.claims.get("vm-configuration")?.as_object()
    }

    /// The `user-data` claim decoded from hex (64 bytes when present).
    pub fn user_data(&self) -> Option<Vec<u8>> {
        hex::decode(self.claims.get("user-data")?.as_str()?).ok()
    }
}
