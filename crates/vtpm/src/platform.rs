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
//!   indices.
//!
//! The report index is a real libtpms NV index, so every client reads it the usual way
//! (password, HMAC and encrypted sessions alike). libtpms caps NV indices at 2048
//! bytes: the report uses the 2048-byte layout of Azure's earlier paravisor, whose
//! claims carry `HCLAkPub` but not `HCLEkPub` (an RSA-2048 EK's JWK does not fit
//! beside the AK's; the EK is at its persistent handle).

use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use tpm_quote::{PublicDetails, TpmPublic};
use zeroize::Zeroizing;

use crate::ca::VtpmCa;
use crate::engine::{Engine, EngineError, TPM_FAIL};
use crate::error_response;
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
/// Size of the report index (libtpms's largest; Azure's earlier layout).
pub const HCL_NV_SIZE: usize = 2048;

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

/// Returns the key at `handle`, creating it as a primary of the endorsement hierarchy
/// from `template` and making it persistent when it is not there.
fn ensure_key(
    engine: &mut dyn Engine,
    handle: u32,
    template: &[u8],
) -> Result<RsaKey, EngineError> {
    let r = run(engine, tpm::read_public(handle))?;
    if r.rc == 0 {
        let (public, _) = take_tpm2b(&r.body).ok_or_else(|| malformed("ReadPublic"))?;
        let mut tpm2b = (public.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend_from_slice(public);
        return rsa_key(&tpm2b);
    }
    let r = run_ok(
        engine,
        "TPM2_CreatePrimary",
        tpm::create_primary(RH_ENDORSEMENT, template),
    )?;
    let transient = r.handle().ok_or_else(|| malformed("CreatePrimary"))?;
    let params = r.params(1).ok_or_else(|| malformed("CreatePrimary"))?;
    let (public, _) = take_tpm2b(params).ok_or_else(|| malformed("CreatePrimary"))?;
    let mut tpm2b = (public.len() as u16).to_be_bytes().to_vec();
    tpm2b.extend_from_slice(public);
    let key = rsa_key(&tpm2b)?;
    let evicted = run_ok(
        engine,
        "TPM2_EvictControl",
        tpm::evict_control(transient, handle),
    );
    let _ = run(engine, tpm::flush_context(transient));
    evicted?;
    Ok(key)
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
    /// restarted and waiting for the guest's `TPM2_Startup`.
    pub fn provision(&mut self, engine: &mut dyn Engine) -> Result<(), EngineError> {
        let r = run(engine, tpm::startup_clear())?;
        if r.rc != 0 && r.rc != tpm::RC_INITIALIZE {
            return Err(EngineError::new(
                TPM_FAIL,
                format!("TPM2_Startup failed with {:#x}", r.rc),
            ));
        }
        let ek = ensure_key(engine, EK_HANDLE, &ek_template())?;
        let ak = ensure_key(engine, AK_HANDLE, &ak_template())?;
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
            if tpm::nv_size(engine, NV_HCL_REPORT)?.is_none() {
                run_ok(
                    engine,
                    "TPM2_NV_DefineSpace",
                    tpm::nv_define_platform(NV_HCL_REPORT, PLATFORM_INDEX, HCL_NV_SIZE as u16, &[]),
                )?;
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
        self.refresh_report(engine, &[0; 64])?;
        let _ = run(engine, tpm::shutdown_clear());
        engine.stop(false);
        engine.start(false)
    }

    /// The runtime claims for `user_data`, compact, in Azure's member order.
    pub fn claims(&self, user_data: &[u8; 64]) -> Option<String> {
        let ak = self.ak.as_ref()?;
        let vm = &self.vm;
        Some(format!(
            r#"{{"keys":[{}],"vm-configuration":{{"console-enabled":{},"secure-boot":{},"tpm-enabled":{},"vmUniqueId":"{}"}},"user-data":"{}"}}"#,
            ak.jwk("HCLAkPub", "sign"),
            vm.console_enabled,
            vm.secure_boot,
            vm.tpm_enabled,
            vm.vm_id,
            hex::encode_upper(user_data)
        ))
    }

    /// Builds the report for `user_data` and writes it to its index (with the
    /// platform authorization only this process holds).
    fn refresh_report(
        &mut self,
        engine: &mut dyn Engine,
        user_data: &[u8; 64],
    ) -> Result<(), EngineError> {
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
        tpm::nv_write_all(
            engine,
            RH_PLATFORM,
            NV_HCL_REPORT,
            &self.platform_auth,
            &hcl,
        )?;
        self.hcl = Some(hcl);
        Ok(())
    }

    /// Answers a command here instead of the engine, or `None` to let the engine run
    /// it: a user-data write over the rate limit gets `TPM_RC_RETRY`.
    pub(crate) fn before(&mut self, command: &[u8]) -> Option<Vec<u8>> {
        let code = crate::engine::command_code(command)?;
        let nv_index = command
            .get(14..18)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if code == cc::NV_WRITE && nv_index == Some(NV_USER_DATA) && !self.refreshes.allow() {
            return Some(error_response(tpm::RC_RETRY));
        }
        None
    }

    /// Sets the platform authorization to a fresh random value only this process
    /// holds. `TPM2_Startup(SU_CLEAR)` reset it to empty; after a resume
    /// (`SU_STATE`) the previous value is back, which is known here too.
    fn lock_platform_hierarchy(&mut self, engine: &mut dyn Engine) -> Result<(), EngineError> {
        let mut auth = Zeroizing::new(vec![0u8; 32]);
        aws_lc_rs::rand::fill(auth.as_mut_slice())
            .map_err(|_| EngineError::new(TPM_FAIL, "no randomness"))?;
        for current in [Zeroizing::new(Vec::new()), self.platform_auth.clone()] {
            let r = run(engine, tpm::change_platform_auth(&current, &auth))?;
            if r.rc == 0 {
                self.platform_auth = auth;
                return Ok(());
            }
        }
        Err(EngineError::new(
            TPM_FAIL,
            "TPM2_HierarchyChangeAuth(platform) was refused",
        ))
    }

    /// Acts on a command the engine ran: locks the platform hierarchy after
    /// `TPM2_Startup`; refreshes the report after a user-data write.
    pub(crate) fn after(&mut self, engine: &mut dyn Engine, command: &[u8], response: &[u8]) {
        if crate::engine::response_code(response) != Some(0) {
            return;
        }
        let code = crate::engine::command_code(command);
        let nv_index = command
            .get(14..18)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if code == Some(cc::STARTUP) {
            if let Err(e) = self.lock_platform_hierarchy(engine) {
                eprintln!("vtpm: locking the platform hierarchy failed: {e}");
            }
        } else if code == Some(cc::NV_WRITE) && nv_index == Some(NV_USER_DATA) {
            let data = tpm::nv_read_all(engine, NV_USER_DATA, NV_USER_DATA, &[], 64);
            // A partial write leaves the index partly unwritten: nothing to report.
            if let Ok(Ok(user_data)) = data.map(|d| <[u8; 64]>::try_from(d.as_slice()))
                && let Err(e) = self.refresh_report(engine, &user_data)
            {
                eprintln!("vtpm: refreshing the attestation report failed: {e}");
            }
        }
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
