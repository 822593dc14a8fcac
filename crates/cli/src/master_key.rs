//! The master key a service seals its secrets under: from an environment variable, or
//! a file that must not live inside the service's state directory (a copy of the state
//! alone then opens nothing).

use std::path::Path;

use anyhow::{Result, bail};

/// The master key: `env` (64 hex digits) if set, else the file `path` (created, mode
/// 0600, when missing), which must lie outside `state`.
pub(crate) fn load(env: &str, path: Option<&Path>, state: &Path) -> Result<seal::MasterKey> {
    if let Ok(hex) = std::env::var(env) {
        // Our copy is wiped; the process environment itself still holds the value
        // (removing it needs `unsafe`, which this crate forbids).
        let hex = zeroize::Zeroizing::new(hex);
        return Ok(seal::MasterKey::from_hex(&hex)?);
    }
    let Some(path) = path else {
        bail!("give --master-key FILE (outside --state) or set {env}");
    };
    std::fs::create_dir_all(state)?;
    let state = state.canonicalize()?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    if parent.canonicalize()?.starts_with(&state) {
        bail!("the master key must not be stored beside the data (inside --state)");
    }
    Ok(seal::MasterKey::load_or_create(path)?)
}
