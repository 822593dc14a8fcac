//! The disk pre-encryption service: before a VM's first boot, its OS disk is made
//! from its image on its host with every partition but the boot partitions encrypted
//! (LUKS2, `disk::os::encrypt_os`), so the VM never runs from a disk in clear.
//!
//! Each encrypted partition's keyslot 0 opens with a fresh 256-bit disk key that
//! exists outside the disk only as the key vault holds it:
//! - **platform-managed**: imported into the vault as `vm-<id>-disk` with the
//!   VM's immutable release policy (the same as its VMGS key's, ADR 0016);
//! - **customer-managed**: wrapped (`RSA_AES_KEY_WRAP_256`) to the customer's RSA
//!   key in the vault, which the customer's own release policy guards; the wrapped
//!   key is kept in the disk's LUKS2 header.
//!
//! Either way the header carries an [`TOKEN_TYPE`] token naming the key, so the disk
//! says which key opens it. At the VM's first start the host agent has that key
//! released to the VM's token and binds the disk to the VM's vTPM; later starts
//! unseal it through the vTPM (see the crate documentation).
//!
//! Crash safety: the disk is built in `VM_DIR/pre-encryption/` and appears as
//! `VM_DIR/os.img` by one rename once its key is in the vault; the next run after an
//! interruption starts over, replacing any `os.img` (whose pin was never recorded,
//! so it is not trusted); a platform key imported by the interrupted run stays as an
//! unused older version of `vm-<id>-disk`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use control::agent::{BootFailure, BootSpec, PreEncrypted, PreEncryption};
use control_api::codes::boot as code;
use keyvault::wrap::{WrapMechanism, WrappingPublicKey};
use keyvault_api::KeyVaultApi as _;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::{HostError, Services, fail, release_policy, vm_dir};

/// The step the VM's events record.
pub const STEP: &str = "disk_pre_encryption";
/// The VM's encrypted OS disk in its directory on the host.
pub const OS_DISK: &str = "os.img";
/// The LUKS2 token type naming the key that opens keyslot 0 (cryptsetup keeps
/// tokens of types it does not know, and ignores them).
pub const TOKEN_TYPE: &str = "opencvm-key-release";

/// The pre-encryption service of `cvm up`'s emulated hosts.
pub struct PreEncryptionService {
    root: PathBuf,
    agent: ureq::Agent,
    attestation_url: String,
    vault_url: String,
    vault_admin: Zeroizing<String>,
}

impl std::fmt::Debug for PreEncryptionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreEncryptionService")
            .field("root", &self.root)
            .field("vault_url", &self.vault_url)
            .finish_non_exhaustive()
    }
}

/// Where a disk key is kept, as the disk's token records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskKey {
    /// The vault key (its id with version) is the passphrase of keyslot 0.
    Platform {
        /// The key id.
        kid: String,
    },
    /// The passphrase of keyslot 0 is wrapped to the vault key `kid` (RSA).
    Customer {
        /// The key id of the customer's RSA key.
        kid: String,
        /// The passphrase, wrapped with `RSA_AES_KEY_WRAP_256`.
        wrapped: Vec<u8>,
    },
}

impl DiskKey {
    /// The token that records it, for keyslot 0.
    pub fn to_token(&self) -> disk::metadata::Token {
        let mut other = serde_json::Map::new();
        match self {
            DiskKey::Platform { kid } => {
                other.insert("key_management".into(), "platform".into());
                other.insert("kid".into(), kid.clone().into());
            }
            DiskKey::Customer { kid, wrapped } => {
                other.insert("key_management".into(), "customer".into());
                other.insert("kid".into(), kid.clone().into());
                other.insert("wrapped_key".into(), B64URL.encode(wrapped).into());
                other.insert(
                    "wrap_mechanism".into(),
                    WrapMechanism::RsaAesKeyWrap256.name().into(),
                );
            }
        }
        disk::metadata::Token {
            kind: TOKEN_TYPE.into(),
            keyslots: vec!["0".into()],
            other,
        }
    }

    /// Reads the [`TOKEN_TYPE`] token of `luks`.
    pub fn from_luks(luks: &disk::Luks2) -> Result<DiskKey, String> {
        let t = luks
            .metadata
            .tokens
            .values()
            .find(|t| t.kind == TOKEN_TYPE)
            .ok_or_else(|| format!("the disk has no {TOKEN_TYPE} token naming its key"))?;
        DiskKey::from_token(t)
    }

    /// Reads a [`TOKEN_TYPE`] token (from a disk on the host: untrusted).
    pub fn from_token(t: &disk::metadata::Token) -> Result<DiskKey, String> {
        if t.kind != TOKEN_TYPE || t.keyslots != ["0"] {
            return Err(format!(
                "the disk's {TOKEN_TYPE} token is not one for keyslot 0"
            ));
        }
        let field = |name: &str| {
            t.other
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("the {TOKEN_TYPE} token has no {name}"))
        };
        let kid = field("kid")?;
        match field("key_management")?.as_str() {
            "platform" => Ok(DiskKey::Platform { kid }),
            "customer" => {
                if field("wrap_mechanism")? != WrapMechanism::RsaAesKeyWrap256.name() {
                    return Err("the disk key's wrap mechanism is not RSA_AES_KEY_WRAP_256".into());
                }
                let wrapped = B64URL
                    .decode(field("wrapped_key")?)
                    .map_err(|e| format!("the wrapped disk key: {e}"))?;
                Ok(DiskKey::Customer { kid, wrapped })
            }
            other => Err(format!("unknown key management {other:?}")),
        }
    }

    /// The key id to release.
    pub fn kid(&self) -> &str {
        match self {
            DiskKey::Platform { kid } | DiskKey::Customer { kid, .. } => kid,
        }
    }

    /// The passphrase of keyslot 0 from the released key's material.
    pub fn passphrase(&self, released: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        match self {
            DiskKey::Platform { .. } => Ok(Zeroizing::new(released.to_vec())),
            DiskKey::Customer { wrapped, .. } => {
                let key = keyvault::wrap::UnwrappingKey::from_pkcs8(released)
                    .map_err(|e| format!("the released customer key is not an RSA key: {e}"))?;
                keyvault::wrap::unwrap_key(WrapMechanism::RsaAesKeyWrap256, &key, wrapped)
                    .map(|s| s.into_zeroizing())
                    .map_err(|e| format!("the customer key does not unwrap the disk key: {e}"))
            }
        }
    }
}

impl PreEncryptionService {
    /// The service for the hosts under `root`, keeping disk keys in the vault of
    /// `services`.
    pub fn new(root: &Path, services: &Services) -> Result<Self, HostError> {
        let agent = api_client::agent(None).map_err(|e| HostError::Client(e.to_string()))?;
        Ok(PreEncryptionService {
            root: root.to_path_buf(),
            agent,
            attestation_url: services.attestation_url.trim_end_matches('/').to_string(),
            vault_url: services.vault_url.clone(),
            vault_admin: services.vault_admin.clone(),
        })
    }

    fn vault(&self) -> keyvault_client::Client {
        keyvault_client::Client::new(self.agent.clone(), &self.vault_url, &self.vault_admin)
    }

    /// The customer key's id and public key, when it may protect a disk.
    fn customer_key(&self, name: &str) -> Result<(String, WrappingPublicKey), String> {
        let bundle = self.vault().get_key(&(), name, None).map_err(|e| match e {
            api_client::ClientError::Refused { status: 404, .. } => {
                format!("the customer key '{name}' is not in the platform's key vault")
            }
            other => format!("reading the customer key '{name}': {other}"),
        })?;
        let kty = bundle.key.kty.trim_end_matches("-HSM");
        if kty != "RSA" {
            return Err(format!(
                "the customer key '{name}' is {kty}; a disk key is wrapped to an RSA key"
            ));
        }
        if !bundle.attributes.exportable || bundle.release_policy.is_none() {
            return Err(format!(
                "the customer key '{name}' is not exportable with a release policy, so no attested VM could ever get it to open its disk"
            ));
        }
        let jwk = serde_json::to_value(&bundle.key).map_err(|e| e.to_string())?;
        let public = WrappingPublicKey::from_jwk(&jwk)
            .map_err(|e| format!("the customer key '{name}': {e}"))?;
        Ok((bundle.key.kid, public))
    }

    /// Imports `secret` as the VM's platform disk key under its release policy.
    fn import_platform_key(&self, spec: &BootSpec, secret: &[u8]) -> Result<String, String> {
        let name = format!("vm-{}-disk", spec.vm_id);
        let mut key = serde_json::Map::new();
        key.insert("kty".into(), "oct".into());
        key.insert("k".into(), B64URL.encode(secret).into());
        // The request zeroizes its key members when dropped.
        let mut req = keyvault_api::ImportKeyRequest::new(key);
        req.attributes = Some(keyvault_api::Attributes {
            exportable: Some(true),
            ..keyvault_api::Attributes::default()
        });
        req.release_policy = Some(release_policy(&self.attestation_url, &spec.vm_id));
        let bundle = self
            .vault()
            .import_key(&(), &name, req)
            .map_err(|e| format!("importing the disk key {name}: {e}"))?;
        Ok(bundle.key.kid)
    }
}

impl PreEncryption for PreEncryptionService {
    fn check_customer_key(&self, key: &str) -> Result<(), String> {
        self.customer_key(key).map(|_| ())
    }

    fn pre_encrypt(&self, spec: &BootSpec) -> Result<PreEncrypted, BootFailure> {
        let t = Instant::now();
        let dir = vm_dir(&self.root, &spec.host, &spec.vm_id);
        // One run per VM at a time (a replica that took over a dead one's create
        // waits for the first run, then makes the disk again), never beside a
        // removal of the VM's files.
        let lock = crate::vm_work_lock(&dir);
        let _work = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = dir.join(OS_DISK);
        let err = |what: &str, e: &dyn std::fmt::Display| {
            fail(STEP, code::PRE_ENCRYPTION_FAILED, format!("{what}: {e}"))
        };
        // A disk already there has no recorded pin (else no pre-encryption would be
        // asked for): a run whose end was not recorded made it, or the host put it
        // there. It is not trusted; a new one is made.
        match std::fs::remove_file(&out) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&out.display().to_string(), &e)),
        }
        // Whatever an interrupted run left is useless: its key was never recorded.
        let work = dir.join("pre-encryption");
        match std::fs::remove_dir_all(&work) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&work.display().to_string(), &e)),
        }
        std::fs::create_dir_all(&work).map_err(|e| err(&work.display().to_string(), &e))?;
        let mut secret = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut secret[..])
            .map_err(|_| err("the disk key", &"no randomness"))?;
        // A key of full entropy needs no costly KDF: PBKDF2 with the fewest
        // iterations, as systemd uses for its own random keys.
        let opts = disk::EncryptOptions {
            kdf: disk::KdfChoice::Minimal,
            label: disk::os::ROOT_LABEL.to_string(),
            ..disk::EncryptOptions::default()
        };
        let built = work.join(OS_DISK);
        let report = disk::os::encrypt_os(
            &spec.image,
            &built,
            &secret[..],
            &opts,
            None,
            &mut |_, _| {},
        )
        .map_err(|e| err(&format!("encrypting {}", spec.image.display()), &e))?;
        let key = match &spec.customer_key {
            None => DiskKey::Platform {
                kid: self
                    .import_platform_key(spec, &secret[..])
                    .map_err(|e| err("the key vault", &e))?,
            },
            Some(name) => {
                let (kid, public) = self
                    .customer_key(name)
                    .map_err(|e| fail(STEP, code::CUSTOMER_KEY_UNUSABLE, e))?;
                let wrapped =
                    keyvault::wrap::wrap_key(WrapMechanism::RsaAesKeyWrap256, &public, &secret[..])
                        .map_err(|e| err("wrapping the disk key to the customer key", &e))?;
                DiskKey::Customer { kid, wrapped }
            }
        };
        drop(secret);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&built)
            .map_err(|e| err(&built.display().to_string(), &e))?;
        for p in report.partitions.iter().filter(|p| p.encrypted) {
            let window = disk::device::Window::new(
                &file,
                p.first_lba * 512,
                (p.last_lba + 1 - p.first_lba) * 512,
            );
            let mut luks = disk::Luks2::read(&window)
                .map_err(|e| err(&format!("partition {}", p.number), &e))?;
            let id = (0..disk::metadata::MAX_OBJECTS)
                .find(|n| !luks.metadata.tokens.contains_key(n))
                .ok_or_else(|| err("the LUKS2 header", &"no room for a token"))?;
            luks.metadata.tokens.insert(id, key.to_token());
            luks.write(&window)
                .map_err(|e| err(&format!("partition {}", p.number), &e))?;
        }
        file.sync_all()
            .map_err(|e| err(&built.display().to_string(), &e))?;
        drop(file);
        let (_, pin) = open_pinned(&built).map_err(|e| err(&built.display().to_string(), &e))?;
        std::fs::rename(&built, &out).map_err(|e| err(&out.display().to_string(), &e))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        let _ = std::fs::remove_dir_all(&work);
        let parts: Vec<String> = report
            .partitions
            .iter()
            .filter(|p| p.encrypted)
            .map(|p| format!("partition {} ({})", p.number, p.name))
            .collect();
        let detail = format!(
            "{} made from {} in {} ms: {} LUKS2 (aes-xts-plain64), boot partitions in clear; keyslot 0 opens with {} ({})",
            out.display(),
            spec.image.display(),
            t.elapsed().as_millis(),
            parts.join(", "),
            key.kid(),
            match key {
                DiskKey::Platform { .. } =>
                    "platform-managed, released only to this VM's attested token",
                DiskKey::Customer { .. } =>
                    "a disk key wrapped to this customer-managed key, released only as its own release policy allows",
            }
        );
        Ok(PreEncrypted { detail, pin })
    }
}

/// An encrypted partition of a VM's OS disk.
pub(crate) struct Volume {
    /// Its number in the partition table.
    pub number: u32,
    /// Its first byte on the disk.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Its LUKS2 header.
    pub luks: disk::Luks2,
}

/// The encrypted partitions of the OS disk at `path` (every partition but the boot
/// ones, each of which must be LUKS2), and their pin: SHA-256 of each one's
/// volume-key digest and salt, hex, comma-separated. Two disks share a pin only if
/// they share volume keys (the digest is PBKDF2 of the volume key).
pub(crate) fn open_pinned(path: &Path) -> Result<(Vec<Volume>, String), String> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut head = vec![0u8; len.min(disk::gpt::Gpt::HEAD_LEN as u64) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| e.to_string())?;
    let gpt = disk::gpt::Gpt::parse(&head, len).map_err(|e| e.to_string())?;
    let mut volumes = Vec::new();
    let mut pins = Vec::new();
    for p in gpt.partitions.iter().filter(|p| !p.boot_critical()) {
        let (offset, len) = (p.first * disk::gpt::LBA, p.bytes());
        let window = disk::device::Window::new(&file, offset, len);
        let luks = disk::Luks2::read(&window)
            .map_err(|e| format!("partition {} is not an encrypted volume: {e}", p.number))?;
        // One digest, so that every keyslot's key is checked against the pinned one
        // (a second digest could vouch for a key the host chose).
        let digest = match luks.metadata.digests.values().collect::<Vec<_>>()[..] {
            [d] => d,
            _ => {
                return Err(format!(
                    "partition {} has {} volume-key digests; a pre-encrypted disk has one",
                    p.number,
                    luks.metadata.digests.len()
                ));
            }
        };
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&digest.salt);
        ctx.update(&digest.digest);
        pins.push(hex::encode(ctx.finish()));
        volumes.push(Volume {
            number: p.number,
            offset,
            len,
            luks,
        });
    }
    if volumes.is_empty() {
        return Err("the disk has no encrypted partition".into());
    }
    Ok((volumes, pins.join(",")))
}

/// Fuzzing entry: a LUKS2 token as JSON, read as a disk key's token; one that reads
/// must write back to the same key.
pub fn fuzz_token(data: &[u8]) {
    let Ok(t) = serde_json::from_slice::<disk::metadata::Token>(data) else {
        return;
    };
    if let Ok(key) = DiskKey::from_token(&t) {
        assert_eq!(DiskKey::from_token(&key.to_token()), Ok(key));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn seeds() -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/disk-key");
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn both_kinds_of_token_read_and_write_back() {
        let customer = DiskKey::Customer {
            kid: "http://127.0.0.1:1/keys/cust/00".into(),
            wrapped: vec![1, 2, 3],
        };
        let platform = DiskKey::Platform {
            kid: "http://127.0.0.1:1/keys/vm-00-disk/01".into(),
        };
        for k in [customer, platform] {
            assert_eq!(DiskKey::from_token(&k.to_token()), Ok(k));
        }
        let read: Vec<_> = seeds()
            .iter()
            .map(|s| {
                let t: disk::metadata::Token = serde_json::from_slice(s).unwrap();
                DiskKey::from_token(&t)
            })
            .collect();
        assert!(
            read.iter()
                .any(|k| matches!(k, Ok(DiskKey::Platform { .. })))
        );
        assert!(
            read.iter()
                .any(|k| matches!(k, Ok(DiskKey::Customer { .. })))
        );
    }

    #[test]
    fn bad_tokens_are_refused_by_name() {
        let mut t = DiskKey::Platform { kid: "k".into() }.to_token();
        t.keyslots = vec!["1".into()];
        assert!(DiskKey::from_token(&t).unwrap_err().contains("keyslot 0"));
        let mut t = DiskKey::Customer {
            kid: "k".into(),
            wrapped: vec![1],
        }
        .to_token();
        t.other.insert("wrapped_key".into(), "***".into());
        assert!(
            DiskKey::from_token(&t)
                .unwrap_err()
                .contains("wrapped disk key")
        );
        t.other
            .insert("wrap_mechanism".into(), "CKM_RSA_AES_KEY_WRAP".into());
        assert!(DiskKey::from_token(&t).unwrap_err().contains("mechanism"));
        t.other.insert("key_management".into(), "hsm".into());
        assert!(DiskKey::from_token(&t).unwrap_err().contains("hsm"));
        t.other.remove("kid");
        assert!(DiskKey::from_token(&t).unwrap_err().contains("kid"));
    }

    #[test]
    fn the_fuzz_entry_survives_every_truncation_of_its_seeds() {
        for s in seeds() {
            for n in 0..=s.len() {
                fuzz_token(&s[..n]);
            }
        }
    }
}
