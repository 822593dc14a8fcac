//! `cvm attest`: run the attestation service, verify its tokens, manage its policies.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use attest::jwt::{Alg, Jwks, VerifyOptions};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

/// `cvm attest ...`
#[derive(Subcommand, Debug)]
pub enum AttestCommand {
    /// Run the attestation service (HTTP). Prints `listening on http://HOST:PORT` first.
    Serve(ServeArgs),
    /// Relying parties: verify attestation tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Read, set and dry-run a provider's attestation policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The launch measurements the platform runs (only evidence with one of them is
    /// called compliant).
    #[command(subcommand)]
    ReferenceValue(ReferenceValueCommand),
    /// The sandbox's policy worker (started by `serve`; speaks frames on stdin/stdout).
    #[command(hide = true)]
    PolicyWorker,
    /// The tamper-evident audit log of administrative changes, read from the service's
    /// database. Exit 0 intact, 1 tampered (naming the first bad entry), 2 could not
    /// check.
    AuditVerify {
        /// The service's state directory.
        #[arg(long)]
        state: PathBuf,
        /// The master key file (or CVM_ATTEST_MASTER_KEY).
        #[arg(long)]
        master_key: Option<PathBuf>,
        /// The database, if not STATE/attest.db: a SQLite file or a PostgreSQL URL.
        /// Or set CVM_ATTEST_DATABASE.
        #[arg(long, env = "CVM_ATTEST_DATABASE", hide_env_values = true)]
        database: Option<String>,
    },
}

/// `cvm attest reference-value ...`
#[derive(Subcommand, Debug)]
pub enum ReferenceValueCommand {
    /// Register a launch measurement hosts of a region run: given (`--measurement`) or
    /// computed from the firmware image as `cvm snp measure` does.
    Add {
        /// Service base URL.
        #[arg(long)]
        url: String,
        /// File with the default provider's administrator credential.
        #[arg(long)]
        token_file: PathBuf,
        /// The region.
        #[arg(long)]
        region: String,
        /// The measurement (96 hex digits).
        #[arg(long, conflicts_with = "ovmf")]
        measurement: Option<String>,
        /// Compute it from this OVMF image (with --vcpus and --vcpu-type).
        #[arg(long, requires = "vcpu_type")]
        ovmf: Option<PathBuf>,
        /// vCPUs the guests launch with.
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// vCPU type, as QEMU names it.
        #[arg(long)]
        vcpu_type: Option<String>,
        /// What it measures.
        #[arg(long, default_value = "ovmf")]
        component: String,
        /// Trust only these CA certificates (PEM) for HTTPS.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// List the registered measurements.
    List {
        /// Service base URL.
        #[arg(long)]
        url: String,
        /// Trust only these CA certificates (PEM) for HTTPS.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Remove one.
    Remove {
        /// Service base URL.
        #[arg(long)]
        url: String,
        /// File with the default provider's administrator credential.
        #[arg(long)]
        token_file: PathBuf,
        /// The region.
        #[arg(long)]
        region: String,
        /// The measurement.
        #[arg(long)]
        measurement: String,
        /// Trust only these CA certificates (PEM) for HTTPS.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
}

/// Token signing algorithm.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TokenAlg {
    /// RSASSA-PKCS1-v1_5 SHA-256 (RSA-2048), as Azure Attestation.
    Rs256,
    /// ECDSA P-384 SHA-384.
    Es384,
}

/// `cvm attest serve`
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// State directory (database, master key, admin credential).
    #[arg(long)]
    state: PathBuf,
    /// Trust evidence from this emulated AMD secure processor: its roots file, as
    /// `cvm snp export-roots` writes it (ARK pinned by fingerprint, its CRL applied);
    /// repeatable. Such evidence is always labelled `x-opencvm-emulated: true`, and on
    /// first start the default provider allows it. No other emulator's evidence
    /// verifies, whatever its certificates call themselves.
    #[arg(long = "dangerously-trust-emulator-roots", value_name = "FILE")]
    emulator_roots: Vec<PathBuf>,
    /// Public base URL (the token issuer); default `http://<bound address>`.
    #[arg(long)]
    issuer: Option<String>,
    /// Signing algorithm for new providers' token keys.
    #[arg(long, value_enum, default_value = "rs256")]
    token_alg: TokenAlg,
    /// Master key file sealing secrets at rest (created if missing); it must not be
    /// inside --state. Or set CVM_ATTEST_MASTER_KEY (64 hex digits).
    #[arg(long)]
    master_key: Option<PathBuf>,
    /// The database: a SQLite file (default STATE/attest.db) or a PostgreSQL URL
    /// (postgres://user:password@host:port/db). Or set CVM_ATTEST_DATABASE.
    #[arg(long, env = "CVM_ATTEST_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Collateral for requests that carry no VCEK chain.
    #[command(flatten)]
    collateral: crate::evidence::CollateralArgs,
    /// Check certificate validity at this time (RFC 3339) instead of now: for recorded
    /// evidence only.
    #[arg(long)]
    at: Option<String>,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 8 * 3600)]
    token_lifetime: u64,
    /// Serve HTTPS with this certificate chain (PEM); needs `--tls-key`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Worker processes that run tenants' policies (default: four per CPU, 8 to 64;
    /// one provider may use half of them).
    #[arg(long)]
    policy_workers: Option<usize>,
    /// Address space of each policy worker, MiB.
    #[arg(long, default_value_t = 768)]
    policy_memory_mib: u64,
    /// Time limit of one policy evaluation, milliseconds.
    #[arg(long, default_value_t = 2000)]
    policy_time_ms: u64,
}

/// `cvm attest token ...`
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Verify a token's signature (against a JWKS), lifetime and issuer; print its
    /// claims. Exit 0 valid, 1 invalid, 2 could not check.
    Verify(TokenVerifyArgs),
}

/// `cvm attest token verify`
#[derive(Args, Debug)]
pub struct TokenVerifyArgs {
    /// The token, a file holding it, or `-` for standard input.
    token: String,
    /// JWKS: an http(s) URL or a file. Without it, the issuer's OpenID configuration
    /// names it (`--issuer` required).
    #[arg(long)]
    jwks: Option<String>,
    /// The expected issuer (`iss`).
    #[arg(long)]
    issuer: Option<String>,
    /// Accepted algorithms (default: RS256 and ES384).
    #[arg(long, value_delimiter = ',')]
    alg: Vec<String>,
    /// Check exp/nbf at this time (RFC 3339) instead of now.
    #[arg(long)]
    at: Option<String>,
    /// Trust only these CA certificates (PEM) for HTTPS, instead of the Mozilla roots.
    #[arg(long)]
    ca: Option<PathBuf>,
}

/// Where a provider's API is.
#[derive(Args, Debug)]
pub struct Endpoint {
    /// Service base URL.
    #[arg(long)]
    url: String,
    /// Provider name (default: the default provider).
    #[arg(long)]
    provider: Option<String>,
    /// Attestation type.
    #[arg(long = "type", default_value = "SevSnpVm")]
    kind: String,
    /// Trust only these CA certificates (PEM) for HTTPS, instead of the Mozilla roots.
    #[arg(long)]
    ca: Option<PathBuf>,
}

impl Endpoint {
    /// The typed client of this provider, presenting `credential` if given.
    fn client(&self, credential: Option<&str>) -> Result<attest_client::Client> {
        let c = service_client(&self.url, self.ca.as_deref(), credential)?;
        Ok(match &self.provider {
            Some(p) => c.for_provider(p),
            None => c,
        })
    }
}

/// The typed client of the service at `url` (trusting only `ca` when given).
fn service_client(
    url: &str,
    ca: Option<&Path>,
    credential: Option<&str>,
) -> Result<attest_client::Client> {
    Ok(attest_client::Client::new(agent(ca)?, url, credential))
}

/// `cvm attest policy ...`
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the policy in force (needs the administrator credential).
    Get {
        #[command(flatten)]
        at: Endpoint,
        /// File with the administrator credential.
        #[arg(long)]
        token_file: PathBuf,
    },
    /// Set a new policy version from a Rego file.
    Set {
        #[command(flatten)]
        at: Endpoint,
        /// File with the administrator credential.
        #[arg(long)]
        token_file: PathBuf,
        /// The Rego policy (`package policy`).
        file: PathBuf,
    },
    /// Dry run: evaluate evidence (an attest request body) against a policy file or
    /// the policy in force; prints the decision, the denying rules and the claims.
    Test {
        #[command(flatten)]
        at: Endpoint,
        /// The evidence: a JSON request body as for `POST /attest/<type>`.
        #[arg(long)]
        evidence: PathBuf,
        /// A draft policy (default: the one in force); needs `--token-file`.
        #[arg(long, requires = "token_file")]
        policy: Option<PathBuf>,
        /// File with the administrator credential (for a draft policy).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

/// Runs an attest subcommand.
pub fn run(cmd: AttestCommand) -> ExitCode {
    let r = match cmd {
        AttestCommand::Serve(a) => {
            return match serve(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => crate::service_failed(&e),
            };
        }
        AttestCommand::Token(TokenCommand::Verify(a)) => return token_verify(&a),
        AttestCommand::Policy(p) => policy(p),
        AttestCommand::ReferenceValue(r) => reference_value(r),
        AttestCommand::PolicyWorker => {
            return ExitCode::from(u8::try_from(attest::sandbox::worker_main()).unwrap_or(2));
        }
        AttestCommand::AuditVerify {
            state,
            master_key,
            database,
        } => {
            return audit_verify(&state, master_key.as_deref(), database.as_deref());
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::describe(&e));
            ExitCode::from(2)
        }
    }
}

fn serve(a: ServeArgs) -> Result<()> {
    let legacy = a.state.join("keys").join("master.key");
    if legacy.exists() {
        bail!(
            "{} holds the master key inside the state directory; move it elsewhere and pass --master-key with its new path (or set CVM_ATTEST_MASTER_KEY)",
            legacy.display()
        );
    }
    let master =
        crate::master_key::load("CVM_ATTEST_MASTER_KEY", a.master_key.as_deref(), &a.state)?;
    let mut cfg = attest::ServiceConfig::new(a.state.clone(), String::new(), master);
    cfg.database = Some(crate::database::for_service(
        a.database.as_deref(),
        &a.state,
        "attest.db",
    )?);
    for path in &a.emulator_roots {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        cfg.emulator_roots.push(
            attest::EmulatorRoots::from_pem(&pem).with_context(|| format!("{}", path.display()))?,
        );
    }
    cfg.token_alg = match a.token_alg {
        TokenAlg::Rs256 => Alg::RS256,
        TokenAlg::Es384 => Alg::ES384,
    };
    cfg.token_lifetime = Duration::from_secs(a.token_lifetime);
    cfg.collateral = Some(a.collateral.fetcher()?);
    if a.at.is_some() {
        cfg.evidence_time = Some(crate::evidence::parse_time(a.at.as_deref())?);
    }
    let exe = std::env::current_exe().context("finding the cvm binary for policy workers")?;
    let mut sandbox =
        attest::sandbox::SandboxConfig::new(exe, vec!["attest".into(), "policy-worker".into()]);
    if let Some(n) = a.policy_workers {
        sandbox.workers = n.max(1);
        sandbox.per_provider = (sandbox.workers / 2).max(1);
    }
    sandbox.memory = a.policy_memory_mib.saturating_mul(1024 * 1024);
    sandbox.time = Duration::from_millis(a.policy_time_ms);
    cfg.policy_sandbox = Some(sandbox);
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(httpd::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    attest::server::run(&a.listen, a.issuer.clone(), tls, cfg, |addr, created| {
        println!("listening on {scheme}://{addr}");
        if let Some(p) = created {
            crate::notice(&format!(
                "administrator credential written to {}",
                p.display()
            ));
        }
    })?;
    Ok(())
}

/// An HTTP(S) client (the one stack, `api-client`): rustls with aws-lc-rs, trusting
/// the Mozilla roots, or only the certificates in `ca` (PEM) when given.
pub(crate) fn agent(ca: Option<&Path>) -> Result<ureq::Agent> {
    let pem = match ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    api_client::agent(pem.as_deref()).with_context(|| match ca {
        Some(p) => format!("{}", p.display()),
        None => "the Mozilla roots".to_string(),
    })
}

/// One certificate from `path`, PEM or DER, as DER.
pub(crate) fn certificate_der(path: &Path) -> Result<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        let c = CertificateDer::from_pem_slice(&bytes)
            .map_err(|e| anyhow!("{}: no PEM certificate: {e}", path.display()))?;
        return Ok(c.as_ref().to_vec());
    }
    Ok(bytes)
}

pub(crate) fn get_json(ca: Option<&Path>, url: &str, bearer: Option<&str>) -> Result<(u16, Value)> {
    let mut req = agent(ca)?.get(url);
    if let Some(b) = bearer {
        req = req.header("Authorization", format!("Bearer {b}"));
    }
    let mut resp = req.call().with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn read_token(arg: &str) -> Result<String> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok(s.trim().to_string());
    }
    let p = Path::new(arg);
    if arg.len() < 4096 && p.is_file() {
        return Ok(std::fs::read_to_string(p)?.trim().to_string());
    }
    Ok(arg.trim().to_string())
}

fn load_jwks(a: &TokenVerifyArgs) -> Result<Jwks> {
    let src = match (&a.jwks, &a.issuer) {
        (Some(j), _) => j.clone(),
        (None, Some(iss)) => {
            let (st, conf) = get_json(
                a.ca.as_deref(),
                &format!(
                    "{}/.well-known/openid-configuration",
                    iss.trim_end_matches('/')
                ),
                None,
            )?;
            if st != 200 {
                bail!("OpenID configuration of {iss}: HTTP {st}");
            }
            conf["jwks_uri"]
                .as_str()
                .ok_or_else(|| anyhow!("the OpenID configuration has no jwks_uri"))?
                .to_string()
        }
        (None, None) => bail!("give --jwks URL|FILE or --issuer URL"),
    };
    let bytes = if src.starts_with("http://") || src.starts_with("https://") {
        let (st, v) = get_json(a.ca.as_deref(), &src, None)?;
        if st != 200 {
            bail!("JWKS {src}: HTTP {st}");
        }
        serde_json::to_vec(&v)?
    } else {
        std::fs::read(&src).with_context(|| format!("reading {src}"))?
    };
    Ok(Jwks::from_json(&bytes)?)
}

fn token_verify(a: &TokenVerifyArgs) -> ExitCode {
    let prepared = (|| -> Result<(String, Jwks, VerifyOptions)> {
        let token = read_token(&a.token)?;
        let jwks = load_jwks(a)?;
        let mut opts = VerifyOptions::at(crate::evidence::parse_time(a.at.as_deref())?);
        opts.issuer = a.issuer.clone();
        opts.algs = if a.alg.is_empty() {
            vec![Alg::RS256, Alg::ES384]
        } else {
            a.alg
                .iter()
                .map(|n| Alg::from_name(n).ok_or_else(|| anyhow!("unsupported algorithm {n:?}")))
                .collect::<Result<_>>()?
        };
        Ok((token, jwks, opts))
    })();
    let (token, jwks, opts) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: could not check the token: {}", crate::describe(&e));
            return ExitCode::from(2);
        }
    };
    match attest::jwt::verify(&token, &jwks, &opts) {
        Ok(v) => {
            let out = serde_json::json!({
                "verdict": "valid",
                "alg": v.alg.name(),
                "kid": v.header.get("kid"),
                "claims": v.claims,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let out = serde_json::json!({
                "verdict": "invalid",
                "code": e.code(),
                "message": e.to_string(),
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::from(1)
        }
    }
}

pub(crate) fn admin_token(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// Prints a service's answer as JSON: the result, or its refusal (then fails with its
/// HTTP status).
pub(crate) fn show<T: serde::Serialize>(r: Result<T, api_client::ClientError>) -> Result<()> {
    match r {
        Ok(t) => {
            println!("{}", serde_json::to_string_pretty(&t)?);
            Ok(())
        }
        Err(e) => match (e.body(), e.status()) {
            (Some(body), Some(status)) => {
                println!("{}", serde_json::to_string_pretty(&body)?);
                bail!("HTTP {status}")
            }
            _ => Err(e.into()),
        },
    }
}

fn audit_verify(state: &Path, master_key: Option<&Path>, database: Option<&str>) -> ExitCode {
    let keys = (|| -> Result<(sqldb::Location, audit::Keys)> {
        let db = crate::database::existing(database, state, "attest.db")?;
        let master = crate::master_key::load("CVM_ATTEST_MASTER_KEY", master_key, state)?;
        Ok((db, attest::store::audit_keys(&master)?))
    })();
    let (db, keys) = match keys {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {}", crate::describe(&e));
            return ExitCode::from(2);
        }
    };
    match attest::store::verify_audit(&db, &keys, &[]) {
        Ok(i) => {
            println!(
                "intact: {} entries, {} checkpoints",
                i.entries, i.checkpoints
            );
            ExitCode::SUCCESS
        }
        Err(audit::table::VerifyError::Tampered(t)) => {
            println!("tampered: {t}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {db}: {e}");
            ExitCode::from(2)
        }
    }
}

fn reference_value(cmd: ReferenceValueCommand) -> Result<()> {
    match cmd {
        ReferenceValueCommand::Add {
            url,
            token_file,
            region,
            measurement,
            ovmf,
            vcpus,
            vcpu_type,
            component,
            ca,
        } => {
            let (measurement, source) = match (measurement, ovmf, vcpu_type) {
                (Some(m), _, _) => (m, "given".to_string()),
                (None, Some(path), Some(vcpu)) => {
                    use snp_emu::ovmf::{MeasureOptions, VcpuType, measure_snp};
                    let image = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let opts = MeasureOptions {
                        vcpus,
                        vcpu_type: vcpu.parse::<VcpuType>()?,
                        guest_features: 1,
                        kernel: None,
                        initrd: None,
                        append: None,
                    };
                    let digest = measure_snp(&image, &opts)
                        .with_context(|| format!("measuring {}", path.display()))?;
                    (
                        hex::encode(digest),
                        format!(
                            "cvm snp measure --ovmf {} --vcpus {vcpus} --vcpu-type {vcpu}",
                            path.display()
                        ),
                    )
                }
                _ => bail!("give --measurement, or --ovmf with --vcpu-type"),
            };
            let req = attest_api::ReferenceValueRequest {
                measurement,
                component,
                source,
            };
            let admin = admin_token(&token_file)?;
            show(
                service_client(&url, ca.as_deref(), Some(&admin))?
                    .add_reference_value(&region, &req),
            )
        }
        ReferenceValueCommand::List { url, ca } => {
            show(service_client(&url, ca.as_deref(), None)?.reference_values())
        }
        ReferenceValueCommand::Remove {
            url,
            token_file,
            region,
            measurement,
            ca,
        } => {
            let admin = admin_token(&token_file)?;
            show(
                service_client(&url, ca.as_deref(), Some(&admin))?
                    .remove_reference_value(&region, &measurement),
            )
        }
    }
}

fn policy(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Get { at, token_file } => {
            let admin = admin_token(&token_file)?;
            show(at.client(Some(&admin))?.get_policy(&at.kind))
        }
        PolicyCommand::Set {
            at,
            token_file,
            file,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let admin = admin_token(&token_file)?;
            show(at.client(Some(&admin))?.set_policy(&at.kind, &text))
        }
        PolicyCommand::Test {
            at,
            evidence,
            policy,
            token_file,
        } => {
            let ev: Value = serde_json::from_slice(
                &std::fs::read(&evidence)
                    .with_context(|| format!("reading {}", evidence.display()))?,
            )
            .context("the evidence file is not JSON")?;
            let policy = policy
                .map(|p| {
                    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
                })
                .transpose()?;
            let req = attest_api::PolicyTestRequest {
                policy,
                evidence: ev,
            };
            let bearer = token_file.as_deref().map(admin_token).transpose()?;
            show(at.client(bearer.as_deref())?.test_policy(&at.kind, &req))
        }
    }
}
