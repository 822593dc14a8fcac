//! Opening the control plane: its operator credential survives a kill between storing
//! its hash and putting its file in place, and interrupted imports are cleaned up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use control::{Control, ControlConfig};

fn config(dir: &std::path::Path) -> ControlConfig {
    ControlConfig {
        state_dir: dir.to_path_buf(),
        database: None,
        regions: vec!["eastus".into()],
        default_region: "eastus".into(),
        prices: catalog::PriceTable::default_table(),
        agent_ca: None,
        replica: None,
        saga_lease: control::DEFAULT_SAGA_LEASE,
    }
}

#[test]
fn the_operator_credential_is_never_lost_and_stale_imports_go() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (c, created) = Control::open(config(d)).unwrap();
    let path = created.expect("the first start writes the operator's credential");
    let token = std::fs::read_to_string(&path).unwrap();
    assert!(c.authenticated(Some(token.trim())));
    assert!(!c.authenticated(Some("not-it")));
    drop(c);
    // A later start writes nothing and keeps the credential.
    let (c, created) = Control::open(config(d)).unwrap();
    assert!(created.is_none());
    assert!(c.authenticated(Some(token.trim())));
    drop(c);
    // Killed after the hash was stored, before the file was renamed into place: the
    // next start puts the pending file in place.
    std::fs::rename(&path, d.join("operator.token.new.0123")).unwrap();
    let (c, created) = Control::open(config(d)).unwrap();
    assert_eq!(created.as_deref(), Some(path.as_path()));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
    assert!(!d.join("operator.token.new.0123").exists());
    drop(c);
    // ... also when a stale file (another database's credential) is in place.
    std::fs::rename(&path, d.join("operator.token.new.4567")).unwrap();
    std::fs::write(&path, "stale").unwrap();
    let (c, created) = Control::open(config(d)).unwrap();
    assert_eq!(created.as_deref(), Some(path.as_path()));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
    drop(c);
    // A pending file that is not the stored credential is not put in place (and goes).
    std::fs::remove_file(&path).unwrap();
    std::fs::write(d.join("operator.token.new.89ab"), "forged").unwrap();
    let (_c, created) = Control::open(config(d)).unwrap();
    assert!(created.is_none() && !path.exists());
    assert!(!d.join("operator.token.new.89ab").exists());
    // An import a kill interrupted leaves a temporary file the next start removes.
    let images = d.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(
        images.join(".debian-12.0011223344556677.importing"),
        b"half",
    )
    .unwrap();
    std::fs::write(images.join("debian-12-0011223344556677.img"), b"kept").unwrap();
    drop(_c);
    let _ = Control::open(config(d)).unwrap();
    let left: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["debian-12-0011223344556677.img"]);
}
