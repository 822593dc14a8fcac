//! The guest's own evidence, as an Azure confidential VM's guest gathers it, from the
//! VM's vTPM through Debian's tpm2-tools (the image carries them):
//!
//! - the HCL report at NV `0x01400001` (the SNP report and the runtime claims it
//!   binds, `HCLAkPub` among them); with user data, first written to NV `0x01400002`
//!   so that the report is fresh and carries it;
//! - the attestation key's public area (persistent handle `0x81000003`);
//! - a quote by that key over the SHA-256 PCRs 0–23, qualified by the attestation
//!   service's nonce, with the PCR values it covers;
//! - the firmware's event log (securityfs).
//!
//! [`azure_guest_request`] lays them out as MAA's `AzureGuest` request.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use attest_api::AzureGuestRequest;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use serde_json::json;

/// NV index of the HCL report.
pub const NV_REPORT: &str = "0x01400001";
/// NV index whose write refreshes the report with 64 bytes of user data.
pub const NV_USER_DATA: &str = "0x01400002";
/// Persistent handle of the attestation key.
pub const AK_HANDLE: &str = "0x81000003";
/// The PCRs quoted.
pub const PCR_SELECTION: &str =
    "sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23";
/// Where the kernel shows the firmware's event log.
pub const EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// Why evidence could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// A tool could not run or failed.
    #[error("{tool}: {message}")]
    Tool {
        /// Which.
        tool: String,
        /// Its error output, or why it did not run.
        message: String,
    },
    /// A file of the work directory.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The report read from the vTPM.
    #[error("the HCL report at NV 0x01400001: {0}")]
    Report(#[from] snp::hcl::HclError),
    /// What the tools wrote.
    #[error("{0}")]
    Malformed(String),
}

/// The vTPM, through tpm2-tools with TCTI `tcti`, files in `work`.
#[derive(Debug)]
pub struct Tpm {
    tcti: String,
    work: PathBuf,
}

/// A quote and what it covers.
#[derive(Debug)]
pub struct Quote {
    /// The attestation key's TPM2B_PUBLIC.
    pub ak_public: Vec<u8>,
    /// The TPMS_ATTEST.
    pub message: Vec<u8>,
    /// The TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// SHA-256 PCRs 0–23 as the quote read them.
    pub pcrs: Vec<Vec<u8>>,
}

impl Tpm {
    /// The vTPM at `tcti` (`device:/dev/tpmrm0` in a guest), scratch files in `work`
    /// (created).
    pub fn new(tcti: &str, work: &Path) -> Result<Self, EvidenceError> {
        // Root's only: a decrypted transfer key passes through it.
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let io = |source| EvidenceError::Io {
            path: work.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(work)
            .map_err(io)?;
        std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Tpm {
            tcti: tcti.to_string(),
            work: work.to_path_buf(),
        })
    }

    fn tool(&self, args: &[&str]) -> Result<(), EvidenceError> {
        let tool = args.first().copied().unwrap_or_default().to_string();
        let out = Command::new(&tool)
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .current_dir(&self.work)
            .output()
            .map_err(|e| EvidenceError::Tool {
                tool: tool.clone(),
                message: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(EvidenceError::Tool {
                tool,
                message: String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("failed")
                    .chars()
                    .take(300)
                    .collect(),
            })
        }
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, EvidenceError> {
        let path = self.work.join(name);
        std::fs::read(&path).map_err(|source| EvidenceError::Io { path, source })
    }

    /// The HCL report; with `user_data`, a fresh one carrying it (a refresh the vTPM
    /// rate-limits is tried again for a few seconds).
    pub fn report(&self, user_data: Option<&[u8; 64]>) -> Result<Vec<u8>, EvidenceError> {
        if let Some(ud) = user_data {
            let path = self.work.join("user-data.bin");
            std::fs::write(&path, ud).map_err(|source| EvidenceError::Io { path, source })?;
            let mut tries = 0;
            loop {
                match self.tool(&[
                    "tpm2_nvwrite",
                    NV_USER_DATA,
                    "-C",
                    "o",
                    "-i",
                    "user-data.bin",
                ]) {
                    Ok(()) => break,
                    // TPM_RC_RETRY: over the refresh rate.
                    Err(EvidenceError::Tool { message, .. })
                        if message.contains("0x922") && tries < 20 =>
                    {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.tool(&["tpm2_nvread", NV_REPORT, "-C", "o", "-o", "hcl.bin"])?;
        let hcl = self.read("hcl.bin")?;
        snp::hcl::HclReport::parse(&hcl)?;
        Ok(hcl)
    }

    /// A quote by the attestation key over [`PCR_SELECTION`], qualified by `nonce`.
    pub fn quote(&self, nonce: &[u8]) -> Result<Quote, EvidenceError> {
        self.tool(&["tpm2_readpublic", "-c", AK_HANDLE, "-o", "ak.pub"])?;
        self.tool(&[
            "tpm2_quote",
            "-c",
            AK_HANDLE,
            "-l",
            PCR_SELECTION,
            "-q",
            &hex::encode(nonce),
            "-g",
            "sha256",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-o",
            "quote.pcrs",
            "-F",
            "values",
        ])?;
        let values = self.read("quote.pcrs")?;
        if values.len() != 24 * 32 {
            return Err(EvidenceError::Malformed(format!(
                "tpm2_quote wrote {} bytes of PCR values, not 24 SHA-256 digests",
                values.len()
            )));
        }
        Ok(Quote {
            ak_public: self.read("ak.pub")?,
            message: self.read("quote.msg")?,
            signature: self.read("quote.sig")?,
            pcrs: values.chunks(32).map(<[u8]>::to_vec).collect(),
        })
    }
}

/// A decryption key the vTPM holds (RSA-2048, OAEP with SHA-256, never leaving the
/// TPM: `fixedTPM`, `sensitiveDataOrigin`), certified by the attestation key: what a
/// key release wraps to.
#[derive(Debug)]
pub struct EncryptionKey {
    /// Its TPM2B_PUBLIC.
    pub public: Vec<u8>,
    /// The TPMS_ATTEST of TPM2_Certify by the attestation key.
    pub certify_info: Vec<u8>,
    /// Its TPMT_SIGNATURE.
    pub certify_signature: Vec<u8>,
    /// Its size in bytes.
    pub modulus_len: usize,
    context: String,
}

impl Tpm {
    /// A fresh decryption key under the owner's storage primary, certified by the
    /// attestation key (its context file kept under `name` in the work directory).
    pub fn encryption_key(&self, name: &str) -> Result<EncryptionKey, EvidenceError> {
        let f = |ext: &str| format!("{name}.{ext}");
        self.tool(&[
            "tpm2_createprimary",
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "rsa",
            "-c",
            &f("primary.ctx"),
        ])?;
        self.tool(&[
            "tpm2_create",
            "-C",
            &f("primary.ctx"),
            "-G",
            "rsa2048:oaep-sha256:null",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|decrypt",
            "-u",
            &f("pub"),
            "-r",
            &f("priv"),
        ])?;
        self.tool(&[
            "tpm2_load",
            "-C",
            &f("primary.ctx"),
            "-u",
            &f("pub"),
            "-r",
            &f("priv"),
            "-c",
            &f("ctx"),
        ])?;
        self.tool(&[
            "tpm2_certify",
            "-c",
            &f("ctx"),
            "-C",
            AK_HANDLE,
            "-g",
            "sha256",
            "-o",
            &f("certify"),
            "-s",
            &f("certify.sig"),
        ])?;
        Ok(EncryptionKey {
            public: self.read(&f("pub"))?,
            certify_info: self.read(&f("certify"))?,
            certify_signature: self.read(&f("certify.sig"))?,
            modulus_len: 256,
            context: f("ctx"),
        })
    }

    /// Decrypts `ciphertext` (RSA-OAEP, SHA-256) with `key` inside the vTPM.
    pub fn decrypt(
        &self,
        key: &EncryptionKey,
        ciphertext: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, EvidenceError> {
        let input = self.work.join("decrypt.in");
        std::fs::write(&input, ciphertext).map_err(|source| EvidenceError::Io {
            path: input.clone(),
            source,
        })?;
        let done = self.tool(&[
            "tpm2_rsadecrypt",
            "-c",
            &key.context,
            "-s",
            "null",
            "-o",
            "decrypt.out",
            "decrypt.in",
        ]);
        let out = done.and_then(|()| self.read("decrypt.out").map(zeroize::Zeroizing::new));
        let _ = std::fs::remove_file(self.work.join("decrypt.out"));
        let _ = std::fs::remove_file(&input);
        out
    }
}

/// The `AzureGuest` request of the HCL report `hcl`, the chain `chain_pem` of its
/// signer, `quote` (qualified by `nonce`), the firmware's `event_log` and, for a key
/// release, the encryption key `enc` (the token then names it in
/// `x-ms-runtime.keys`).
pub fn azure_guest_request(
    hcl: &[u8],
    chain_pem: &str,
    quote: &Quote,
    event_log: Option<&[u8]>,
    nonce: &str,
    os_distro: &str,
    enc: Option<&EncryptionKey>,
) -> Result<AzureGuestRequest, EvidenceError> {
    let report = snp::hcl::HclReport::parse(hcl)?;
    let proof = json!({
        "SnpReport": B64URL.encode(report.report().as_bytes()),
        "VcekCertChain": B64.encode(chain_pem),
    });
    let pcrs: Vec<_> = quote
        .pcrs
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"Index": i, "Digest": B64.encode(d)}))
        .collect();
    let mut info = json!({
        "AttestationProtocolVersion": "2.0",
        "IsolationInfo": {
            "Type": "SevSnp",
            "Evidence": {
                "Proof": B64.encode(proof.to_string()),
                "RunTimeData": B64.encode(report.runtime_data()),
            },
        },
        "OSType": B64.encode("Linux"),
        "OSDistro": B64.encode(os_distro),
        "TpmInfo": {
            "AikPub": B64.encode(&quote.ak_public),
            "PcrQuote": B64.encode(&quote.message),
            "PcrSignature": B64.encode(&quote.signature),
            "PcrSet": (0..24).collect::<Vec<u32>>(),
            "PCRs": pcrs,
        },
    });
    if let Some(log) = event_log {
        info["TcgLogs"] = B64.encode(log).into();
    }
    if let Some(k) = enc {
        info["TpmInfo"]["EncKeyPub"] = B64.encode(&k.public).into();
        info["TpmInfo"]["EncKeyCertifyInfo"] = B64.encode(&k.certify_info).into();
        info["TpmInfo"]["EncKeyCertifyInfoSignature"] = B64.encode(&k.certify_signature).into();
    }
    Ok(AzureGuestRequest {
        attestation_info: B64URL.encode(info.to_string()),
        nonce: Some(nonce.to_string()),
        draft_policy: None,
    })
}

/// The payload of a JWT `token`, not verified (for display: relying parties verify).
pub fn token_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&B64URL.decode(payload).ok()?).ok()
}
