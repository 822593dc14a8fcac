//! What the host side of a confidential VM's vTPM holds and does, as Azure's
//! paravisor does for its vTPM:
//!
//! - provisioning at every start (idempotent): the endorsement key (RSA-2048, TCG
//!   default template, persistent at `0x81010001`), the attestation key (restricted
//!   RSA-2048 signing, RSASSA-SHA256, persistent at `0x81000003`), the AK certificate
//!   from the platform's vTPM CA at NV `0x01C101D0`;
//! - the HCL attestation report at NV `0x01400001`: an SNP report whose REPORT_DATA
//!   binds runtime claims (`HCLAkPub`, `vm-configuration`, `user-data`); a guest that
//!   writes 64 bytes to NV `0x01400002` reads a fresh report carrying them
//!   (rate-limited: a write over the limit is answered `TPM_RC_RETRY`);
//! - the platform hierarchy lock: right after every `TPM2_Startup` the platform
//!   authorization is set to a fresh random value that only this process holds, so
//!   the guest cannot clear the TPM through the platform hierarchy or touch platform
//!   indices, and `disableClear` is set, so it cannot clear it through the lockout
//!   hierarchy either;
//! - the EK and AK are always derived anew from their templates at provisioning and
//!   compared with what sits at their persistent handles: an object the guest put
//!   there is evicted and never reported or certified.
//!
//! libtpms caps NV indices at 2048 bytes and Azure's report index holds 2600 (its
//! claims carry `HCLAkPub` and `HCLEkPub`), so the report is served here rather than
//! by libtpms: `TPM2_NV_ReadPublic` of `0x01400001` answers its real size and Name,
//! and `TPM2_NV_Read` of it is answered with the report's bytes after the
//! authorization is checked as the TPM would:
//! - before `TPM2_Startup` both commands get `TPM_RC_INITIALIZE`, as every command
//!   does (libtpms is asked: it knows whether it was started or resumed);
//! - a password session: libtpms checks it, on the same command (the guest's session
//!   as sent) reading one byte of a one-byte index defined at that handle with the
//!   same attributes;
//! - unsalted, unbound HMAC sessions (what tpm2-tools opens, with response
//!   encryption): checked here ([`crate::sessions`]) under the rules written at
//!   `Platform::hmac_auth_value`; the response carries the session's current
//!   `nonceTPM`, its HMAC, and the data AES-CFB encrypted when the session asks;
//! - anything else (salted or bound sessions, policy or audit sessions, a nonceCaller
//!   shorter than 16 bytes, an owner authValue that is not empty) is refused with a
//!   TPM error; a wrong HMAC gets `TPM_RC_BAD_AUTH`, never `TPM_RC_AUTH_FAIL`: the
//!   index has `TPMA_NV_NO_DA` and the owner and platform hierarchies are exempt from
//!   dictionary-attack protection, so no failure here counts towards lockout.

use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use tpm_quote::{PublicDetails, TpmPublic};
use zeroize::Zeroizing;

use crate::ca::VtpmCa;
use crate::engine::{Engine, EngineError, TPM_FAIL};
use crate::error_response;
use crate::sessions::{self, ATTR_AUDIT, ATTR_CONTINUE, ATTR_DECRYPT, ATTR_ENCRYPT, Sessions};
use crate::tpm::{self, RH_ENDORSEMENT, RH_PLATFORM, cc, run, run_ok, take_tpm2b};

/// Persistent handle of the endorsement key (TCG default).
pub const EK_HANDLE: u32 = 0x8101_0001;
/// Persistent handle of the attestation key (as on Azure).
pub const AK_HANDLE: u32 = 0x8100_0003;
/// NV index of the AK certificate.
pub const NV_AK_CERT: u32 = 0x01C1_01D0;
/// NV index of the HCL attestation report.
pub const NV_HCL_REPORT: u32 = 0x0140_0001;
/// NV index a guest writes its 64 bytes of user data to.
pub const NV_USER_DATA: u32 = 0x0140_0002;
/// Size of the report index, as on Azure.
pub const HCL_NV_SIZE: usize = 2600;

/// TPMA_NV bits used here.
mod nv_attr {
    pub const PPWRITE: u32 = 1;
    pub const OWNERWRITE: u32 = 1 << 1;
    pub const AUTHWRITE: u32 = 1 << 2;
    pub const PPREAD: u32 = 1 << 16;
    pub const OWNERREAD: u32 = 1 << 17;
    pub const AUTHREAD: u32 = 1 << 18;
    pub const NO_DA: u32 = 1 << 25;
    pub const PLATFORMCREATE: u32 = 1 << 30;
}

/// Attributes of the platform-written indices (AK certificate, report): written only
/// with platform authorization, readable by the owner and with the (empty) index auth.
const PLATFORM_INDEX: u32 = nv_attr::PPWRITE
    | nv_attr::PPREAD
    | nv_attr::OWNERREAD
    | nv_attr::AUTHREAD
    | nv_attr::NO_DA
    | nv_attr::PLATFORMCREATE;
/// `TPMA_NV_WRITTEN`, set in the served public area of the report index.
const NV_WRITTEN: u32 = 1 << 29;
/// `TPM_RC_HANDLE` for the first handle.
const RC_HANDLE_1: u32 = 0x18B;
/// `TPM_RC_AUTH_UNAVAILABLE`: a session this vTPM cannot check on the report index.
const RC_AUTH_UNAVAILABLE: u32 = 0x12F;
/// `TPM_RC_BAD_AUTH` (`RC_FMT1 + 0x022`) for session 1 (`TPM_RC_S + TPM_RC_1`; add
/// `n << 8` for session n + 1): an HMAC that does not verify for an entity exempt from
/// dictionary-attack protection (`TPMA_NV_NO_DA`, the owner and platform hierarchies),
/// what libtpms answers for a wrong password on the same index.
const RC_BAD_AUTH_SESSION: u32 = 0x9A2;
/// `TPM_RC_AUTH_FAIL` (`RC_FMT1 + 0x00E`) for session 1: what a TPM answers for a wrong
/// authorization of an entity under dictionary-attack protection.
const RC_AUTH_FAIL_SESSION: u32 = 0x98E;
/// `TPM_RC_NONCE` (`RC_FMT1 + 0x00F`) for session 1: a `nonceCaller` of a size the
/// session does not accept.
const RC_NONCE_SESSION: u32 = 0x98F;

/// Attributes of the user-data index: the guest writes and reads it.
const USER_INDEX: u32 = nv_attr::OWNERWRITE
    | nv_attr::AUTHWRITE
    | nv_attr::OWNERREAD
    | nv_attr::AUTHREAD
    | nv_attr::NO_DA
    | nv_attr::PLATFORMCREATE;

/// The EK template of the TCG EK Credential Profile (template L-1, RSA 2048): what
/// `tpm2_createek -G rsa` creates too.
pub fn ek_template() -> Vec<u8> {
    const POLICY: [u8; 32] = [
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7,
        0x24, 0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14,
        0x69, 0xAA,
    ];
    let mut t = Vec::with_capacity(320);
    t.extend_from_slice(&0x0001u16.to_be_bytes()); // RSA
    t.extend_from_slice(&0x000Bu16.to_be_bytes()); // SHA-256
    // fixedTPM, fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted, decrypt
    t.extend_from_slice(&0x0003_00B2u32.to_be_bytes());
    t.extend_from_slice(&32u16.to_be_bytes());
    t.extend_from_slice(&POLICY);
    t.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43]); // AES-128-CFB
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // scheme NULL
    t.extend_from_slice(&2048u16.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&256u16.to_be_bytes());
    t.extend_from_slice(&[0u8; 256]);
    t
}

/// The AK template: restricted RSA-2048 signing key, RSASSA-SHA256, no policy.
pub fn ak_template() -> Vec<u8> {
    let mut t = Vec::with_capacity(32);
    t.extend_from_slice(&0x0001u16.to_be_bytes()); // RSA
    t.extend_from_slice(&0x000Bu16.to_be_bytes()); // SHA-256
    // fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA, restricted, sign
    t.extend_from_slice(&0x0005_0472u32.to_be_bytes());
    t.extend_from_slice(&0u16.to_be_bytes()); // authPolicy
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric NULL
    t.extend_from_slice(&[0x00, 0x14, 0x00, 0x0B]); // RSASSA, SHA-256
    t.extend_from_slice(&2048u16.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&0u16.to_be_bytes()); // unique: empty
    t
}

/// A source of SNP attestation reports for the HCL report (the host's (emulated)
/// secure processor answering the paravisor's request).
pub trait ReportSource: Send {
    /// A signed 1184-byte report carrying `report_data`.
    fn report(&mut self, report_data: &[u8; 64]) -> Result<[u8; 1184], String>;
}

/// The VM facts in the report's `vm-configuration`.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// `vmUniqueId` (a UUID, upper case as on Azure).
    pub vm_id: String,
    /// `secure-boot`.
    pub secure_boot: bool,
    /// `tpm-enabled`.
    pub tpm_enabled: bool,
    /// `console-enabled`.
    pub console_enabled: bool,
}

/// An RSA public key of the vTPM (EK or AK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaKey {
    /// The modulus.
    pub modulus: Vec<u8>,
    /// The public exponent.
    pub exponent: u32,
    /// The marshalled `TPMT_PUBLIC`.
    pub public: Vec<u8>,
}

impl RsaKey {
    fn jwk(&self, kid: &str, op: &str) -> String {
        let e = self.exponent.to_be_bytes();
        let skip = e.iter().take_while(|&&b| b == 0).count();
        format!(
            r#"{{"kid":"{kid}","key_ops":["{op}"],"kty":"RSA","e":"{}","n":"{}"}}"#,
            B64URL.encode(&e[skip..]),
            B64URL.encode(&self.modulus)
        )
    }
}

/// Allows `burst` events at once and one more per `every`.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    burst: f64,
    every: Duration,
    last: Instant,
}

impl RateLimit {
    fn new(burst: u32, every: Duration) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            every,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() / self.every.as_secs_f64();
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The host side of one VM's vTPM.
pub struct Platform {
    vm: VmConfig,
    reports: Option<Box<dyn ReportSource>>,
    ca: Option<VtpmCa>,
    ek: Option<RsaKey>,
    ak: Option<RsaKey>,
    hcl: Option<Vec<u8>>,
    refreshes: RateLimit,
    platform_auth: Zeroizing<Vec<u8>>,
    sessions: Sessions,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("vm", &self.vm)
            .field("ca", &self.ca)
            .field("report", &self.hcl.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

fn malformed(what: &str) -> EngineError {
    EngineError::new(TPM_FAIL, format!("malformed {what} response"))
}

fn rsa_key(public_tpm2b: &[u8]) -> Result<RsaKey, EngineError> {
    let p = TpmPublic::parse_tpm2b(public_tpm2b)
        .map_err(|e| EngineError::new(TPM_FAIL, format!("key public area: {e}")))?;
    match p.details() {
        PublicDetails::Rsa(r) => Ok(RsaKey {
            modulus: r.modulus.clone(),
            exponent: r.effective_exponent(),
            public: p.raw().to_vec(),
        }),
        PublicDetails::Ecc(_) => Err(EngineError::new(TPM_FAIL, "expected an RSA key")),
    }
}

/// Derives the vTPM's own key from `template` (a primary of the endorsement
/// hierarchy: the same seed and template always give the same key) and makes sure
/// `handle` holds exactly it, replacing whatever else sits there.
///
/// The key returned is always the derived one, never whatever object the guest left
/// at `handle` (it may evict the vTPM's key with owner authorization and put its own
/// there): only a key this process derived goes into the report and the certificate.
/// When the handle holds another object and cannot be restored (the guest changed the
/// owner authorization), the derived key is still the one reported, so quotes by the
/// guest's substitute never verify against the report.
fn ensure_key(
    engine: &mut dyn Engine,
    handle: u32,
    template: &[u8],
    platform_auth: &[u8],
) -> Result<RsaKey, EngineError> {
    let r = run_ok(
        engine,
        "TPM2_CreatePrimary (deriving the vTPM's own key; was the endorsement \
         hierarchy's authorization changed?)",
        tpm::create_primary(RH_ENDORSEMENT, template),
    )?;
    let transient = r.handle().ok_or_else(|| malformed("CreatePrimary"))?;
    let result = persist_derived(engine, handle, transient, &r, platform_auth);
    let _ = run(engine, tpm::flush_context(transient));
    result
}

/// The second half of [`ensure_key`]: `created` is the `TPM2_CreatePrimary` response
/// for the loaded `transient` object.
fn persist_derived(
    engine: &mut dyn Engine,
    handle: u32,
    transient: u32,
    created: &tpm::Response,
    platform_auth: &[u8],
) -> Result<RsaKey, EngineError> {
    let params = created
        .params(1)
        .ok_or_else(|| malformed("CreatePrimary"))?;
    let (derived, _) = take_tpm2b(params).ok_or_else(|| malformed("CreatePrimary"))?;
    let key = rsa_key(&tpm2b(derived))?;
    let r = run(engine, tpm::read_public(handle))?;
    if r.rc == 0 {
        let (present, _) = take_tpm2b(&r.body).ok_or_else(|| malformed("ReadPublic"))?;
        if present == derived {
            return Ok(key);
        }
        tracing::warn!("the object at {handle:#010x} is not the vTPM's own key; replacing it");
        let evicted = [(RH_PLATFORM, platform_auth), (tpm::RH_OWNER, &[][..])]
            .into_iter()
            .any(|(auth, pw)| {
                run(engine, tpm::evict_control_as(auth, pw, handle, handle))
                    .is_ok_and(|r| r.rc == 0)
            });
        if !evicted {
            tracing::warn!(
                "{handle:#010x} could not be evicted; the report names the vTPM's \
                 own key, not that object"
            );
            return Ok(key);
        }
    }
    let persisted = run(engine, tpm::evict_control(transient, handle))?;
    if persisted.rc != 0 {
        tracing::warn!(
            "making the vTPM's own key persistent at {handle:#010x} failed with \
             {:#x} (owner authorization changed?); the report names it all the same",
            persisted.rc
        );
    }
    Ok(key)
}

/// `b` as a TPM2B.
fn tpm2b(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

impl Platform {
    /// A platform for `vm`; `reports` signs HCL reports, `ca` certifies the AK (each
    /// optional: without them the report or the certificate index is not provided).
    pub fn new(vm: VmConfig, reports: Option<Box<dyn ReportSource>>, ca: Option<VtpmCa>) -> Self {
        Self {
            vm,
            reports,
            ca,
            ek: None,
            ak: None,
            hcl: None,
            refreshes: RateLimit::new(5, Duration::from_millis(200)),
            platform_auth: Zeroizing::new(Vec::new()),
            sessions: Sessions::default(),
        }
    }

    /// The EK, once provisioned.
    pub fn ek(&self) -> Option<&RsaKey> {
        self.ek.as_ref()
    }

    /// The AK, once provisioned.
    pub fn ak(&self) -> Option<&RsaKey> {
        self.ak.as_ref()
    }

    /// The HCL report currently served at `0x01400001`.
    pub fn hcl_report(&self) -> Option<&[u8]> {
        self.hcl.as_deref()
    }

    /// Provisions `engine` (started, before any guest command): EK, AK, AK
    /// certificate, the report and user-data indices, the report. Leaves the TPM
    /// restarted and waiting for the guest's `TPM2_Startup`, or, when it was resumed
    /// from saved volatile state, running as it was (its platform hierarchy still
    /// locked by the previous process's random authorization).
    ///
    /// A resumed TPM's platform hierarchy cannot be written (its authorization died
    /// with the previous process). If provisioning needs to write it (an AK certificate
    /// or report index that was not there before), the resumed state is dropped and the
    /// TPM starts fresh, as after a reset: the guest loses its PCRs and sessions, not
    /// its keys or NV.
    pub fn provision(&mut self, engine: &mut dyn Engine) -> Result<(), EngineError> {
        let r = run(engine, tpm::startup_clear())?;
        // A TPM resumed from saved volatile state is started already and stays so.
        let resumed = r.rc == tpm::RC_INITIALIZE;
        if r.rc != 0 && !resumed {
            return Err(EngineError::new(
                TPM_FAIL,
                format!("TPM2_Startup failed with {:#x}", r.rc),
            ));
        }
        match self.provision_started(engine, resumed) {
            Err(e) if resumed => {
                tracing::warn!("the resumed TPM cannot be provisioned ({e}); starting it fresh");
                engine.stop(false);
                engine.start(false)?;
                let r = run(engine, tpm::startup_clear())?;
                if r.rc != 0 {
                    return Err(EngineError::new(
                        TPM_FAIL,
                        format!("TPM2_Startup failed with {:#x}", r.rc),
                    ));
                }
                self.provision_started(engine, false)
            }
            r => r,
        }
    }

    /// Provisions a started TPM (see [`Platform::provision`]).
    fn provision_started(
        &mut self,
        engine: &mut dyn Engine,
        resumed: bool,
    ) -> Result<(), EngineError> {
        // Platform authorization is empty after a fresh TPM2_Startup(SU_CLEAR); a
        // resumed TPM's is the previous process's, and is not needed unless an object
        // must be evicted (which then fails and the TPM is started fresh).
        let ek = ensure_key(engine, EK_HANDLE, &ek_template(), &[])?;
        let ak = ensure_key(engine, AK_HANDLE, &ak_template(), &[])?;
        if let Some(ca) = &self.ca {
            let spki = crate::ca::rsa_spki_der(&ak.modulus, ak.exponent);
            let current = match tpm::nv_size(engine, NV_AK_CERT)? {
                Some(n) => Some(tpm::nv_read_all(engine, NV_AK_CERT, NV_AK_CERT, &[], n)?),
                None => None,
            };
            let valid = current
                .as_deref()
                .is_some_and(|der| cert_has_spki(der, &spki));
            if !valid {
                if current.is_some() {
                    run_ok(
                        engine,
                        "TPM2_NV_UndefineSpace",
                        tpm::nv_undefine_platform(NV_AK_CERT, &[]),
                    )?;
                }
                let der = ca
                    .issue_ak_cert(&ak.modulus, ak.exponent, &self.vm.vm_id)
                    .map_err(|e| EngineError::new(TPM_FAIL, e.to_string()))?;
                let size = u16::try_from(der.len())
                    .map_err(|_| EngineError::new(TPM_FAIL, "AK certificate too large"))?;
                run_ok(
                    engine,
                    "TPM2_NV_DefineSpace",
                    tpm::nv_define_platform(NV_AK_CERT, PLATFORM_INDEX, size, &[]),
                )?;
                tpm::nv_write_all(engine, RH_PLATFORM, NV_AK_CERT, &[], &der)?;
            }
        }
        if self.reports.is_some() {
            // The one-byte index libtpms authorizes password reads of the report with.
            match tpm::nv_size(engine, NV_HCL_REPORT)? {
                Some(1) => {}
                other => {
                    if other.is_some() {
                        run_ok(
                            engine,
                            "TPM2_NV_UndefineSpace",
                            tpm::nv_undefine_platform(NV_HCL_REPORT, &[]),
                        )?;
                    }
                    run_ok(
                        engine,
                        "TPM2_NV_DefineSpace",
                        tpm::nv_define_platform(NV_HCL_REPORT, PLATFORM_INDEX, 1, &[]),
                    )?;
                    tpm::nv_write_all(engine, RH_PLATFORM, NV_HCL_REPORT, &[], &[0])?;
                }
            }
            if tpm::nv_size(engine, NV_USER_DATA)?.is_none() {
                run_ok(
                    engine,
                    "TPM2_NV_DefineSpace",
                    tpm::nv_define_platform(NV_USER_DATA, USER_INDEX, 64, &[]),
                )?;
            }
        }
        self.ek = Some(ek);
        self.ak = Some(ak);
        self.platform_auth = Zeroizing::new(Vec::new());
        self.refresh_report(&[0; 64])?;
        if resumed {
            return Ok(());
        }
        let _ = run(engine, tpm::shutdown_clear());
        engine.stop(false);
        engine.start(false)
    }

    /// The runtime claims for `user_data`, compact, in Azure's member order.
    pub fn claims(&self, user_data: &[u8; 64]) -> Option<String> {
        let (ak, ek) = (self.ak.as_ref()?, self.ek.as_ref()?);
        let vm = &self.vm;
        Some(format!(
            r#"{{"keys":[{},{}],"vm-configuration":{{"console-enabled":{},"secure-boot":{},"tpm-enabled":{},"vmUniqueId":"{}"}},"user-data":"{}"}}"#,
            ak.jwk("HCLAkPub", "sign"),
            ek.jwk("HCLEkPub", "encrypt"),
            vm.console_enabled,
            vm.secure_boot,
            vm.tpm_enabled,
            vm.vm_id,
            hex::encode_upper(user_data)
        ))
    }

    /// Builds the report served at the report index for `user_data`.
    fn refresh_report(&mut self, user_data: &[u8; 64]) -> Result<(), EngineError> {
        let Some(claims) = self.claims(user_data) else {
            return Ok(());
        };
        let Some(source) = self.reports.as_mut() else {
            return Ok(());
        };
        let mut report_data = [0u8; 64];
        report_data[..32]
            .copy_from_slice(digest::digest(&digest::SHA256, claims.as_bytes()).as_ref());
        let report = source
            .report(&report_data)
            .map_err(|e| EngineError::new(TPM_FAIL, format!("SNP report: {e}")))?;
        let hcl = snp::hcl::encode(&report, claims.as_bytes(), HCL_NV_SIZE)
            .map_err(|e| EngineError::new(TPM_FAIL, format!("HCL report: {e}")))?;
        self.hcl = Some(hcl);
        Ok(())
    }

    /// The report index's public area (as served) and Name.
    fn report_public(&self, size: usize) -> (Vec<u8>, Vec<u8>) {
        let public = tpm::nv_public(NV_HCL_REPORT, PLATFORM_INDEX | NV_WRITTEN, size as u16);
        let mut name = 0x000Bu16.to_be_bytes().to_vec();
        name.extend_from_slice(digest::digest(&digest::SHA256, &public).as_ref());
        (public, name)
    }

    /// Answers a command here instead of the engine, or `None` to let the engine run
    /// it: the report index's public area and contents; a user-data write over the
    /// rate limit gets `TPM_RC_RETRY`.
    pub(crate) fn before(
        &mut self,
        engine: &mut dyn Engine,
        locality: u8,
        command: &[u8],
    ) -> Option<Vec<u8>> {
        let code = crate::engine::command_code(command)?;
        let handle = |i: usize| {
            command
                .get(10 + 4 * i..14 + 4 * i)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match code {
            cc::NV_READ_PUBLIC if handle(0) == Some(NV_HCL_REPORT) => {
                let size = self.hcl.as_ref()?.len();
                if let Some(refused) = started(engine, locality) {
                    return Some(refused);
                }
                let (public, name) = self.report_public(size);
                let mut out = vec![0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
                out.extend_from_slice(&(public.len() as u16).to_be_bytes());
                out.extend_from_slice(&public);
                out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                out.extend_from_slice(&name);
                let n = (out.len() as u32).to_be_bytes();
                out[2..6].copy_from_slice(&n);
                Some(out)
            }
            cc::NV_READ if handle(1) == Some(NV_HCL_REPORT) => {
                let hcl = self.hcl.clone()?;
                if let Some(refused) = started(engine, locality) {
                    return Some(refused);
                }
                let (_, name) = self.report_public(hcl.len());
                Some(self.serve_report_read(engine, locality, command, &hcl, &name))
            }
            cc::NV_WRITE if handle(1) == Some(NV_USER_DATA) && !self.refreshes.allow() => {
                Some(error_response(tpm::RC_RETRY))
            }
            _ => None,
        }
    }

    /// Answers `TPM2_NV_Read` of the report index (see the module documentation).
    fn serve_report_read(
        &mut self,
        engine: &mut dyn Engine,
        locality: u8,
        command: &[u8],
        hcl: &[u8],
        index_name: &[u8],
    ) -> Vec<u8> {
        let Some((handles, auths, params)) = sessions::split_command(command) else {
            return error_response(crate::TPM_RC_COMMAND_SIZE);
        };
        let (Some(&auth_handle), Some(p)) = (handles.first(), params.get(..4)) else {
            return error_response(crate::TPM_RC_COMMAND_SIZE);
        };
        if handles.len() != 2 || params.len() != 4 {
            return error_response(crate::TPM_RC_COMMAND_SIZE);
        }
        let size = u16::from_be_bytes([p[0], p[1]]) as usize;
        let offset = u16::from_be_bytes([p[2], p[3]]) as usize;
        // TPM_RH_OWNER, TPM_RH_PLATFORM (only with its secret) or the index itself.
        if auth_handle != tpm::RH_OWNER
            && auth_handle != RH_PLATFORM
            && auth_handle != NV_HCL_REPORT
        {
            return error_response(RC_HANDLE_1);
        }
        let auth_name: Vec<u8> = if auth_handle == NV_HCL_REPORT {
            index_name.to_vec()
        } else {
            auth_handle.to_be_bytes().to_vec()
        };
        let cp_hash = |h: sessions::SessionHash| {
            h.hash(&[&cc::NV_READ.to_be_bytes(), &auth_name, index_name, params])
        };
        // The authorization session: a password session is checked by libtpms on the
        // one-byte index; an HMAC session here.
        let first = &auths[0];
        if first.handle == tpm::RS_PW {
            let raw = match engine.execute(locality, &probe_read(auth_handle, first)) {
                Ok(r) => r,
                Err(_) => return error_response(crate::TPM_RC_FAILURE),
            };
            if crate::engine::response_code(&raw) != Some(0) {
                return raw;
            }
        }
        // Every HMAC session must be one whose key is known, and must verify. Each
        // session's HMAC key (sessionKey, empty here, || authValue of the entity it
        // authorizes; empty for a session that authorizes nothing).
        let mut keys: Vec<Option<(sessions::Session, Zeroizing<Vec<u8>>)>> =
            Vec::with_capacity(auths.len());
        for (i, a) in auths.iter().enumerate() {
            let session_rc = (i as u32) << 8;
            if a.handle == tpm::RS_PW {
                if i != 0 {
                    return error_response(RC_AUTH_UNAVAILABLE);
                }
                keys.push(None);
                continue;
            }
            let Some(s) = self.sessions.get(a.handle).filter(|s| s.usable).cloned() else {
                return error_response(RC_AUTH_UNAVAILABLE);
            };
            if a.attrs & (ATTR_AUDIT | ATTR_DECRYPT) != 0 {
                return error_response(RC_AUTH_UNAVAILABLE);
            }
            // The nonceCaller is at least 16 bytes and no longer than the digest: a
            // short one would weaken the HMAC's freshness, and the spec forbids it.
            if !s.hash.nonce_ok(&a.nonce) {
                return error_response(RC_NONCE_SESSION + session_rc);
            }
            let key = if i == 0 {
                match self.hmac_auth_value(engine, locality, auth_handle) {
                    Ok(k) => k,
                    Err(AuthValue::Refused(rc)) => return error_response(rc),
                    Err(AuthValue::Raw(r)) => return r,
                }
            } else {
                Zeroizing::new(Vec::new())
            };
            // The first session's HMAC also covers the nonceTPM of a separate
            // encryption session.
            let mut extra = Vec::new();
            if i == 0 {
                for other in auths.iter().skip(1) {
                    if other.attrs & ATTR_ENCRYPT != 0
                        && let Some(o) = self.sessions.get(other.handle)
                    {
                        extra.extend_from_slice(&o.nonce_tpm);
                    }
                }
            }
            let expected = s.hash.mac(
                &key,
                &[&cp_hash(s.hash), &a.nonce, &s.nonce_tpm, &extra, &[a.attrs]],
            );
            if aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &a.hmac).is_err() {
                return error_response(RC_BAD_AUTH_SESSION + session_rc);
            }
            keys.push(Some((s, key)));
        }
        if offset + size > hcl.len() || size > 1024 {
            return error_response(tpm::RC_NV_RANGE);
        }
        let mut data = hcl[offset..offset + size].to_vec();
        if let Some((a, Some((s, key)))) = auths
            .iter()
            .zip(&keys)
            .find(|(a, _)| a.attrs & ATTR_ENCRYPT != 0)
        {
            let Some(bits) = s.aes_bits else {
                return error_response(RC_AUTH_UNAVAILABLE);
            };
            if sessions::cfb_encrypt(s.hash, bits, key, &s.nonce_tpm, &a.nonce, &mut data).is_none()
            {
                return error_response(crate::TPM_RC_FAILURE);
            }
        }
        let mut params_out = (data.len() as u16).to_be_bytes().to_vec();
        params_out.extend_from_slice(&data);
        let mut out = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
        out.extend_from_slice(&(params_out.len() as u32).to_be_bytes());
        out.extend_from_slice(&params_out);
        for (a, key) in auths.iter().zip(&keys) {
            match key {
                None => out.extend_from_slice(&[0, 0, a.attrs | ATTR_CONTINUE, 0, 0]),
                Some((s, key)) => {
                    let rp_hash = s.hash.hash(&[
                        &0u32.to_be_bytes(),
                        &cc::NV_READ.to_be_bytes(),
                        &params_out,
                    ]);
                    let mac = s
                        .hash
                        .mac(key, &[&rp_hash, &s.nonce_tpm, &a.nonce, &[a.attrs]]);
                    out.extend_from_slice(&(s.nonce_tpm.len() as u16).to_be_bytes());
                    out.extend_from_slice(&s.nonce_tpm);
                    out.push(a.attrs);
                    out.extend_from_slice(&(mac.len() as u16).to_be_bytes());
                    out.extend_from_slice(&mac);
                }
            }
        }
        let n = (out.len() as u32).to_be_bytes();
        out[2..6].copy_from_slice(&n);
        // A session the caller ends with this command ends in libtpms too.
        for (a, key) in auths.iter().zip(&keys) {
            if key.is_some() && a.attrs & ATTR_CONTINUE == 0 {
                let _ = run(engine, tpm::flush_context(a.handle));
                self.sessions.forget(a.handle);
            }
        }
        out
    }

    /// The authValue an HMAC session authorizing `auth_handle` for `TPM2_NV_Read` of
    /// the report index is keyed with (its sessionKey is empty: unsalted, unbound).
    ///
    /// The rule (TPM 2.0 Part 1 §19.6.5 and the `TPM2_NV_Read` authorization: the
    /// index itself with `TPMA_NV_AUTHREAD`, `TPM_RH_OWNER` with `TPMA_NV_OWNERREAD`,
    /// `TPM_RH_PLATFORM` with `TPMA_NV_PPREAD`, each with its own authValue):
    /// - the index: its authValue, which is empty (defined so by the platform; it can
    ///   never change: `TPM2_NV_ChangeAuth` needs the ADMIN role, i.e. a policy, and
    ///   the index has none);
    /// - the owner: the vTPM does not hold the owner's authValue, so it asks libtpms
    ///   whether it is empty, with the same read of the one-byte index authorized by
    ///   the owner with an empty password. Only when libtpms accepts that (the owner's
    ///   authValue is empty) is the HMAC checked, keyed with the empty authValue;
    ///   otherwise the authorization cannot be checked here and is refused with
    ///   `TPM_RC_AUTH_UNAVAILABLE` (the owner reads with a password session, which
    ///   libtpms checks, or with the index's own authorization). The probe costs
    ///   nothing towards lockout: the owner hierarchy is exempt from
    ///   dictionary-attack protection;
    /// - the platform: its authValue is the secret this process set at the last
    ///   `TPM2_Startup` and holds alone, and the HMAC is keyed with it; an empty key
    ///   never verifies. When the process holds no such secret (a TPM resumed from a
    ///   previous process, whose secret died with it), every HMAC is refused with
    ///   `TPM_RC_BAD_AUTH`.
    fn hmac_auth_value(
        &self,
        engine: &mut dyn Engine,
        locality: u8,
        auth_handle: u32,
    ) -> Result<Zeroizing<Vec<u8>>, AuthValue> {
        match auth_handle {
            NV_HCL_REPORT => Ok(Zeroizing::new(Vec::new())),
            tpm::RH_OWNER => {
                let empty = sessions::CommandSession {
                    handle: tpm::RS_PW,
                    nonce: Vec::new(),
                    attrs: ATTR_CONTINUE,
                    hmac: Vec::new(),
                };
                let raw = engine
                    .execute(locality, &probe_read(tpm::RH_OWNER, &empty))
                    .map_err(|_| AuthValue::Refused(crate::TPM_RC_FAILURE))?;
                match crate::engine::response_code(&raw) {
                    Some(0) => Ok(Zeroizing::new(Vec::new())),
                    // TPM_RC_BAD_AUTH or TPM_RC_AUTH_FAIL for session 1: the owner has
                    // an authValue the vTPM does not know.
                    Some(RC_AUTH_FAIL_SESSION | RC_BAD_AUTH_SESSION) => {
                        Err(AuthValue::Refused(RC_AUTH_UNAVAILABLE))
                    }
                    _ => Err(AuthValue::Raw(raw)),
                }
            }
            _ if self.platform_auth.is_empty() => Err(AuthValue::Refused(RC_BAD_AUTH_SESSION)),
            _ => Ok(self.platform_auth.clone()),
        }
    }

    /// The TPM was initialised anew (`CMD_INIT`, a simulator power cycle or reset):
    /// the sessions the guest had loaded are gone (or, when libtpms resumed its
    /// volatile state, may differ from what was tracked), so none is trusted any more.
    pub(crate) fn tpm_initialised(&mut self) {
        self.sessions.clear();
    }

    /// Sets the platform authorization to a fresh random value only this process
    /// holds. `TPM2_Startup(SU_CLEAR)` reset it to empty; after a resume
    /// (`SU_STATE`) the previous value is back, which is known here too.
    fn lock_platform_hierarchy(&mut self, engine: &mut dyn Engine) -> Result<(), EngineError> {
        let mut auth = Zeroizing::new(vec![0u8; 32]);
        aws_lc_rs::rand::fill(auth.as_mut_slice())
            .map_err(|_| EngineError::new(TPM_FAIL, "no randomness"))?;
        let mut locked = false;
        for current in [Zeroizing::new(Vec::new()), self.platform_auth.clone()] {
            let r = run(engine, tpm::change_platform_auth(&current, &auth))?;
            if r.rc == 0 {
                self.platform_auth = auth;
                locked = true;
                break;
            }
        }
        if !locked {
            return Err(EngineError::new(
                TPM_FAIL,
                "TPM2_HierarchyChangeAuth(platform) was refused",
            ));
        }
        // The guest cannot clear the TPM either (TPM2_Clear through the lockout
        // hierarchy): disableClear can only be unset with platform authorization.
        run_ok(
            engine,
            "TPM2_ClearControl(platform, disable)",
            tpm::clear_control_platform(&self.platform_auth, true),
        )?;
        Ok(())
    }

    /// Acts on a command the engine ran: locks the platform hierarchy after
    /// `TPM2_Startup`; refreshes the report after a user-data write.
    pub(crate) fn after(&mut self, engine: &mut dyn Engine, command: &[u8], response: &[u8]) {
        self.sessions.observe(command, response);
        if crate::engine::response_code(response) != Some(0) {
            return;
        }
        let code = crate::engine::command_code(command);
        let nv_index = command
            .get(14..18)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if code == Some(cc::STARTUP) {
            // Every loaded session ended with the Startup.
            self.sessions.clear();
            if let Err(e) = self.lock_platform_hierarchy(engine) {
                tracing::error!("locking the platform hierarchy failed: {e}");
            }
        } else if code == Some(cc::NV_WRITE) && nv_index == Some(NV_USER_DATA) {
            let data = tpm::nv_read_all(engine, NV_USER_DATA, NV_USER_DATA, &[], 64);
            // A partial write leaves the index partly unwritten: nothing to report.
            if let Ok(Ok(user_data)) = data.map(|d| <[u8; 64]>::try_from(d.as_slice()))
                && let Err(e) = self.refresh_report(&user_data)
            {
                tracing::error!("refreshing the attestation report failed: {e}");
            }
        }
    }
}

/// Why [`Platform::hmac_auth_value`] gives no authValue.
enum AuthValue {
    /// Refused with this response code.
    Refused(u32),
    /// libtpms's own answer to the probe, passed on.
    Raw(Vec<u8>),
}

/// `TPM2_NV_Read` of one byte of the one-byte index libtpms holds at the report
/// index's handle, authorized by `auth_handle` with the password session `session`
/// (as the guest sent it, so libtpms checks its nonce and attributes too).
fn probe_read(auth_handle: u32, session: &sessions::CommandSession) -> Vec<u8> {
    let mut area = session.handle.to_be_bytes().to_vec();
    area.extend_from_slice(&tpm2b(&session.nonce));
    area.push(session.attrs);
    area.extend_from_slice(&tpm2b(&session.hmac));
    tpm::Command::new(cc::NV_READ, true)
        .u32(auth_handle)
        .u32(NV_HCL_REPORT)
        .u32(area.len() as u32)
        .bytes(&area)
        .u16(1)
        .u16(0)
        .finish()
}

/// `None` once the TPM is started; before `TPM2_Startup`, libtpms's answer
/// (`TPM_RC_INITIALIZE`, 0x100) to `TPM2_NV_ReadPublic` of the one-byte index, which
/// the report index commands then get too. libtpms is asked rather than a flag kept here:
/// it alone knows whether it resumed a started TPM from saved volatile state.
fn started(engine: &mut dyn Engine, locality: u8) -> Option<Vec<u8>> {
    match engine.execute(locality, &tpm::nv_read_public(NV_HCL_REPORT)) {
        Ok(r) if crate::engine::response_code(&r) == Some(0) => None,
        // TPM_RC_INITIALIZE, or TPM_RC_FAILURE in failure mode (the index itself is
        // always there: only the platform could undefine it).
        Ok(r) => Some(r),
        Err(_) => Some(error_response(crate::TPM_RC_FAILURE)),
    }
}

/// Whether the certificate `der` certifies `spki`.
fn cert_has_spki(der: &[u8], spki: &[u8]) -> bool {
    use der::{Decode, Encode};
    x509_cert::Certificate::from_der(der)
        .ok()
        .and_then(|c| c.tbs_certificate.subject_public_key_info.to_der().ok())
        .is_some_and(|s| s == spki)
}
