//! The typed client (`attest-client`) drives every operation of a running service,
//! for the default provider and a named one; refusals arrive typed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use attest_api::*;
use attest_client::Client;
use common::azure::azure_parts;
use common::*;
use serde_json::{Value, json};
use snp::product::Product;

#[test]
fn the_typed_client_drives_every_operation() {
    let s = start(true);
    let agent = || attest_client::agent(None).unwrap();
    let operator = Client::new(agent(), &s.url, Some(&s.admin));
    let anyone = Client::new(agent(), &s.url, None);

    let created = operator
        .create_provider(
            "tenant",
            &ProviderSettings {
                allow_emulated: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(created.issuer, format!("{}/providers/tenant", s.url));
    assert!(!format!("{created:?}").contains(&created.admin_token));
    let e = anyone
        .create_provider("other", &ProviderSettings::default())
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(401), Some("unauthorized")));

    let emu = emulator(Product::Milan);
    let guest = emu.guest(false);
    for (name, cred) in [
        (None, s.admin.clone()),
        (Some("tenant"), created.admin_token.clone()),
    ] {
        let scoped = |c: Client| match name {
            Some(n) => c.for_provider(n),
            None => c,
        };
        let admin = scoped(Client::new(agent(), &s.url, Some(&cred)));
        let public = scoped(Client::new(agent(), &s.url, None));
        let conf = public.openid_configuration().unwrap();
        assert!(conf.jwks_uri.ends_with("/certs"));
        let keys = public.certs().unwrap();
        assert!(!keys.keys.is_empty());
        let nonce = public.nonce().unwrap();
        let body = emu.request(&guest, &json!({"nonce": nonce.nonce}), Some(&nonce.nonce));
        let req: SevSnpVmRequest = serde_json::from_slice(&body).unwrap();
        let AttestResponse::Token(t) = public.attest_sev_snp_vm(&req).unwrap() else {
            panic!("no token");
        };
        let claims = claims_of(&t.token);
        assert_eq!(claims["iss"], conf.issuer);
        // The nonce is used up.
        let e = public.attest_sev_snp_vm(&req).unwrap_err();
        assert_eq!(e.status(), Some(400), "{e}");
        let azure: AzureGuestRequest =
            serde_json::from_slice(&common::azure::body(&azure_parts("evidence-v1.json"), None))
                .unwrap();
        assert!(matches!(
            public.attest_azure_guest(&azure).unwrap(),
            AttestResponse::Token(_)
        ));

        let policy = "package policy\ndefault allow := true\n";
        let set = admin.set_policy("AzureGuest", policy).unwrap();
        assert_eq!(admin.get_policy("AzureGuest").unwrap().version, set.version);
        assert_eq!(
            public.get_policy("AzureGuest").unwrap_err().status(),
            Some(401)
        );
        let evidence: Value =
            serde_json::from_slice(&emu.request(&guest, &json!({}), None)).unwrap();
        let dry = public
            .test_policy(
                "SevSnpVm",
                &PolicyTestRequest {
                    policy: None,
                    evidence: evidence.clone(),
                },
            )
            .unwrap();
        assert_eq!(dry.decision, "allow");
        let draft = PolicyTestRequest {
            policy: Some(policy.into()),
            evidence,
        };
        assert_eq!(
            public.test_policy("SevSnpVm", &draft).unwrap_err().status(),
            Some(401)
        );
        assert!(admin.test_policy("SevSnpVm", &draft).unwrap().dry_run);

        let settings = admin.get_settings().unwrap();
        assert_eq!(admin.set_settings(&settings).unwrap(), settings);
        let rotated = admin.rotate_signing_key().unwrap();
        let kid = rotated.kid.unwrap();
        let revoked = admin.revoke_signing_key(&kid).unwrap();
        assert_eq!(revoked.revoked, kid);
        assert_ne!(revoked.kid.as_deref(), Some(kid.as_str()));
        let log = admin.audit_log().unwrap();
        assert!(log.value.iter().any(|e| e.op == "signing_key_revoke"));
    }

    // Administrator credentials of the named provider.
    let tenant = Client::new(agent(), &s.url, Some(&created.admin_token)).for_provider("tenant");
    let next = tenant.rotate_admin_credential().unwrap();
    assert_eq!(tenant.audit_log().unwrap_err().status(), Some(401));
    let as_operator = Client::new(agent(), &s.url, Some(&s.admin)).for_provider("tenant");
    let reset = as_operator.reset_admin_credential().unwrap();
    assert_ne!(reset.admin_token, next.admin_token);
    assert!(as_operator.revoke_admin_credential().unwrap().revoked);
    let e = operator.revoke_admin_credential().unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(409), Some("default_admin_required"))
    );

    // Reference values.
    let m = "cd".repeat(48);
    let rv = operator
        .add_reference_value(
            "west",
            &ReferenceValueRequest {
                measurement: m.clone(),
                component: "ovmf".into(),
                source: "test".into(),
            },
        )
        .unwrap();
    assert_eq!(rv.measurement, m);
    assert_eq!(anyone.reference_values().unwrap().value, vec![rv]);
    assert_eq!(
        operator.remove_reference_value("west", &m).unwrap().removed,
        format!("west/{m}")
    );
    assert_eq!(
        operator
            .remove_reference_value("west", &m)
            .unwrap_err()
            .status(),
        Some(404)
    );
    // Names are one path segment: this is no route of the provider.
    assert_eq!(
        Client::new(agent(), &s.url, None)
            .for_provider("tenant/../x")
            .nonce()
            .unwrap_err()
            .status(),
        Some(404)
    );
}
