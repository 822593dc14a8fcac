//! `cvm up`'s services beside the control plane: the attestation service and the key
//! vault, each in this process on its own runtime and loopback port, and the host
//! agent of the emulated hosts.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use keyvault_api::KeyVaultApi as _;
use zeroize::Zeroizing;

/// The services as they listen.
pub struct Started {
    /// The attestation service's base URL (also its tokens' issuer).
    pub attestation_url: String,
    /// The key vault's base URL.
    pub vault_url: String,
    /// What the host agent needs of them.
    pub services: host::Services,
}

/// Where `cvm up` keeps a service's port, so its URL (the attestation service's is
/// the issuer that VM keys' release policies name) stays the same across restarts.
fn listen_for(state: &Path, name: &str) -> String {
    std::fs::read_to_string(state.join(format!("{name}.listen")))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| {
            s.parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback())
        })
        .unwrap_or_else(|| "127.0.0.1:0".to_string())
}

/// Runs `serve` on a thread of its own and waits for the address it listens on.
fn spawn_service(
    name: &'static str,
    serve: impl FnOnce(mpsc::Sender<std::net::SocketAddr>) -> Result<()> + Send + 'static,
) -> Result<std::net::SocketAddr> {
    let (tx, rx) = mpsc::channel();
    let (etx, erx) = mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Err(e) = serve(tx) {
                let _ = etx.send(format!("{e:#}"));
            }
        })?;
    loop {
        if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
            return Ok(addr);
        }
        if let Ok(e) = erx.try_recv() {
            bail!("the {name} did not start: {e}");
        }
    }
}

/// Starts the attestation service (trusting the emulated hosts' roots `roots`, PEM
/// bundles) and the key vault (trusting that service's tokens) under `state`, and
/// sets up the platform vault the VMs' keys live in.
pub fn start(state: &Path, roots: &[String]) -> Result<Started> {
    let secrets = state.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700))?;
    }
    // The attestation service.
    let attest_state = state.join("attest");
    let master = crate::master_key::load(
        "CVM_ATTEST_MASTER_KEY",
        Some(&secrets.join("attest-master.key")),
        &attest_state,
    )?;
    let mut cfg = attest::ServiceConfig::new(attest_state.clone(), String::new(), master);
    cfg.database = Some(sqldb::Location::sqlite(&attest_state.join("attest.db")));
    for pem in roots {
        cfg.emulator_roots.push(
            attest::EmulatorRoots::from_pem(pem.as_bytes()).context("an emulated host's roots")?,
        );
    }
    let exe = std::env::current_exe().context("finding the cvm binary for policy workers")?;
    cfg.policy_sandbox = Some(attest::sandbox::SandboxConfig::new(
        exe,
        vec!["attest".into(), "policy-worker".into()],
    ));
    let listen = listen_for(state, "attest");
    let addr = spawn_service("attestation service", move |tx| {
        attest::server::run(&listen, None, None, cfg, move |addr, _| {
            let _ = tx.send(addr);
        })?;
        Ok(())
    })?;
    std::fs::write(state.join("attest.listen"), addr.to_string())?;
    let attestation_url = format!("http://{addr}");

    // The key vault.
    let kv_state = state.join("keyvault");
    let master = crate::master_key::load(
        "CVM_KEYVAULT_MASTER_KEY",
        Some(&secrets.join("keyvault-master.key")),
        &kv_state,
    )?;
    let kv_cfg = keyvault::service::VaultConfig {
        state_dir: kv_state.clone(),
        master_key: master,
        base_url: String::new(),
        authorities: keyvault::authority::Authorities::new(
            std::slice::from_ref(&attestation_url),
            keyvault::authority::http_fetch(),
        ),
        database: Some(sqldb::Location::sqlite(&kv_state.join("keyvault.db"))),
        store: None,
    };
    let listen = listen_for(state, "keyvault");
    let addr = spawn_service("key vault", move |tx| {
        keyvault::server::run(&listen, None, None, kv_cfg, move |addr, _| {
            let _ = tx.send(addr);
        })?;
        Ok(())
    })?;
    std::fs::write(state.join("keyvault.listen"), addr.to_string())?;
    let vault_url = format!("http://{addr}");
    let (vault_admin, vault_release) = platform_vault(&vault_url, &kv_state, &secrets)?;
    let vault_signer = crate::attest_cmd::certificate_der(&kv_state.join("release-signer.pem"))?;
    Ok(Started {
        attestation_url: attestation_url.clone(),
        vault_url: vault_url.clone(),
        services: host::Services {
            attestation_url,
            vault_url,
            vault_admin,
            vault_release,
            vault_signer,
        },
    })
}

/// The services of the platform `cvm up` runs under `state`, for a host agent in a
/// process of its own (`cvm host run`): their URLs (kept across restarts), the
/// platform vault's credentials and the vault's release signer.
pub fn connect(state: &Path) -> Result<host::Services> {
    let url = |name: &str| -> Result<String> {
        let listen = listen_for(state, name);
        if listen.ends_with(":0") {
            bail!(
                "{} has no {name}.listen: is `cvm up --state {}` running (or has it run)?",
                state.display(),
                state.display()
            );
        }
        Ok(format!("http://{listen}"))
    };
    let secret = |name: &str| -> Result<Zeroizing<String>> {
        let p = state.join("secrets").join(name);
        let s = Zeroizing::new(
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_string(),
        );
        if s.is_empty() {
            bail!("{} is empty", p.display());
        }
        Ok(s)
    };
    Ok(host::Services {
        attestation_url: url("attest")?,
        vault_url: url("keyvault")?,
        vault_admin: secret("platform-vault-admin.token")?,
        vault_release: secret("platform-vault-release.token")?,
        vault_signer: crate::attest_cmd::certificate_der(
            &state.join("keyvault").join("release-signer.pem"),
        )?,
    })
}

/// The platform vault's administrator and release-only credentials: created once
/// (the vault `platform`), kept in `secrets/` (0600).
fn platform_vault(
    url: &str,
    kv_state: &Path,
    secrets: &Path,
) -> Result<(Zeroizing<String>, Zeroizing<String>)> {
    let admin_path = secrets.join("platform-vault-admin.token");
    let release_path = secrets.join("platform-vault-release.token");
    let read = |p: &PathBuf| -> Option<Zeroizing<String>> {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| Zeroizing::new(s.trim().to_string()))
            .filter(|s| !s.is_empty())
    };
    if let (Some(a), Some(r)) = (read(&admin_path), read(&release_path)) {
        return Ok((a, r));
    }
    let agent = api_client::agent(None).map_err(|e| anyhow!("{e}"))?;
    let service_admin = Zeroizing::new(
        std::fs::read_to_string(kv_state.join("admin.token"))
            .context("the key vault's service administrator credential")?
            .trim()
            .to_string(),
    );
    let service = keyvault_client::Client::new(agent.clone(), url, &service_admin);
    let admin = match read(&admin_path) {
        Some(a) => a,
        None => {
            let c = service
                .create_vault(&(), "platform")
                .map_err(|e| anyhow!("creating the platform vault: {e}"))?;
            let a = Zeroizing::new(c.credential.clone());
            seal::write_secret_file(&admin_path, a.as_bytes())?;
            a
        }
    };
    let vault = keyvault_client::Client::new(agent, url, &admin);
    let release = vault
        .create_credential(
            &(),
            keyvault_api::CreateCredentialRequest {
                role: Some("release_user".into()),
            },
        )
        .map_err(|e| anyhow!("creating the platform vault's release credential: {e}"))?;
    let r = Zeroizing::new(release.credential.clone());
    seal::write_secret_file(&release_path, r.as_bytes())?;
    Ok((admin, r))
}
