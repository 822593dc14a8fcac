//! One emulated AMD secure processor per host: identity, key hierarchy, state.
//!
//! State lives in a directory: `platform.json` (identity, configuration and whether
//! the keys come from a test seed),
//! `keys/` (ARK and ASK PKCS#8, the chip secret; mode 0600) and `certs/` (ARK, ASK and
//! one VCEK per TCB, DER). Every file is written atomically (temporary file, fsync,
//! rename), so a crash leaves either the old or the new file. The VCEK is derived from
//! the chip secret and the TCB, so a TCB change yields a new VCEK, as on hardware.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use snp::Product;
use snp::report::FirmwareVersion;
use snp::tcb::TcbVersion;

use crate::certs::{self, CertSpec, IssueError, Role, VekExt};

/// Why a platform could not be created, opened or used.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// Reading or writing the state directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state directory holds something this version cannot use.
    #[error("platform state {path} is invalid: {problem}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A platform already exists in the directory.
    #[error("a platform already exists in {0}")]
    Exists(PathBuf),
    /// The configuration contradicts itself.
    #[error("invalid platform configuration: {0}")]
    Config(String),
    /// Key generation or certificate issuance failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// A test seed is shorter than [`MIN_SEED_LEN`] bytes.
    #[error("a seed must be at least {MIN_SEED_LEN} bytes, got {got}")]
    SeedTooShort {
        /// Its length in bytes.
        got: usize,
    },
    /// SEV-SNP is disabled: the host is not SNP-capable.
    #[error(
        "SEV-SNP is not enabled on this host: it is not SNP-capable, so no guest can be launched or attested"
    )]
    SnpDisabled,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PlatformError + '_ {
    move |source| PlatformError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a platform is: product, TCB, firmware and platform flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// The product emulated.
    pub product: Product,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// TEE SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin only).
    #[serde(default)]
    pub fmc: Option<u8>,
    /// Firmware version `major.minor.build`.
    pub firmware: [u8; 3],
    /// Report structure version the firmware emits (3 or 5).
    pub report_version: u32,
    /// SEV-SNP enabled in the BIOS and firmware.
    pub snp_enabled: bool,
    /// SMT enabled.
    pub smt: bool,
    /// Transparent SME enabled.
    pub tsme: bool,
    /// ECC memory.
    pub ecc: bool,
    /// Ciphertext hiding for DRAM enabled.
    pub ciphertext_hiding: bool,
    /// A VLEK is loaded (as a cloud provider would), with its ASVK chain; reports are
    /// then signed with the VLEK unless the guest asks for the VCEK.
    #[serde(default)]
    pub vlek: bool,
}

impl PlatformConfig {
    /// A healthy, current-looking platform of `product`.
    pub fn new(product: Product) -> Self {
        let (bootloader, tee, snp, microcode, fmc, firmware, report_version) = match product {
            Product::Milan => (4, 0, 24, 219, None, [1, 55, 29], 3),
            Product::Genoa => (10, 0, 23, 25, None, [1, 55, 40], 3),
            Product::Turin => (1, 1, 4, 5, Some(1), [1, 58, 2], 5),
        };
        PlatformConfig {
            product,
            bootloader,
            tee,
            snp,
            microcode,
            fmc,
            firmware,
            report_version,
            snp_enabled: true,
            smt: true,
            tsme: false,
            ecc: true,
            ciphertext_hiding: false,
            vlek: false,
        }
    }

    /// The TCB in the product's layout.
    pub fn tcb(&self) -> TcbVersion {
        match self.product {
            Product::Turin => TcbVersion::turin(
                self.fmc.unwrap_or(0),
                self.bootloader,
                self.tee,
                self.snp,
                self.microcode,
            ),
            _ => TcbVersion::milan_genoa(self.bootloader, self.tee, self.snp, self.microcode),
        }
    }

    /// The firmware version.
    pub fn firmware_version(&self) -> FirmwareVersion {
        FirmwareVersion {
            major: self.firmware[0],
            minor: self.firmware[1],
            build: self.firmware[2],
        }
    }

    /// CPUID family, model, stepping of a CPU of this product.
    pub fn cpuid(&self) -> (u8, u8, u8) {
        match self.product {
            Product::Milan => (0x19, 0x01, 0x01),
            Product::Genoa => (0x19, 0x11, 0x01),
            Product::Turin => (0x1A, 0x02, 0x00),
        }
    }

    /// PLATFORM_INFO as the firmware reports it.
    pub fn platform_info(&self) -> u64 {
        u64::from(self.smt)
            | u64::from(self.tsme) << 1
            | u64::from(self.ecc) << 2
            | u64::from(self.ciphertext_hiding) << 4
            | 1 << 5
    }

    fn validate(&self) -> Result<(), PlatformError> {
        if !matches!(self.report_version, 3 | 5) {
            return Err(PlatformError::Config(format!(
                "report_version must be 3 or 5, got {}",
                self.report_version
            )));
        }
        if (self.product == Product::Turin) != self.fmc.is_some() {
            return Err(PlatformError::Config("fmc is set exactly for Turin".into()));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: u32,
    chip_id: String,
    created: u64,
    config: PlatformConfig,
    /// Every key was derived from a test seed. Absent in platforms created before the
    /// field existed: read as `false`, although the old `--seed` may have made them
    /// (ADR 0009).
    #[serde(default)]
    seeded: bool,
}

/// The shortest seed [`Platform::create`] accepts: 16 bytes, 128 bits.
pub const MIN_SEED_LEN: usize = 16;

const STATE_FORMAT: u32 = 1;
/// Seven years, the validity AMD gives a VCEK.
const VCEK_VALIDITY: u64 = 7 * 365 * 86_400;
/// One year, as the VLEKs AMD issues to cloud providers.
const VLEK_VALIDITY: u64 = 365 * 86_400;
/// The cloud-provider identity in emulated VLEKs.
pub const EMULATOR_CSP_ID: &str = "CN=emulator.opencvm.invalid";
/// How long an emulated CRL is current: a year (AMD's are shorter; an emulated
/// platform is for development, and a CRL pinned in a long-running service should not
/// go stale under it).
pub const EMULATOR_CRL_VALIDITY: u64 = 365 * 86_400;
/// Twenty-five years, as AMD's ARK and ASK.
const ROOT_VALIDITY: u64 = 25 * 365 * 86_400;

/// An emulated AMD secure processor.
pub struct Platform {
    dir: PathBuf,
    config: PlatformConfig,
    chip_id: [u8; 64],
    created: u64,
    seeded: bool,
    chip_secret: Zeroizing<[u8; 32]>,
    ask: RsaKeyPair,
    ark_cert: Vec<u8>,
    ask_cert: Vec<u8>,
    vcek: EcdsaKeyPair,
    vcek_cert: Vec<u8>,
    /// The ASVK certificate and the VLEK key and certificate, when a VLEK is loaded.
    vlek: Option<VlekState>,
}

struct VlekState {
    asvk_cert: Vec<u8>,
    key: EcdsaKeyPair,
    cert: Vec<u8>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("chip_id", &hex::encode(self.chip_id))
            .finish_non_exhaustive()
    }
}

/// Writes `data` to `path` atomically, with `mode` on Unix.
pub(crate) fn write_atomic(path: &Path, data: &[u8], secret: bool) -> Result<(), PlatformError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hmac384(key: &[u8], parts: &[&[u8]]) -> [u8; 48] {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA384, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 48];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// The VCEK for a TCB: a P-384 scalar derived from the chip secret and the TCB.
fn derive_vcek(
    secret: &[u8; 32],
    product: Product,
    tcb: TcbVersion,
) -> Result<EcdsaKeyPair, PlatformError> {
    derive_key(secret, b"opencvm VCEK", product, tcb)
}

/// A P-384 key derived from the chip secret, a label and the TCB.
fn derive_key(
    secret: &[u8; 32],
    label: &[u8],
    product: Product,
    tcb: TcbVersion,
) -> Result<EcdsaKeyPair, PlatformError> {
    for counter in 0u32..16 {
        let scalar = Zeroizing::new(hmac384(
            secret,
            &[
                label,
                product.name().as_bytes(),
                &tcb.raw().to_le_bytes(),
                &counter.to_le_bytes(),
            ],
        ));
        // RFC 5915 ECPrivateKey { version 1, privateKey, [0] secp384r1 }.
        let mut der = Zeroizing::new(vec![0x30, 0x3e, 0x02, 0x01, 0x01, 0x04, 0x30]);
        der.extend_from_slice(&scalar[..]);
        der.extend_from_slice(&[0xa0, 0x07, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]);
        if let Ok(k) = EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_FIXED_SIGNING, &der) {
            return Ok(k);
        }
    }
    Err(PlatformError::Issue(IssueError::Signing))
}

/// An RSA-4096 key: from the system RNG, or derived from `seed` for tests.
fn rsa_key(seed: Option<&[u8]>, label: &str) -> Result<RsaKeyPair, PlatformError> {
    match seed {
        None => RsaKeyPair::generate(KeySize::Rsa4096).map_err(|_| IssueError::Signing.into()),
        Some(seed) => {
            let pkcs8 =
                crate::seeded_rsa::rsa4096_pkcs8(seed, label).map_err(IssueError::Encoding)?;
            RsaKeyPair::from_pkcs8(&pkcs8).map_err(|_| IssueError::Signing.into())
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PlatformError> {
    fs::read(path).map_err(io(path))
}

impl Platform {
    /// Creates a platform in `dir` (which must not hold one).
    ///
    /// Dangerous: with a `seed` (at least [`MIN_SEED_LEN`] bytes), every key (chip
    /// identity and secret, so every VCEK, VLEK and derived key, and the RSA-4096
    /// ARK, ASK and ASVK) is derived from it, so anyone who knows the seed holds them
    /// all. For tests only; the platform records it ([`Platform::seeded`]).
    /// Certificates still carry the creation time and fresh RSA-PSS salts.
    pub fn create(
        dir: &Path,
        config: PlatformConfig,
        seed: Option<&[u8]>,
    ) -> Result<Self, PlatformError> {
        config.validate()?;
        if let Some(seed) = seed
            && seed.len() < MIN_SEED_LEN
        {
            return Err(PlatformError::SeedTooShort { got: seed.len() });
        }
        let state = dir.join("platform.json");
        if state.exists() {
            return Err(PlatformError::Exists(dir.to_owned()));
        }
        let mut chip_id = [0u8; 64];
        let mut secret = Zeroizing::new([0u8; 32]);
        match seed {
            Some(seed) => {
                let a = hmac384(seed, &[b"opencvm chip id"]);
                let b = hmac384(seed, &[b"opencvm chip id 2"]);
                chip_id[..48].copy_from_slice(&a);
                chip_id[48..].copy_from_slice(&b[..16]);
                secret.copy_from_slice(&hmac384(seed, &[b"opencvm chip secret"])[..32]);
            }
            None => {
                aws_lc_rs::rand::fill(&mut chip_id).map_err(|_| IssueError::Signing)?;
                aws_lc_rs::rand::fill(&mut secret[..]).map_err(|_| IssueError::Signing)?;
            }
        }
        if config.product == Product::Turin {
            // Turin's hwID is 8 bytes; the rest of CHIP_ID is zero.
            chip_id[8..].fill(0);
        }
        let ark = rsa_key(seed, "ARK")?;
        let ask = rsa_key(seed, "ASK")?;
        let created = now().saturating_sub(86_400);
        let ark_spki = certs::rsa_spki(&ark)?;
        let ask_spki = certs::rsa_spki(&ask)?;
        let product = config.product;
        let ark_cert = certs::issue(
            &CertSpec {
                role: Role::Ark,
                product,
                serial: &[0x01, 0x00, 0x00],
                not_before: created,
                not_after: created + ROOT_VALIDITY,
                subject_spki: &ark_spki,
                issuer_spki: &ark_spki,
                vek: None,
            },
            &ark,
        )?;
        let ask_cert = certs::issue(
            &CertSpec {
                role: Role::Ask,
                product,
                serial: &[0x01, 0x00, 0x01],
                not_before: created,
                not_after: created + ROOT_VALIDITY,
                subject_spki: &ask_spki,
                issuer_spki: &ark_spki,
                vek: None,
            },
            &ark,
        )?;
        let pk8 = |k: &RsaKeyPair| -> Result<Zeroizing<Vec<u8>>, PlatformError> {
            Ok(Zeroizing::new(
                AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(k)
                    .map_err(|_| IssueError::Signing)?
                    .as_ref()
                    .to_vec(),
            ))
        };
        if config.vlek {
            let asvk = rsa_key(seed, "ASVK")?;
            let asvk_cert = certs::issue(
                &CertSpec {
                    role: Role::Asvk,
                    product,
                    serial: &[0x01, 0x01, 0x01],
                    not_before: created,
                    not_after: created + ROOT_VALIDITY,
                    subject_spki: &certs::rsa_spki(&asvk)?,
                    issuer_spki: &ark_spki,
                    vek: None,
                },
                &ark,
            )?;
            write_atomic(&dir.join("keys/asvk.p8"), &pk8(&asvk)?, true)?;
            write_atomic(&dir.join("certs/asvk.der"), &asvk_cert, false)?;
        }
        write_atomic(&dir.join("keys/ark.p8"), &pk8(&ark)?, true)?;
        write_atomic(&dir.join("keys/ask.p8"), &pk8(&ask)?, true)?;
        write_atomic(&dir.join("keys/chip-secret"), &secret[..], true)?;
        write_atomic(&dir.join("certs/ark.der"), &ark_cert, false)?;
        write_atomic(&dir.join("certs/ask.der"), &ask_cert, false)?;
        let file = StateFile {
            format: STATE_FORMAT,
            chip_id: hex::encode(chip_id),
            created,
            config,
            seeded: seed.is_some(),
        };
        let json =
            serde_json::to_vec_pretty(&file).map_err(|e| PlatformError::Config(e.to_string()))?;
        // platform.json last: its presence marks a complete platform.
        write_atomic(&state, &json, false)?;
        Self::open(dir)
    }

    /// Opens the platform in `dir`.
    pub fn open(dir: &Path) -> Result<Self, PlatformError> {
        let state_path = dir.join("platform.json");
        let bad = |problem: String| PlatformError::State {
            path: state_path.clone(),
            problem,
        };
        let state: StateFile =
            serde_json::from_slice(&read(&state_path)?).map_err(|e| bad(e.to_string()))?;
        if state.format != STATE_FORMAT {
            return Err(bad(format!(
                "format {} is not {STATE_FORMAT}",
                state.format
            )));
        }
        state.config.validate()?;
        let mut chip_id = [0u8; 64];
        hex::decode_to_slice(&state.chip_id, &mut chip_id)
            .map_err(|e| bad(format!("chip_id: {e}")))?;
        let secret_bytes = Zeroizing::new(read(&dir.join("keys/chip-secret"))?);
        let mut chip_secret = Zeroizing::new([0u8; 32]);
        if secret_bytes.len() != 32 {
            return Err(bad("keys/chip-secret is not 32 bytes".into()));
        }
        chip_secret.copy_from_slice(&secret_bytes);
        let load = |name: &str| -> Result<RsaKeyPair, PlatformError> {
            let p = dir.join(name);
            let der = Zeroizing::new(read(&p)?);
            RsaKeyPair::from_pkcs8(&der).map_err(|e| PlatformError::State {
                path: p,
                problem: e.to_string(),
            })
        };
        // The ARK key (keys/ark.p8) is needed only to issue ASKs and CRLs, not to run.
        let ask = load("keys/ask.p8")?;
        let ark_cert = read(&dir.join("certs/ark.der"))?;
        let ask_cert = read(&dir.join("certs/ask.der"))?;
        let vcek = derive_vcek(&chip_secret, state.config.product, state.config.tcb())?;
        let mut p = Platform {
            dir: dir.to_owned(),
            config: state.config,
            chip_id,
            created: state.created,
            seeded: state.seeded,
            chip_secret,
            ask,
            ark_cert,
            ask_cert,
            vcek,
            vcek_cert: Vec::new(),
            vlek: None,
        };
        p.vcek_cert = p.load_or_issue_vcek_cert()?;
        p.vlek = p.load_vlek()?;
        Ok(p)
    }

    /// Opens the platform in `dir`, creating it with `config` if there is none.
    pub fn open_or_create(dir: &Path, config: PlatformConfig) -> Result<Self, PlatformError> {
        if dir.join("platform.json").exists() {
            Self::open(dir)
        } else {
            Self::create(dir, config, None)
        }
    }

    fn load_or_issue_vcek_cert(&self) -> Result<Vec<u8>, PlatformError> {
        let ext = VekExt {
            tcb: self.config.tcb(),
            hw_id: Some(self.hw_id()),
            csp_id: None,
        };
        self.load_or_issue_vek_cert(Role::Vcek, &self.vcek, &self.ask, VCEK_VALIDITY, ext)
    }

    /// The certificate of a VCEK or VLEK (`key`) for `ext.tcb`: the one stored in
    /// `certs/<vcek|vlek>-<tcb>.der`, or a new one issued by `issuer` and stored there.
    fn load_or_issue_vek_cert(
        &self,
        role: Role,
        key: &EcdsaKeyPair,
        issuer: &RsaKeyPair,
        validity: u64,
        ext: VekExt<'_>,
    ) -> Result<Vec<u8>, PlatformError> {
        let name = if matches!(role, Role::Vlek) {
            "vlek"
        } else {
            "vcek"
        };
        let path = self
            .dir
            .join(format!("certs/{name}-{:016x}.der", ext.tcb.raw()));
        if let Ok(der) = fs::read(&path) {
            return Ok(der);
        }
        let spki = key.public_key().as_der().map_err(|_| IssueError::Signing)?;
        let cert = certs::issue(
            &CertSpec {
                role,
                product: self.config.product,
                serial: &[0],
                not_before: self.created,
                not_after: self.created + validity,
                subject_spki: spki.as_ref(),
                issuer_spki: &certs::rsa_spki(issuer)?,
                vek: Some(ext),
            },
            issuer,
        )?;
        write_atomic(&path, &cert, false)?;
        Ok(cert)
    }

    /// The VLEK state for the current TCB, when the platform has a VLEK: the ASVK
    /// certificate, the VLEK key (derived like the VCEK, under another label) and its
    /// certificate (issued by the ASVK on first use of a TCB).
    fn load_vlek(&self) -> Result<Option<VlekState>, PlatformError> {
        if !self.config.vlek {
            return Ok(None);
        }
        let asvk_path = self.dir.join("keys/asvk.p8");
        let asvk_der = Zeroizing::new(read(&asvk_path)?);
        let asvk = RsaKeyPair::from_pkcs8(&asvk_der).map_err(|e| PlatformError::State {
            path: asvk_path,
            problem: e.to_string(),
        })?;
        let asvk_cert = read(&self.dir.join("certs/asvk.der"))?;
        let tcb = self.config.tcb();
        let key = derive_key(&self.chip_secret, b"opencvm VLEK", self.config.product, tcb)?;
        let ext = VekExt {
            tcb,
            hw_id: None,
            csp_id: Some(EMULATOR_CSP_ID),
        };
        let cert = self.load_or_issue_vek_cert(Role::Vlek, &key, &asvk, VLEK_VALIDITY, ext)?;
        Ok(Some(VlekState {
            asvk_cert,
            key,
            cert,
        }))
    }

    /// Changes the platform's TCB (a firmware or microcode update): a new VCEK.
    pub fn set_tcb(&mut self, tcb: TcbVersion) -> Result<(), PlatformError> {
        if tcb.layout() != self.config.product.tcb_layout() {
            return Err(PlatformError::Config(
                "TCB layout does not match the product".into(),
            ));
        }
        let mut config = self.config.clone();
        config.bootloader = tcb.bootloader();
        config.tee = tcb.tee();
        config.snp = tcb.snp();
        config.microcode = tcb.microcode();
        config.fmc = tcb.fmc();
        self.reconfigure(config)
    }

    /// Replaces the platform configuration (same product), persisting it.
    pub fn reconfigure(&mut self, config: PlatformConfig) -> Result<(), PlatformError> {
        config.validate()?;
        if config.product != self.config.product {
            return Err(PlatformError::Config(
                "a platform's product cannot change".into(),
            ));
        }
        let file = StateFile {
            format: STATE_FORMAT,
            chip_id: hex::encode(self.chip_id),
            created: self.created,
            config: config.clone(),
            seeded: self.seeded,
        };
        let json =
            serde_json::to_vec_pretty(&file).map_err(|e| PlatformError::Config(e.to_string()))?;
        write_atomic(&self.dir.join("platform.json"), &json, false)?;
        self.vcek = derive_vcek(&self.chip_secret, config.product, config.tcb())?;
        if config.vlek != self.config.vlek {
            return Err(PlatformError::Config(
                "a VLEK is provisioned when the platform is created".into(),
            ));
        }
        self.config = config;
        self.vcek_cert = self.load_or_issue_vcek_cert()?;
        self.vlek = self.load_vlek()?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &PlatformConfig {
        &self.config
    }
    /// Whether every key was derived from a test seed (`cvm snp create
    /// --dangerously-seed`): its evidence proves nothing to anyone who knows the seed.
    pub fn seeded(&self) -> bool {
        self.seeded
    }
    /// The 64-byte chip identifier (Turin: 8 significant bytes).
    pub fn chip_id(&self) -> &[u8; 64] {
        &self.chip_id
    }
    /// The hwID in the VCEK: the chip ID, or its first 8 bytes on Turin.
    pub fn hw_id(&self) -> &[u8] {
        match self.config.product {
            Product::Turin => &self.chip_id[..8],
            _ => &self.chip_id,
        }
    }
    /// A CRL of this platform's ARK, as AMD's KDS serves one per product: valid from a
    /// minute ago for [`EMULATOR_CRL_VALIDITY`], cRLNumber the issue time in seconds,
    /// listing `revoked` certificate serials (for instance an ASK's, to test
    /// revocation). Signed with the ARK key kept in the platform's `keys/ark.p8`.
    pub fn issue_crl(&self, revoked: &[&[u8]]) -> Result<Vec<u8>, PlatformError> {
        let path = self.dir.join("keys/ark.p8");
        let pkcs8 = Zeroizing::new(read(&path)?);
        let ark = RsaKeyPair::from_pkcs8(&pkcs8).map_err(|_| PlatformError::State {
            path: path.clone(),
            problem: "the ARK key does not load".into(),
        })?;
        let now = now();
        let this_update = now.saturating_sub(60);
        let number = u32::try_from(now).unwrap_or(u32::MAX);
        Ok(certs::issue_crl(
            self.config.product,
            &ark,
            number,
            this_update,
            this_update + EMULATOR_CRL_VALIDITY,
            revoked,
        )?)
    }

    /// The ARK certificate (DER).
    pub fn ark_der(&self) -> &[u8] {
        &self.ark_cert
    }
    /// The ASK certificate (DER).
    pub fn ask_der(&self) -> &[u8] {
        &self.ask_cert
    }
    /// The VCEK certificate for the current TCB (DER).
    pub fn vcek_der(&self) -> &[u8] {
        &self.vcek_cert
    }
    /// The VCEK key pair for the current TCB.
    pub(crate) fn vcek_key(&self) -> &EcdsaKeyPair {
        &self.vcek
    }
    /// The chip secret, from which derived keys come.
    pub(crate) fn chip_secret(&self) -> &[u8; 32] {
        &self.chip_secret
    }

    /// The VLEK key pair, when one is loaded.
    pub(crate) fn vlek_key(&self) -> Option<&EcdsaKeyPair> {
        self.vlek.as_ref().map(|v| &v.key)
    }
    /// The VLEK certificate (DER), when one is loaded.
    pub fn vlek_der(&self) -> Option<&[u8]> {
        self.vlek.as_ref().map(|v| &v.cert[..])
    }
    /// The ASVK certificate (DER), when a VLEK is loaded.
    pub fn asvk_der(&self) -> Option<&[u8]> {
        self.vlek.as_ref().map(|v| &v.asvk_cert[..])
    }
    /// VLEK, ASVK and ARK as one PEM bundle, when a VLEK is loaded.
    pub fn vlek_chain_pem(&self) -> Option<String> {
        let v = self.vlek.as_ref()?;
        Some(
            [&v.cert[..], &v.asvk_cert[..], self.ark_der()]
                .iter()
                .map(|der| pem("CERTIFICATE", der))
                .collect(),
        )
    }

    /// Fails with [`PlatformError::SnpDisabled`] unless SEV-SNP is enabled.
    pub fn require_snp(&self) -> Result<(), PlatformError> {
        if self.config.snp_enabled {
            Ok(())
        } else {
            Err(PlatformError::SnpDisabled)
        }
    }

    /// What a verifier pins to trust this emulator: ASK, ASVK (when a VLEK is
    /// loaded), ARK and a fresh CRL of the ARK revoking nothing, as one PEM bundle
    /// (`cvm snp export-roots`, `--dangerously-trust-emulator-roots`).
    pub fn roots_pem(&self) -> Result<String, PlatformError> {
        let mut bundle = pem("CERTIFICATE", self.ask_der());
        if let Some(asvk) = self.asvk_der() {
            bundle += &pem("CERTIFICATE", asvk);
        }
        bundle += &pem("CERTIFICATE", self.ark_der());
        bundle += &pem("X509 CRL", &self.issue_crl(&[])?);
        Ok(bundle)
    }

    /// VCEK, ASK and ARK as one PEM bundle.
    pub fn chain_pem(&self) -> String {
        [
            ("VCEK", self.vcek_der()),
            ("ASK", self.ask_der()),
            ("ARK", self.ark_der()),
        ]
        .iter()
        .map(|(_, der)| pem("CERTIFICATE", der))
        .collect()
    }
}

/// PEM-encodes DER with 64-column lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn seeds_shorter_than_16_bytes_are_refused() {
        for seed in [&b""[..], b"k", &[7u8; MIN_SEED_LEN - 1]] {
            let dir = tempfile::tempdir().unwrap();
            let e = Platform::create(dir.path(), PlatformConfig::new(Product::Milan), Some(seed))
                .unwrap_err();
            assert!(
                matches!(e, PlatformError::SeedTooShort { got } if got == seed.len()),
                "{e}"
            );
            assert!(
                !dir.path().join("platform.json").exists(),
                "nothing is created"
            );
        }
    }

    #[test]
    fn a_seeded_platform_says_so_and_old_state_reads_as_unseeded() {
        let dir = tempfile::tempdir().unwrap();
        let seed = [0x5e; MIN_SEED_LEN];
        let p =
            Platform::create(dir.path(), PlatformConfig::new(Product::Milan), Some(&seed)).unwrap();
        assert!(p.seeded());
        let state = dir.path().join("platform.json");
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
        assert_eq!(json["seeded"], true);
        // Kept across a reconfiguration and a reopen.
        let mut p = Platform::open(dir.path()).unwrap();
        assert!(p.seeded());
        p.set_tcb(TcbVersion::milan_genoa(4, 0, 24, 220)).unwrap();
        assert!(Platform::open(dir.path()).unwrap().seeded());

        // A platform written before the field existed opens, unseeded.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("seeded");
        fs::write(&state, serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(!Platform::open(dir.path()).unwrap().seeded());

        let dir = tempfile::tempdir().unwrap();
        let p = Platform::create(dir.path(), PlatformConfig::new(Product::Milan), None).unwrap();
        assert!(!p.seeded());
    }
}
