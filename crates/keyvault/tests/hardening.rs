//! Issue 10's key-vault findings, in process against a real SQLite store: each test
//! failed on the code before the fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use keyvault::authority::{Authorities, http_fetch};
use keyvault::service::{Authorized, Vault, VaultConfig, VaultError};
use keyvault::wrap::{KeyHsm, WrapMechanism, WrappingPublicKey};
use keyvault_api::KeyVaultApi;
use serde_json::{Value, json};

/// The vault's API as an HTTP request reaches it: a bearer credential admitted to the
/// contract's operation first ([`Vault::authorize_op`]), then a JSON body parsed into
/// the operation's typed request, answered as JSON.
trait ByBearer {
    fn op<T: serde::Serialize>(
        &self,
        bearer: Option<&str>,
        id: &str,
        f: impl FnOnce(&Vault, &Authorized) -> Result<T, VaultError>,
    ) -> Result<Value, VaultError>;
}

impl ByBearer for Vault {
    fn op<T: serde::Serialize>(
        &self,
        bearer: Option<&str>,
        id: &str,
        f: impl FnOnce(&Vault, &Authorized) -> Result<T, VaultError>,
    ) -> Result<Value, VaultError> {
        let a = self.authorize_op(bearer, id)?;
        f(self, &a).map(|t| serde_json::to_value(t).unwrap())
    }
}

fn typed<T: serde::de::DeserializeOwned>(b: &[u8]) -> T {
    serde_json::from_slice(b).unwrap()
}

struct Setup {
    vault: Vault,
    admin: String,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("secrets");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let cfg = VaultConfig {
        state_dir: dir.path().join("state"),
        master_key: seal::MasterKey::load_or_create(&elsewhere.join("master.key")).unwrap(),
        base_url: "http://vault.test".into(),
        authorities: Authorities::new(&[], http_fetch()),
        database: None,
        store: None,
    };
    let (vault, created) = Vault::open(cfg).unwrap();
    let service = std::fs::read_to_string(created.unwrap()).unwrap();
    let v = vault
        .op(Some(&service), "create_vault", |v, c| {
            v.create_vault(c, "t")
        })
        .unwrap();
    Setup {
        admin: v["credential"].as_str().unwrap().to_string(),
        vault,
        db: dir.path().join("state/keyvault.db"),
        _dir: dir,
    }
}

fn version_of(bundle: &Value) -> String {
    bundle["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

fn db(s: &Setup) -> rusqlite::Connection {
    rusqlite::Connection::open(&s.db).unwrap()
}

/// wrapkey honours the key's nbf/exp window and refuses to answer when its audit entry
/// cannot be written (a fault injected with a trigger), as release does.
#[test]
fn wrapkey_checks_the_window_and_needs_its_audit_entry() {
    let s = setup();
    let a = Some(s.admin.as_str());
    let k = s
        .vault
        .op(a, "create_key", |v, c| {
            v.create_key(c, "kek", typed(br#"{"kty": "oct"}"#))
        })
        .unwrap();
    let ver = version_of(&k);
    let body = json!({"alg": "A256KW", "value": B64URL.encode([7u8; 32])}).to_string();
    s.vault
        .op(a, "wrap_key", |v, c| {
            v.wrap_key(c, "kek", &ver, typed(body.as_bytes()))
        })
        .unwrap();
    // Outside the window.
    s.vault
        .op(a, "update_key", |v, c| {
            v.update_key(c, "kek", &ver, typed(br#"{"attributes": {"exp": 1000}}"#))
        })
        .unwrap();
    let e = s
        .vault
        .op(a, "wrap_key", |v, c| {
            v.wrap_key(c, "kek", &ver, typed(body.as_bytes()))
        })
        .unwrap_err();
    assert_eq!(e.code, "key_not_valid_now");
    s.vault
        .op(a, "update_key", |v, c| {
            v.update_key(
                c,
                "kek",
                &ver,
                typed(br#"{"attributes": {"exp": 99999999999, "nbf": 99999999990}}"#),
            )
        })
        .unwrap();
    let e = s
        .vault
        .op(a, "wrap_key", |v, c| {
            v.wrap_key(c, "kek", &ver, typed(body.as_bytes()))
        })
        .unwrap_err();
    assert_eq!(e.code, "key_not_valid_now");
    s.vault
        .op(a, "update_key", |v, c| {
            v.update_key(c, "kek", &ver, typed(br#"{"attributes": {"nbf": 0}}"#))
        })
        .unwrap();
    s.vault
        .op(a, "wrap_key", |v, c| {
            v.wrap_key(c, "kek", &ver, typed(body.as_bytes()))
        })
        .unwrap();
    // The audit log refuses wrapkey entries: nothing is wrapped.
    db(&s)
        .execute_batch(
            "CREATE TRIGGER fail_wrapkey BEFORE INSERT ON audit WHEN NEW.op = 'wrapkey'
               BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END;",
        )
        .unwrap();
    let e = s
        .vault
        .op(a, "wrap_key", |v, c| {
            v.wrap_key(c, "kek", &ver, typed(body.as_bytes()))
        })
        .unwrap_err();
    assert_eq!((e.status, e.code), (503, "audit_unavailable"));
}

/// A BYOK import needs a key exchange key that is enabled and inside its window.
#[test]
fn byok_needs_a_usable_key_exchange_key() {
    let s = setup();
    let a = Some(s.admin.as_str());
    let kek = s
        .vault
        .op(a, "create_key", |v, c| {
            v.create_key(c, "kek", typed(br#"{"kty": "RSA", "key_size": 2048}"#))
        })
        .unwrap();
    let ver = version_of(&kek);
    let kid = kek["key"]["kid"].as_str().unwrap().to_string();
    let n = B64URL.decode(kek["key"]["n"].as_str().unwrap()).unwrap();
    let e = B64URL.decode(kek["key"]["e"].as_str().unwrap()).unwrap();
    let pubkey = WrappingPublicKey::from_components(&n, &e)
        .unwrap()
        .with_kid(kid);
    let hsm = KeyHsm::wrap(WrapMechanism::CkmRsaAesKeyWrap, &pubkey, &[9u8; 32]).unwrap();
    let import = json!({"key": {"kty": "oct-HSM", "key_hsm": hsm.encode()}}).to_string();
    for (attrs, code) in [
        (r#"{"attributes": {"enabled": false}}"#, "key_disabled"),
        (
            r#"{"attributes": {"enabled": true, "exp": 1000}}"#,
            "key_not_valid_now",
        ),
    ] {
        s.vault
            .op(a, "update_key", |v, c| {
                v.update_key(c, "kek", &ver, typed(attrs.as_bytes()))
            })
            .unwrap();
        let err = s
            .vault
            .op(a, "import_key", |v, c| {
                v.import_key(c, "byok", typed(import.as_bytes()))
            })
            .unwrap_err();
        assert_eq!(err.code, code, "{attrs}");
    }
    s.vault
        .op(a, "update_key", |v, c| {
            v.update_key(
                c,
                "kek",
                &ver,
                typed(br#"{"attributes": {"exp": 99999999999}}"#),
            )
        })
        .unwrap();
    s.vault
        .op(a, "import_key", |v, c| {
            v.import_key(c, "byok", typed(import.as_bytes()))
        })
        .unwrap();
}

/// An immutable release policy that no longer parses (a newer grammar, a damaged row)
/// stays immutable: before, it was taken for "no policy" and could be replaced.
#[test]
fn an_unreadable_immutable_policy_fails_closed() {
    let s = setup();
    let a = Some(s.admin.as_str());
    let policy = json!({"version": "1.0.0", "anyOf": [
        {"authority": "https://attest.invalid", "allOf": [{"claim": "x", "equals": "y"}]}
    ]});
    let body = json!({
        "kty": "oct",
        "attributes": {"exportable": true},
        "release_policy": {
            "contentType": "application/json; charset=utf-8",
            "data": B64URL.encode(policy.to_string()),
            "immutable": true,
        }
    });
    let k = s
        .vault
        .op(a, "create_key", |v, c| {
            v.create_key(c, "k", typed(body.to_string().as_bytes()))
        })
        .unwrap();
    let ver = version_of(&k);
    // The stored policy becomes one this grammar does not read (no authority blocks),
    // still marked immutable.
    let stored: String = db(&s)
        .query_row(
            "SELECT release_policy FROM key_versions WHERE name = 'k'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let old = stored.replace(
        &B64URL.encode(policy.to_string()),
        &B64URL.encode(r#"{"version": "1.0.0"}"#),
    );
    assert_ne!(old, stored);
    assert!(old.contains("\"immutable\":true"), "{old}");
    db(&s)
        .execute(
            "UPDATE key_versions SET release_policy = ?1 WHERE name = 'k'",
            [&old],
        )
        .unwrap();
    let open = json!({"release_policy": {
        "data": B64URL.encode(
            json!({"version": "1.0.0", "anyOf": [{"authority": "https://evil.invalid",
                   "allOf": [{"claim": "x", "exists": true}]}]}).to_string()
        )
    }});
    let e = s
        .vault
        .op(a, "update_key", |v, c| {
            v.update_key(c, "k", &ver, typed(open.to_string().as_bytes()))
        })
        .unwrap_err();
    assert_eq!(e.code, "release_policy_immutable");
}

/// A purged key's sealed material is gone from the database file and its write-ahead
/// log, not left in free pages.
#[test]
fn purged_key_material_is_overwritten() {
    let s = setup();
    let a = Some(s.admin.as_str());
    s.vault
        .op(a, "create_key", |v, c| {
            v.create_key(c, "gone", typed(br#"{"kty": "oct"}"#))
        })
        .unwrap();
    let sealed: Vec<u8> = db(&s)
        .query_row(
            "SELECT sealed FROM key_versions WHERE name = 'gone'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sealed.len() >= 40);
    let files = || {
        let mut all = std::fs::read(&s.db).unwrap();
        all.extend(std::fs::read(s.db.with_extension("db-wal")).unwrap_or_default());
        all
    };
    assert!(
        files().windows(sealed.len()).any(|w| w == sealed),
        "the material is stored"
    );
    s.vault
        .op(a, "delete_key", |v, c| v.delete_key(c, "gone"))
        .unwrap();
    s.vault
        .op(a, "purge_key", |v, c| v.purge_key(c, "gone"))
        .unwrap();
    assert!(
        !files().windows(sealed.len()).any(|w| w == sealed),
        "the purged material is still in the database files"
    );
}

/// Credentials can be listed, rotated and revoked, each audited; the last
/// administrator credential stays.
#[test]
fn credentials_rotate_and_revoke() {
    let s = setup();
    let a = Some(s.admin.as_str());
    let r = s
        .vault
        .op(a, "create_credential", |v, c| {
            v.create_credential(c, typed(br#"{"role": "release_user"}"#))
        })
        .unwrap();
    let user = r["credential"].as_str().unwrap().to_string();
    let user_id = r["id"].as_str().unwrap().to_string();
    let list = s
        .vault
        .op(a, "list_credentials", |v, c| v.list_credentials(c))
        .unwrap();
    assert_eq!(list["value"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&user));
    // The holder rotates its own credential: the old one stops working.
    let rotated = s
        .vault
        .op(Some(&user), "rotate_credential", |v, c| {
            v.rotate_credential(c, &user_id)
        })
        .unwrap();
    let new_user = rotated["credential"].as_str().unwrap().to_string();
    assert!(s.vault.caller(Some(&user)).is_err());
    assert!(s.vault.caller(Some(&new_user)).is_ok());
    // It cannot rotate the administrator's.
    let admin_id = keyvault::service::credential_id(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.admin.as_bytes()).as_ref(),
    );
    let e = s
        .vault
        .op(Some(&new_user), "rotate_credential", |v, c| {
            v.rotate_credential(c, &admin_id)
        })
        .unwrap_err();
    assert_eq!(e.status, 403);
    // The administrator revokes it.
    let new_id = rotated["id"].as_str().unwrap();
    s.vault
        .op(a, "revoke_credential", |v, c| {
            v.revoke_credential(c, new_id)
        })
        .unwrap();
    assert!(s.vault.caller(Some(&new_user)).is_err());
    let e = s
        .vault
        .op(a, "revoke_credential", |v, c| {
            v.revoke_credential(c, &admin_id)
        })
        .unwrap_err();
    assert_eq!((e.status, e.code), (409, "last_administrator"));
    let log = s.vault.op(a, "audit_log", |v, c| v.audit_log(c)).unwrap();
    let ops: Vec<&str> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["op"].as_str().unwrap())
        .collect();
    for want in ["credential_rotate", "credential_revoke"] {
        assert!(ops.contains(&want), "{ops:?}");
    }
}

/// Requests without a valid credential write no audit entries (before, a refused
/// `POST /regions/*` did), and the vault name `service` is reserved.
#[test]
fn unauthenticated_requests_write_nothing_and_service_is_reserved() {
    let s = setup();
    let count = || -> i64 {
        db(&s)
            .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
            .unwrap()
    };
    let before = count();
    for _ in 0..5 {
        assert_eq!(
            s.vault
                .op(None, "create_region", |v, c| v.create_region(c, "r1"))
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            s.vault
                .op(Some("wrong"), "create_region", |v, c| v
                    .create_region(c, "r1"))
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            s.vault
                .op(None, "rotate_region", |v, c| v.rotate_region(c, "r1"))
                .unwrap_err()
                .status,
            401
        );
    }
    assert_eq!(count(), before);
    let service = std::fs::read_to_string(s.db.parent().unwrap().join("admin.token")).unwrap();
    for name in ["service", "Service"] {
        let e = s
            .vault
            .op(Some(&service), "create_vault", |v, c| {
                v.create_vault(c, name)
            })
            .unwrap_err();
        assert_eq!(e.code, "bad_parameter", "{name}");
    }
}

/// A caller is admitted for one operation of the contract: the vault's methods refuse
/// one admitted for another (a bug of the edge), whatever the caller's role allows.
#[test]
fn a_caller_admitted_for_one_operation_runs_no_other() {
    let s = setup();
    let a = Some(s.admin.as_str());
    s.vault
        .op(a, "create_key", |v, c| {
            v.create_key(c, "k", typed(br#"{"kty": "oct"}"#))
        })
        .unwrap();
    let listed = s.vault.authorize_op(a, "list_keys").unwrap();
    let e = s.vault.purge_key(&listed, "k").unwrap_err();
    assert_eq!((e.status, e.code), (500, "wrong_operation"));
    let e = s.vault.delete_key(&listed, "k").unwrap_err();
    assert_eq!((e.status, e.code), (500, "wrong_operation"));
    // The key is still there; `get_key` answers for a caller admitted to either of its
    // two routes.
    let one = s.vault.authorize_op(a, "get_key_version").unwrap();
    assert!(s.vault.get_key(&one, "k", None).is_ok());
    assert_eq!(listed.operation().id, "list_keys");
}
