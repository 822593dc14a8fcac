//! `cvm keyvault serve`, `cvm keyvault region ...` and `cvm key ...`: the key vault
//! service and its client.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{Value, json};

use keyvault_api::{
    Attributes, CreateKeyRequest, ImportKeyRequest, KeyVaultApi as _, ReleaseRequest,
};

use crate::attest_cmd::{admin_token, show};

/// `cvm keyvault ...`
#[derive(Subcommand, Debug)]
pub enum KeyvaultCommand {
    /// Run the key vault (HTTP). Prints `listening on http://HOST:PORT` first.
    Serve(ServeArgs),
    /// Platform key hierarchies, one per region (with the service administrator
    /// credential, STATE/admin.token).
    #[command(subcommand)]
    Region(RegionCommand),
    /// The tamper-evident audit log, read from the vault's database (no server needed).
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `cvm keyvault audit ...`
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check every entry's link and every checkpoint. Exit 0 intact, 1 tampered (the
    /// first entry that does not fit is named), 2 could not check.
    Verify(AuditArgs),
    /// Print a signed checkpoint of the newest entry (JSON), to keep elsewhere and
    /// give to `verify --expect` later; and the key that checks it.
    Checkpoint(AuditArgs),
}

/// Arguments of `cvm keyvault audit ...`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The vault's state directory.
    #[arg(long)]
    state: PathBuf,
    /// The master key file (or CVM_KEYVAULT_MASTER_KEY): the audit keys derive from it.
    #[arg(long)]
    master_key: Option<PathBuf>,
    /// The database, if not STATE/keyvault.db: a SQLite file or a PostgreSQL URL. Or
    /// set CVM_KEYVAULT_DATABASE.
    #[arg(long, env = "CVM_KEYVAULT_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Checkpoints kept elsewhere (from `audit checkpoint`) that the log must still
    /// hold; repeatable.
    #[arg(long)]
    expect: Vec<PathBuf>,
}

/// `cvm keyvault region ...`
#[derive(Subcommand, Debug)]
pub enum RegionCommand {
    /// Create a region: its root key and its platform vault. Prints the platform
    /// vault's administrator credential (shown once).
    Create {
        #[command(flatten)]
        c: Client,
        /// Region name (1-32 of a-z, 0-9, '-').
        region: String,
    },
    /// Rotate a region's root key: every platform key of the region is resealed under
    /// a new root version.
    Rotate {
        #[command(flatten)]
        c: Client,
        /// Region name.
        region: String,
    },
    /// List regions with their root version and key counts.
    List {
        #[command(flatten)]
        c: Client,
    },
}

/// `cvm keyvault serve`
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// State directory (database; the service administrator credential).
    #[arg(long)]
    state: PathBuf,
    /// Attestation authority (token issuer URL) whose tokens may release keys;
    /// repeatable.
    #[arg(long = "authority", required = true)]
    authorities: Vec<String>,
    /// Master key file (64 hex digits; created if missing). It must not be inside the
    /// state directory. Alternatively the environment variable CVM_KEYVAULT_MASTER_KEY.
    /// Replicas sharing a database share the master key.
    #[arg(long)]
    master_key: Option<PathBuf>,
    /// The database: a SQLite file (default STATE/keyvault.db) or a PostgreSQL URL
    /// (postgres://user:password@host:port/db) that several replicas may share. Or set
    /// CVM_KEYVAULT_DATABASE.
    #[arg(long, env = "CVM_KEYVAULT_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Public base URL (key ids); default `http://<bound address>`.
    #[arg(long)]
    base_url: Option<String>,
    /// Allowed clock skew for token lifetimes, in seconds (0-300: a larger leeway
    /// would keep expired attestation tokens usable).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i64).range(0..=300))]
    clock_skew: i64,
    /// Serve HTTPS with this certificate chain (PEM); needs `--tls-key`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Where the vault is and who is asking.
#[derive(Args, Debug)]
pub struct Client {
    /// Key vault base URL.
    #[arg(long)]
    url: String,
    /// File with the vault credential.
    #[arg(long)]
    credential_file: PathBuf,
    /// Trust only these CA certificates (PEM) for HTTPS.
    #[arg(long)]
    ca: Option<PathBuf>,
}

/// `cvm key ...`
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key (`--kty RSA|EC|oct`).
    Create {
        #[command(flatten)]
        c: Client,
        /// Key name.
        name: String,
        /// Key type.
        #[arg(long, default_value = "RSA")]
        kty: String,
        /// RSA size (2048, 3072, 4096).
        #[arg(long)]
        size: Option<u32>,
        /// EC curve (P-256, P-384).
        #[arg(long)]
        crv: Option<String>,
        /// A release policy file (Key Vault's JSON grammar); makes the key exportable.
        #[arg(long)]
        release_policy: Option<PathBuf>,
        /// Make the release policy immutable.
        #[arg(long, requires = "release_policy")]
        immutable: bool,
    },
    /// Import a key: an AES-256 key (hex file), a plain private JWK (RSA, EC or oct)
    /// or a BYOK file (the key wrapped to an RSA key of the vault).
    #[command(group(ArgGroup::new("material").required(true).args(["aes_key_hex", "jwk", "byok"])))]
    Import {
        #[command(flatten)]
        c: Client,
        /// Key name.
        name: String,
        /// File with the 32-byte key in hex.
        #[arg(long)]
        aes_key_hex: Option<PathBuf>,
        /// File with a private JWK (RSA: n, e, d, p, q, dp, dq, qi; EC: crv, x, y, d;
        /// oct: k).
        #[arg(long)]
        jwk: Option<PathBuf>,
        /// Key Vault BYOK file: `{"schema_version", "header": {"kid", "alg": "dir",
        /// "enc"}, "ciphertext"}`, the key wrapped to the vault RSA key named by kid.
        #[arg(long, requires = "kty")]
        byok: Option<PathBuf>,
        /// The type of the key in the BYOK file (RSA, EC or oct).
        #[arg(long, requires = "byok")]
        kty: Option<String>,
        /// A release policy file; makes the key exportable.
        #[arg(long)]
        release_policy: Option<PathBuf>,
    },
    /// Show a key's public part and attributes.
    Show {
        #[command(flatten)]
        c: Client,
        /// Key name.
        name: String,
        /// Version (default: the newest).
        #[arg(long)]
        version: Option<String>,
    },
    /// List keys.
    List {
        #[command(flatten)]
        c: Client,
    },
    /// Soft-delete a key.
    Delete {
        #[command(flatten)]
        c: Client,
        /// Key name.
        name: String,
    },
    /// Release a key to an attested environment: prints the JWS response.
    Release {
        #[command(flatten)]
        c: Client,
        /// Key name.
        name: String,
        /// Version.
        #[arg(long)]
        version: String,
        /// File with the attestation token.
        #[arg(long)]
        token_file: PathBuf,
        /// CKM_RSA_AES_KEY_WRAP, RSA_AES_KEY_WRAP_256 or RSA_AES_KEY_WRAP_384.
        #[arg(long, default_value = "RSA_AES_KEY_WRAP_256")]
        enc: String,
    },
    /// A key's release policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// `cvm key policy ...`
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print a key's release policy (decoded).
    Show {
        #[command(flatten)]
        c: Client,
        /// Key name.
        name: String,
    },
    /// Dry run: would this token release the key? Says which condition failed.
    Test {
        #[command(flatten)]
        c: Client,
        /// Key name.
        name: String,
        /// Version.
        #[arg(long)]
        version: String,
        /// File with the attestation token.
        #[arg(long)]
        token_file: PathBuf,
    },
}

fn run_result(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::describe(&e));
            ExitCode::from(2)
        }
    }
}

/// Runs a keyvault subcommand.
pub fn run(cmd: KeyvaultCommand) -> ExitCode {
    match cmd {
        KeyvaultCommand::Serve(a) => match serve(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => crate::service_failed(&e),
        },
        KeyvaultCommand::Region(r) => run_result(region(r)),
        KeyvaultCommand::Audit(a) => audit(a),
    }
}

fn region(cmd: RegionCommand) -> Result<()> {
    match cmd {
        RegionCommand::Create { c, region } => show(c.client()?.create_region(&(), &region)),
        RegionCommand::Rotate { c, region } => show(c.client()?.rotate_region(&(), &region)),
        RegionCommand::List { c } => show(c.client()?.list_regions(&())),
    }
}

/// The `key` member of an import: from a hex AES key, a private JWK file or a BYOK
/// file.
fn import_key_member(
    aes_key_hex: Option<&Path>,
    jwk: Option<&Path>,
    byok: Option<&Path>,
    kty: Option<&str>,
) -> Result<Value> {
    if let Some(path) = aes_key_hex {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
        let k =
            zeroize::Zeroizing::new(hex::decode(text.trim()).context("the key file is not hex")?);
        if k.len() != 32 {
            bail!(
                "{} holds {} bytes; an AES-256 key is 32",
                path.display(),
                k.len()
            );
        }
        return Ok(json!({ "kty": "oct", "k": B64URL.encode(&*k) }));
    }
    if let Some(path) = jwk {
        let text = zeroize::Zeroizing::new(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        );
        let v: Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let is_private = v
            .as_object()
            .is_some_and(|o| o.contains_key("d") || o.contains_key("k"));
        if !is_private {
            bail!(
                "{} is not a private JWK (it has no d or k member)",
                path.display()
            );
        }
        return Ok(v);
    }
    if let Some(path) = byok {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        // Checked here for a clear message; sent as it is (base64url), as Key Vault
        // clients send BYOK files.
        keyvault::wrap::KeyHsm::from_json(&v)
            .with_context(|| format!("{} is not a BYOK file", path.display()))?;
        let kty = kty.context("--byok needs --kty (RSA, EC or oct)")?;
        return Ok(json!({ "kty": kty, "key_hsm": B64URL.encode(&text) }));
    }
    bail!("give --aes-key-hex, --jwk or --byok")
}

fn audit_keys(a: &AuditArgs) -> Result<(sqldb::Location, keyvault::store::AuditKeys)> {
    let db = crate::database::existing(a.database.as_deref(), &a.state, "keyvault.db")?;
    let master =
        crate::master_key::load("CVM_KEYVAULT_MASTER_KEY", a.master_key.as_deref(), &a.state)?;
    Ok((db, keyvault::store::AuditKeys::from_master(&master)?))
}

fn audit(cmd: AuditCommand) -> ExitCode {
    let (AuditCommand::Verify(a) | AuditCommand::Checkpoint(a)) = &cmd;
    let (db, keys) = match audit_keys(a) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {}", crate::describe(&e));
            return ExitCode::from(2);
        }
    };
    if let AuditCommand::Checkpoint(_) = cmd {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        return match keyvault::store::checkpoint_head(&db, &keys, now) {
            Ok(Some(cp)) => {
                let out = json!({
                    "checkpoint": cp,
                    "public_key": hex::encode(keys.checkpoint_public_key()),
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!("error: the audit log is empty");
                ExitCode::from(2)
            }
            Err(e) => audit_failure(&db, e),
        };
    }
    let mut expect = Vec::new();
    for path in &a.expect {
        let parsed = std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|b| {
                let v: Value = serde_json::from_slice(&b)?;
                let cp = v.get("checkpoint").cloned().unwrap_or(v);
                Ok(serde_json::from_value::<audit::Checkpoint>(cp)?)
            });
        match parsed {
            Ok(cp) => expect.push(cp),
            Err(e) => {
                eprintln!("error: {}: {}", path.display(), crate::describe(&e));
                return ExitCode::from(2);
            }
        }
    }
    match keyvault::store::verify_audit(&db, &keys, &expect) {
        Ok(i) => {
            println!(
                "intact: {} entries, {} checkpoints{}",
                i.entries,
                i.checkpoints,
                i.head
                    .map(|(seq, _)| format!(", newest entry {seq}"))
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => audit_failure(&db, e),
    }
}

/// Exit 1 for a tampered audit log (named on stdout), 2 for one that could not be read.
pub(crate) fn audit_failure(db: &sqldb::Location, e: audit::table::VerifyError) -> ExitCode {
    match e {
        audit::table::VerifyError::Tampered(t) => {
            println!("tampered: {t}");
            ExitCode::from(1)
        }
        e => {
            eprintln!("error: {db}: {e}");
            ExitCode::from(2)
        }
    }
}

fn master_key(a: &ServeArgs) -> Result<seal::MasterKey> {
    crate::master_key::load("CVM_KEYVAULT_MASTER_KEY", a.master_key.as_deref(), &a.state)
}

fn serve(a: ServeArgs) -> Result<()> {
    let master_key = master_key(&a)?;
    let cfg = keyvault::service::VaultConfig {
        state_dir: a.state.clone(),
        master_key,
        base_url: String::new(),
        authorities: keyvault::authority::Authorities::new(
            &a.authorities,
            keyvault::authority::http_fetch(),
        )
        .with_leeway(a.clock_skew),
        database: Some(crate::database::for_service(
            a.database.as_deref(),
            &a.state,
            "keyvault.db",
        )?),
        store: None,
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(httpd::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    keyvault::server::run(&a.listen, a.base_url.clone(), tls, cfg, |addr, created| {
        println!("listening on {scheme}://{addr}");
        if let Some(p) = created {
            crate::notice(&format!(
                "service administrator credential written to {}",
                p.display()
            ));
        }
    })?;
    Ok(())
}

/// Attributes that make a key exportable (a key with a release policy).
fn exportable() -> Attributes {
    Attributes {
        exportable: Some(true),
        ..Attributes::default()
    }
}

fn policy_envelope(path: &Path, immutable: bool) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    keyvault::release_policy::ReleasePolicy::parse(&text)
        .with_context(|| format!("{} is not a valid release policy", path.display()))?;
    Ok(json!({
        "contentType": "application/json; charset=utf-8",
        "data": B64URL.encode(&text),
        "immutable": immutable,
    }))
}

impl Client {
    /// The typed client for this vault and credential.
    fn client(&self) -> Result<keyvault_client::Client> {
        let cred = admin_token(&self.credential_file)?;
        Ok(keyvault_client::Client::new(
            crate::attest_cmd::agent(self.ca.as_deref())?,
            &self.url,
            &cred,
        ))
    }
}

/// Runs a key subcommand.
pub fn run_key(cmd: KeyCommand) -> ExitCode {
    run_result(key(cmd))
}

fn key(cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Create {
            c,
            name,
            kty,
            size,
            crv,
            release_policy,
            immutable,
        } => {
            let mut req = CreateKeyRequest {
                kty,
                key_size: size,
                crv,
                ..CreateKeyRequest::default()
            };
            if let Some(p) = release_policy {
                req.release_policy = Some(policy_envelope(&p, immutable)?);
                req.attributes = Some(exportable());
            }
            show(c.client()?.create_key(&(), &name, req))
        }
        KeyCommand::Import {
            c,
            name,
            aes_key_hex,
            jwk,
            byok,
            kty,
            release_policy,
        } => {
            let key = import_key_member(
                aes_key_hex.as_deref(),
                jwk.as_deref(),
                byok.as_deref(),
                kty.as_deref(),
            )?;
            let Value::Object(key) = key else {
                bail!("the key is not a JSON object");
            };
            let mut req = ImportKeyRequest::new(key);
            if let Some(p) = release_policy {
                req.release_policy = Some(policy_envelope(&p, false)?);
                req.attributes = Some(exportable());
            }
            // The request (its key members) and its encoding are overwritten once sent.
            show(c.client()?.import_key(&(), &name, req))
        }
        KeyCommand::Show { c, name, version } => {
            show(c.client()?.get_key(&(), &name, version.as_deref()))
        }
        KeyCommand::List { c } => show(c.client()?.list_keys(&())),
        KeyCommand::Delete { c, name } => show(c.client()?.delete_key(&(), &name)),
        KeyCommand::Release {
            c,
            name,
            version,
            token_file,
            enc,
        } => {
            let target = std::fs::read_to_string(&token_file)?.trim().to_string();
            let req = ReleaseRequest {
                target,
                enc: Some(enc),
                nonce: None,
            };
            show(c.client()?.release(&(), &name, &version, req))
        }
        KeyCommand::Policy(PolicyCommand::Show { c, name }) => {
            let bundle = match c.client()?.get_key(&(), &name, None) {
                Ok(b) => b,
                Err(e) => return show::<()>(Err(e)),
            };
            let p = bundle.release_policy.as_ref();
            let policy = p
                .and_then(|p| B64URL.decode(p.data.trim_end_matches('=')).ok())
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            show::<Value>(Ok(json!({
                "immutable": p.map(|p| p.immutable),
                "policy": policy,
            })))
        }
        KeyCommand::Policy(PolicyCommand::Test {
            c,
            name,
            version,
            token_file,
        }) => {
            let target = std::fs::read_to_string(&token_file)?.trim().to_string();
            let req = ReleaseRequest {
                target,
                ..ReleaseRequest::default()
            };
            show(c.client()?.release_test(&(), &name, &version, req))
        }
    }
}
