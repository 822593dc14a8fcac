//! Secure key release as the attested party sees it.
//!
//! A key in the opencvm key vault with a release policy leaves the vault only wrapped
//! to an RSA key named in an attestation token that meets the policy. The party that
//! wants the key (on our hosts, the VM's vTPM process standing in for the paravisor)
//! therefore:
//!
//! 1. makes a fresh RSA transfer key, which never leaves its memory;
//! 2. asks the secure processor for a report whose REPORT_DATA is the SHA-256 of the
//!    runtime data naming that key (`{"keys": [JWK]}`);
//! 3. has the attestation service appraise the report (`POST /attest/SevSnpVm`), which
//!    returns a token carrying the key in `x-ms-runtime.keys`;
//! 4. asks the vault to release the key to that token (`POST
//!    /keys/{name}/{version}/release`);
//! 5. checks the response is signed by the vault's pinned certificate, names the key
//!    asked for and echoes this request's nonce, and unwraps the key with the transfer
//!    key.
//!
//! What the vault releases depends only on the token, so the policy decides which
//! VM gets which key (ADR 0010 says how a VMGS key is bound to one VM).

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

use std::fmt;

use api_client::ClientError;
use attest_api::{AttestResponse, DataField, SevSnpVmRequest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use keyvault::wrap::{KeyHsm, UnwrappingKey, WrapError};
use keyvault_api::{KeyVaultApi as _, ReleaseRequest};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// RSA modulus size of the transfer key.
const TRANSFER_KEY_BITS: usize = 3072;

/// What the secure processor produced for one request.
pub struct Evidence {
    /// The attestation report (1184 bytes on SEV-SNP).
    pub report: Vec<u8>,
    /// The PEM chain of the key that signed it: VCEK (or VLEK), ASK, ARK.
    pub cert_chain_pem: String,
}

/// Where reports come from: the AMD secure processor (or its emulator).
pub trait EvidenceSource {
    /// A report with `report_data` as REPORT_DATA, and its certificate chain.
    fn snp_evidence(&mut self, report_data: &[u8; 64]) -> Result<Evidence, String>;
}

/// A key version in a vault, named as the vault names it (`kid`):
/// `{vault URL}/keys/{name}/{version}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyId {
    vault: String,
    name: String,
    version: String,
}

impl KeyId {
    /// Parses `{vault URL}/keys/{name}/{version}` (http or https; name and version of
    /// letters, digits, `-` and `_`).
    pub fn parse(s: &str) -> Result<Self, ReleaseError> {
        let bad = |why: &str| ReleaseError::BadKeyId(format!("{s:?}: {why}"));
        let (vault, rest) = s
            .rsplit_once("/keys/")
            .ok_or_else(|| bad("expected VAULT_URL/keys/NAME/VERSION"))?;
        let (name, version) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected VAULT_URL/keys/NAME/VERSION"))?;
        if !(vault.starts_with("http://") || vault.starts_with("https://")) {
            return Err(bad("the vault URL is not http(s)"));
        }
        let word = |w: &str| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !word(name) || !word(version) {
            return Err(bad(
                "the key's name and version are letters, digits, '-' and '_'",
            ));
        }
        Ok(KeyId {
            vault: vault.trim_end_matches('/').to_string(),
            name: name.to_string(),
            version: version.to_string(),
        })
    }

    /// The vault's URL.
    pub fn vault(&self) -> &str {
        &self.vault
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's version.
    pub fn version(&self) -> &str {
        &self.version
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/keys/{}/{}", self.vault, self.name, self.version)
    }
}

/// Why no key was released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The key id is not `VAULT_URL/keys/NAME/VERSION`.
    #[error("key id {0}")]
    BadKeyId(String),
    /// The secure processor gave no report.
    #[error("no attestation report: {0}")]
    Evidence(String),
    /// A service could not be reached or answered unreadably.
    #[error("{what}: {message}")]
    Transport {
        /// Which request.
        what: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The attestation service refused the evidence.
    #[error("the attestation service refused the evidence ({status} {code}): {message}")]
    NotAttested {
        /// HTTP status.
        status: u16,
        /// Its error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The vault refused the release (the token does not meet the key's policy, the
    /// credential may not release, no such key, ...).
    #[error("the key vault refused to release {key} ({status} {code}): {message}")]
    Refused {
        /// The key asked for.
        key: String,
        /// HTTP status.
        status: u16,
        /// Its error code.
        code: String,
        /// Its message, with the failed policy condition when it names one.
        message: String,
    },
    /// The release response is not signed by the pinned vault certificate.
    #[error("the release response is not the vault's")]
    Signature(#[source] jose::JwtError),
    /// The release response is signed but does not answer this request.
    #[error("the release response does not answer this request: {0}")]
    Mismatch(&'static str),
    /// No transfer key could be made.
    #[error("no transfer key could be made")]
    TransferKey(#[source] WrapError),
    /// The released key does not unwrap with the transfer key.
    #[error("the released key does not unwrap")]
    Unwrap(#[source] WrapError),
}

/// A released key's material; zeroized on drop, never printed.
pub struct ReleasedKey(Zeroizing<Vec<u8>>);

impl ReleasedKey {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ReleasedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReleasedKey({} bytes)", self.0.len())
    }
}

/// An attestation token and the transfer key its evidence bound.
pub struct Attested {
    transfer: UnwrappingKey,
    token: String,
}

impl Attested {
    /// The attestation service's token (a JWT).
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for Attested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attested").finish_non_exhaustive()
    }
}

/// Transfer keys made ahead of need: RSA key generation is the slowest part of an
/// attestation (tens to hundreds of milliseconds, varying from key to key), so a
/// background thread keeps a few ready. Each key is handed out once and never again;
/// when none is ready one is made on the spot. The thread ends when this is dropped.
pub struct TransferKeys {
    ready: std::sync::Mutex<std::sync::mpsc::Receiver<UnwrappingKey>>,
}

impl fmt::Debug for TransferKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferKeys").finish_non_exhaustive()
    }
}

impl TransferKeys {
    /// Keeps up to `ahead` keys ready (at least one).
    pub fn spawn(ahead: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(ahead.max(1));
        std::thread::spawn(move || {
            // `send` blocks while `ahead` keys wait, and fails once the pool is gone.
            while let Ok(key) = UnwrappingKey::generate(TRANSFER_KEY_BITS) {
                if tx.send(key).is_err() {
                    return;
                }
            }
        });
        TransferKeys {
            ready: std::sync::Mutex::new(rx),
        }
    }

    /// A fresh transfer key: a ready one, or one made now.
    pub fn take(&self) -> Result<UnwrappingKey, ReleaseError> {
        let ready = self.ready.lock().ok().and_then(|rx| rx.try_recv().ok());
        match ready {
            Some(k) => Ok(k),
            None => UnwrappingKey::generate(TRANSFER_KEY_BITS).map_err(ReleaseError::TransferKey),
        }
    }
}

/// Releases keys through one attestation service and with one vault credential.
pub struct Releaser {
    agent: ureq::Agent,
    attestation: String,
    credential: Zeroizing<String>,
    vault_signer: Vec<u8>,
}

impl fmt::Debug for Releaser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Releaser")
            .field("attestation", &self.attestation)
            .field("credential", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Releaser {
    /// A releaser using `agent` (which must not turn HTTP error statuses into errors:
    /// `http_status_as_error(false)`) against the attestation service at
    /// `attestation_url`, presenting `credential` to the vault and accepting only
    /// release responses signed by the certificate `vault_signer` (DER).
    pub fn new(
        agent: ureq::Agent,
        attestation_url: &str,
        credential: Zeroizing<String>,
        vault_signer: Vec<u8>,
    ) -> Self {
        Releaser {
            agent,
            attestation: attestation_url.trim_end_matches('/').to_string(),
            credential,
            vault_signer,
        }
    }

    /// Attests with evidence from `source` and has the vault release `key`.
    pub fn release(
        &self,
        key: &KeyId,
        source: &mut dyn EvidenceSource,
    ) -> Result<ReleasedKey, ReleaseError> {
        let attested = self.attest_fresh(source)?;
        self.release_to(&attested, key)
    }

    /// The first half of [`Releaser::release`]: a fresh transfer key, evidence binding
    /// it, and the attestation service's token for that evidence. The token can then
    /// release keys ([`Releaser::release_to`]) that only this transfer key unwraps.
    pub fn attest_fresh(&self, source: &mut dyn EvidenceSource) -> Result<Attested, ReleaseError> {
        let transfer =
            UnwrappingKey::generate(TRANSFER_KEY_BITS).map_err(ReleaseError::TransferKey)?;
        self.attest_with(transfer, source)
    }

    /// [`Releaser::attest_fresh`] with a transfer key made ahead of need (by
    /// [`TransferKeys`]): it must be fresh, used for this attestation only.
    pub fn attest_with(
        &self,
        transfer: UnwrappingKey,
        source: &mut dyn EvidenceSource,
    ) -> Result<Attested, ReleaseError> {
        let token = self.attest(&transfer, source)?;
        Ok(Attested { transfer, token })
    }

    /// The second half of [`Releaser::release`]: has the vault release `key` to the
    /// attested token and unwraps it with the transfer key.
    pub fn release_to(
        &self,
        attested: &Attested,
        key: &KeyId,
    ) -> Result<ReleasedKey, ReleaseError> {
        let (transfer, token) = (&attested.transfer, attested.token.clone());
        let mut nonce = [0u8; 16];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| ReleaseError::Transport {
            what: "nonce",
            message: "no randomness".into(),
        })?;
        let nonce = hex::encode(nonce);
        let vault = keyvault_client::Client::new(self.agent.clone(), &key.vault, &self.credential);
        let req = ReleaseRequest {
            target: token,
            enc: Some("RSA_AES_KEY_WRAP_256".into()),
            nonce: Some(nonce.clone()),
        };
        let jws = vault
            .release(&(), &key.name, &key.version, req)
            .map_err(|e| match refusal(&e) {
                Some((status, code, message)) => ReleaseError::Refused {
                    key: key.to_string(),
                    status,
                    code,
                    message,
                },
                None => transport("key release", e),
            })?
            .value;
        let hsm = checked_key_hsm(&jws, &self.vault_signer, &nonce, key)?;
        let material = KeyHsm::parse(&hsm)
            .and_then(|h| h.unwrap_key(transfer))
            .map_err(ReleaseError::Unwrap)?;
        Ok(ReleasedKey(material.into_zeroizing()))
    }

    /// A token for evidence binding `transfer`'s public key.
    fn attest(
        &self,
        transfer: &UnwrappingKey,
        source: &mut dyn EvidenceSource,
    ) -> Result<String, ReleaseError> {
        let mut jwk = transfer.public_key().to_jwk();
        jwk["kid"] = "TpmEphemeralEncryptionKey".into();
        let runtime =
            serde_json::to_vec(&json!({ "keys": [jwk] })).map_err(|e| ReleaseError::Transport {
                what: "runtime data",
                message: e.to_string(),
            })?;
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &runtime).as_ref(),
        );
        let ev = source
            .snp_evidence(&report_data)
            .map_err(ReleaseError::Evidence)?;
        let proof = json!({
            "SnpReport": B64URL.encode(&ev.report),
            "VcekCertChain": B64URL.encode(ev.cert_chain_pem.as_bytes()),
        });
        let req = SevSnpVmRequest {
            report: B64URL.encode(proof.to_string()),
            runtime_data: Some(DataField {
                data: B64URL.encode(&runtime),
                data_type: Some("JSON".into()),
                hash_algorithm: None,
            }),
            ..SevSnpVmRequest::default()
        };
        let service = attest_client::Client::new(self.agent.clone(), &self.attestation, None);
        match service.attest_sev_snp_vm(&req) {
            Ok(AttestResponse::Token(t)) => Ok(t.token),
            Ok(AttestResponse::DryRun(_)) => Err(ReleaseError::Transport {
                what: "attestation",
                message: "the answer carries no token".into(),
            }),
            Err(e) => Err(match refusal(&e) {
                Some((status, code, message)) => ReleaseError::NotAttested {
                    status,
                    code,
                    message,
                },
                None => transport("attestation", e),
            }),
        }
    }
}

/// A service's refusal as status, code and message (the detail appended: a failed
/// policy condition, say).
fn refusal(e: &ClientError) -> Option<(u16, String, String)> {
    match e {
        ClientError::Refused {
            status,
            code,
            message,
            detail,
        } => {
            let mut message = message.clone();
            if let Some(d) = detail.as_ref().filter(|d| !d.is_null()) {
                message.push_str(&format!(" ({d})"));
            }
            Some((*status, code.clone(), message))
        }
        // An error status without the services' error body (a proxy's page, say): a
        // refusal all the same, its status kept.
        ClientError::Unexpected {
            status, message, ..
        } if *status >= 400 => Some((*status, "unknown".into(), message.clone())),
        _ => None,
    }
}

/// A failure that is not a refusal: the service could not be reached or answered
/// something else than its contract.
fn transport(what: &'static str, e: ClientError) -> ReleaseError {
    ReleaseError::Transport {
        what,
        message: e.to_string(),
    }
}

/// The `key_hsm` of a release response `jws`, once it is signed by the pinned
/// `signer` (DER), echoes `nonce` and names `key`'s name and version. The vault's URL
/// in the kid is not compared: a vault names itself by its configured base URL, which
/// need not be the URL the caller reached it at.
fn checked_key_hsm(
    jws: &str,
    signer: &[u8],
    nonce: &str,
    key: &KeyId,
) -> Result<String, ReleaseError> {
    checked_release(jws, signer, nonce, &key.name, &key.version)
}

/// The `key_hsm` of a release response `jws` for key `name` at `version`, once it is
/// signed by the pinned `signer` (DER), echoes `nonce` and names that key and
/// version (what a guest that asked through an untrusted relay checks).
pub fn checked_release(
    jws: &str,
    signer: &[u8],
    nonce: &str,
    name: &str,
    version: &str,
) -> Result<String, ReleaseError> {
    let payload = Value::Object(
        jose::verify_pinned(jws, signer, &jose::Alg::ALL)
            .map_err(ReleaseError::Signature)?
            .claims,
    );
    if payload["request"]["nonce"].as_str() != Some(nonce) {
        return Err(ReleaseError::Mismatch("it echoes another nonce"));
    }
    let kid = payload["request"]["kid"].as_str().unwrap_or_default();
    let own = format!("/keys/{name}/{version}");
    if !kid.ends_with(&own) || !kid.starts_with("http") {
        return Err(ReleaseError::Mismatch("it names another key"));
    }
    payload["response"]["key"]["key"]["key_hsm"]
        .as_str()
        .map(str::to_string)
        .ok_or(ReleaseError::Mismatch("it carries no key_hsm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_key_is_handed_out_once() {
        let pool = TransferKeys::spawn(2);
        let mut seen = std::collections::BTreeSet::new();
        // More than the pool holds: some are made ready, some on the spot.
        for _ in 0..4 {
            let k = pool.take().unwrap();
            assert_eq!(k.bits(), TRANSFER_KEY_BITS);
            assert!(
                seen.insert(k.public_key().to_jwk()["n"].to_string()),
                "a transfer key came twice"
            );
        }
    }

    #[test]
    fn key_ids_parse_as_the_vault_prints_them() {
        let k = KeyId::parse("http://127.0.0.1:8081/keys/vmgs-kek/0a1b2c").unwrap();
        assert_eq!(k.vault(), "http://127.0.0.1:8081");
        assert_eq!((k.name(), k.version()), ("vmgs-kek", "0a1b2c"));
        assert_eq!(k.to_string(), "http://127.0.0.1:8081/keys/vmgs-kek/0a1b2c");
        let k = KeyId::parse("https://kv.example/base/keys/a/b").unwrap();
        assert_eq!(k.vault(), "https://kv.example/base");
        for bad in [
            "vmgs-kek",
            "http://kv/keys/name",
            "http://kv/keys/name/",
            "http://kv/keys//v1",
            "http://kv/keys/a/b/c",
            "http://kv/keys/a/b?x=1",
            "ftp://kv/keys/a/b",
            "kv/keys/a/b",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_released_key_and_the_releaser_keep_secrets_out_of_debug() {
        let k = ReleasedKey(Zeroizing::new(vec![0x5a; 32]));
        assert_eq!(format!("{k:?}"), "ReleasedKey(32 bytes)");
        let r = Releaser::new(
            ureq::Agent::new_with_defaults(),
            "http://a",
            Zeroizing::new("secret-credential".into()),
            vec![],
        );
        assert!(!format!("{r:?}").contains("secret-credential"));
    }

    #[test]
    fn a_release_response_must_be_signed_answer_this_nonce_and_name_this_key() {
        let vault = jose::TokenSigner::generate(jose::Alg::RS256, "vault", 1000, 1).unwrap();
        let other = jose::TokenSigner::generate(jose::Alg::RS256, "vault", 1000, 1).unwrap();
        let key = KeyId::parse("http://127.0.0.1:1/keys/kek/v1").unwrap();
        let response = |kid: &str, nonce: &str, with_key: bool| {
            let mut p = serde_json::Map::new();
            p.insert("request".into(), json!({"kid": kid, "nonce": nonce}));
            if with_key {
                p.insert(
                    "response".into(),
                    json!({"key": {"key": {"key_hsm": "HSM"}}}),
                );
            }
            p
        };
        let kid = "http://kv.example/keys/kek/v1";
        let good = vault.sign_with_x5c(&response(kid, "n1", true)).unwrap();
        assert_eq!(
            checked_key_hsm(&good, vault.cert_der(), "n1", &key).unwrap(),
            "HSM"
        );
        let refused = |jws: &str, signer: &[u8], nonce: &str| {
            checked_key_hsm(jws, signer, nonce, &key)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(&good, other.cert_der(), "n1").contains("not the vault's"));
        assert!(refused(&good, vault.cert_der(), "n2").contains("another nonce"));
        for wrong in [
            "http://kv.example/keys/kek/v2",
            "http://kv.example/keys/other-kek/v1",
            "/keys/kek/v1",
        ] {
            let jws = vault.sign_with_x5c(&response(wrong, "n1", true)).unwrap();
            assert!(
                refused(&jws, vault.cert_der(), "n1").contains("another key"),
                "{wrong}"
            );
        }
        let bare = vault.sign_with_x5c(&response(kid, "n1", false)).unwrap();
        assert!(refused(&bare, vault.cert_der(), "n1").contains("no key_hsm"));
        // No request at all: refused, not a panic.
        let empty = vault.sign_with_x5c(&serde_json::Map::new()).unwrap();
        assert!(refused(&empty, vault.cert_der(), "n1").contains("another nonce"));
    }

    #[test]
    fn service_errors_keep_code_message_and_detail() {
        let e = ClientError::Refused {
            status: 403,
            code: "policy_not_satisfied".into(),
            message: "no".into(),
            detail: Some(json!({"failed": "x-ms-sevsnpvm-hostdata"})),
        };
        let (status, code, message) = refusal(&e).unwrap();
        assert_eq!((status, code.as_str()), (403, "policy_not_satisfied"));
        assert!(message.contains("x-ms-sevsnpvm-hostdata"), "{message}");
        let e = ClientError::Certificates("x".into());
        assert!(refusal(&e).is_none());
        let e = ClientError::Unexpected {
            method: "POST",
            url: "http://kv/keys/a/b/release".into(),
            status: 502,
            message: "a refusal without its body".into(),
        };
        assert_eq!(
            refusal(&e).map(|r| (r.0, r.1)),
            Some((502, "unknown".into()))
        );
    }
}
