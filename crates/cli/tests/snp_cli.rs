//! `cvm snp` as a process: emulated evidence is accepted by `cvm evidence verify` only
//! under its own platform's roots, pinned with `--dangerously-trust-emulator-roots`
//! (never for the emulator label its certificates carry), and an SNP-disabled host
//! refuses.

// Test helpers outside #[test] functions may panic on bad fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{cvm, export_roots, json_of};

use std::process::Command;

#[test]
fn emulated_reports_verify_only_when_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    for product in ["Milan", "Genoa", "Turin"] {
        let platform = d(&format!("platform-{product}"));
        let (report, chain) = (d(&format!("{product}.bin")), d(&format!("{product}.pem")));
        let out = cvm(&[
            "snp",
            "report",
            "--platform",
            &platform,
            "--product",
            product,
            "--report-data",
            "c0ffee",
            "--out",
            &report,
            "--chain-out",
            &chain,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::metadata(&report).unwrap().len(), 1184);

        let out = cvm(&[
            "evidence",
            "verify",
            &report,
            "--chain",
            &chain,
            "--json",
            "--offline",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let v = json_of(&out);
        assert_eq!(v["reasons"][0]["code"], "emulated_root");
        assert!(
            v["reasons"][0]["message"]
                .as_str()
                .unwrap()
                .contains("emulator")
        );

        let roots = export_roots(&platform, &d(&format!("{product}-roots.pem")));
        let out = cvm(&[
            "evidence",
            "verify",
            &report,
            "--chain",
            &chain,
            "--json",
            "--offline",
            "--dangerously-trust-emulator-roots",
            &roots,
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v = json_of(&out);
        assert_eq!(v["trust"], "emulated");
        assert_eq!(v["emulated"], true);
        assert_eq!(v["report"]["product"], product);
        assert!(
            v["report"]["report_data"]
                .as_str()
                .unwrap()
                .starts_with("c0ffee00")
        );

        // An independent verifier (Python `cryptography`, no opencvm code) accepts it.
        let oracle = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/oracles/verify_snp.py"
        );
        let out = Command::new("python3")
            .args([oracle, &report, &chain])
            .output()
            .expect("python3 (CI installs it)");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "OK",
            "{product}: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // The roots file as the chain too, with the VEK from the bundle.
        let out = cvm(&[
            "evidence",
            "verify",
            &report,
            "--vek",
            &chain,
            "--chain",
            &roots,
            "--dangerously-trust-emulator-roots",
            &roots,
        ]);
        assert_eq!(out.status.code(), Some(0));
    }
}

#[test]
fn snp_disabled_host_refuses_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let platform = dir.path().join("p").display().to_string();
    assert!(
        cvm(&["snp", "create", "--platform", &platform, "--snp-disabled"])
            .status
            .success()
    );
    let out = cvm(&[
        "snp",
        "report",
        "--platform",
        &platform,
        "--report-data",
        "00",
        "--out",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not SNP-capable"));
    let out = cvm(&["snp", "show", "--platform", &platform, "--json"]);
    let v = json_of(&out);
    assert_eq!(v["snp_enabled"], false);
    assert_eq!(v["emulated"], true);
}

#[test]
fn bad_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let platform = dir.path().join("p").display().to_string();
    let out = cvm(&[
        "snp",
        "report",
        "--platform",
        &platform,
        "--report-data",
        "zz",
        "--out",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let long = "00".repeat(65);
    let out = cvm(&[
        "snp",
        "report",
        "--platform",
        &platform,
        "--report-data",
        &long,
        "--out",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = cvm(&["snp", "show", "--platform", "/nonexistent/platform"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn short_or_empty_seeds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let platform = dir.path().join("p");
    let p = platform.display().to_string();
    let fifteen = "ab".repeat(15);
    for (seed, why) in [
        ("", "at least 16 bytes"),
        ("00", "at least 16 bytes"),
        (fifteen.as_str(), "got 15"),
        ("zz".repeat(16).as_str(), "not hex"),
    ] {
        let out = cvm(&[
            "snp",
            "create",
            "--platform",
            &p,
            "--dangerously-seed",
            seed,
        ]);
        assert_eq!(out.status.code(), Some(2), "{seed:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{seed:?}: {err}");
        assert!(!platform.join("platform.json").exists(), "{seed:?}");
    }
    // The old, innocent-looking flag is gone.
    let out = cvm(&[
        "snp",
        "create",
        "--platform",
        &p,
        "--seed",
        &"ab".repeat(16),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!platform.join("platform.json").exists());
}

#[test]
fn a_seeded_platform_is_recorded_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let seeded = dir.path().join("seeded").display().to_string();
    let twin = dir.path().join("twin").display().to_string();
    let plain = dir.path().join("plain").display().to_string();
    // 16 bytes exactly, with the optional 0x prefix.
    let seed = format!("0x{}", "5e".repeat(16));
    for platform in [&seeded, &twin] {
        let out = cvm(&[
            "snp",
            "create",
            "--platform",
            platform,
            "--dangerously-seed",
            &seed,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("seeded"));
    }
    assert!(
        cvm(&["snp", "create", "--platform", &plain])
            .status
            .success()
    );

    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("seeded/platform.json")).unwrap())
            .unwrap();
    assert_eq!(state["seeded"], true);

    let show = |platform: &str| json_of(&cvm(&["snp", "show", "--platform", platform, "--json"]));
    let (s, t, p) = (show(&seeded), show(&twin), show(&plain));
    assert_eq!(s["seeded"], true);
    assert_eq!(p["seeded"], false);
    assert_eq!(s["chip_id"], t["chip_id"], "the same seed, the same chip");
    assert_ne!(s["chip_id"], p["chip_id"]);

    let text = cvm(&["snp", "show", "--platform", &seeded]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("seeded:      yes"), "{text}");
    assert!(text.contains("DANGEROUS"), "{text}");
    let text = cvm(&["snp", "show", "--platform", &plain]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("seeded:      no"));

    // A platform stored before `seeded` existed shows as unseeded.
    let path = dir.path().join("plain/platform.json");
    let mut old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("seeded");
    std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
    assert_eq!(show(&plain)["seeded"], false);
}

#[test]
fn measured_launch_end_to_end() {
    // The launch digest of Debian's OVMF, as `sev-snp-measure` computes it.
    let ovmf = "/usr/share/ovmf/OVMF.fd";
    let out = cvm(&[
        "snp",
        "measure",
        "--ovmf",
        ovmf,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let theirs = Command::new("sev-snp-measure")
        .args([
            "--mode",
            "snp",
            "--vcpus",
            "2",
            "--vcpu-type",
            "EPYC-Milan",
            "--ovmf",
            ovmf,
            "--output-format",
            "hex",
        ])
        .output()
        .expect("sev-snp-measure (CI installs it with pip)");
    assert_eq!(ours, String::from_utf8_lossy(&theirs.stdout).trim());
    assert_eq!(ours.len(), 96);

    // A guest launched with that measurement; a policy allowing only it accepts it.
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    let out = cvm(&[
        "snp",
        "report",
        "--platform",
        &d("p"),
        "--report-data",
        "01",
        "--measurement",
        &ours,
        "--out",
        &d("r.bin"),
        "--chain-out",
        &d("c.pem"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        d("policy.toml"),
        format!("allowed_measurements = [\"{ours}\"]\n"),
    )
    .unwrap();
    let roots = export_roots(&d("p"), &d("roots.pem"));
    let verify = |policy: &str| {
        cvm(&[
            "evidence",
            "verify",
            &d("r.bin"),
            "--chain",
            &d("c.pem"),
            "--dangerously-trust-emulator-roots",
            &roots,
            "--policy",
            policy,
        ])
        .status
        .code()
    };
    assert_eq!(verify(&d("policy.toml")), Some(0));
    std::fs::write(
        d("other.toml"),
        format!("allowed_measurements = [\"{}\"]\n", "00".repeat(48)),
    )
    .unwrap();
    assert_eq!(verify(&d("other.toml")), Some(1));
}

#[test]
fn configured_tcb_and_firmware_reach_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    let out = cvm(&[
        "snp",
        "create",
        "--platform",
        &d("p"),
        "--product",
        "Turin",
        "--tcb",
        "fmc=2,bootloader=3,snp=9,microcode=77",
        "--firmware",
        "1.57.3",
        "--tsme",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cvm(&[
        "snp",
        "report",
        "--platform",
        &d("p"),
        "--report-data",
        "aa",
        "--out",
        &d("r.bin"),
        "--chain-out",
        &d("c.pem"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let roots = export_roots(&d("p"), &d("roots.pem"));
    let out = cvm(&[
        "evidence",
        "verify",
        &d("r.bin"),
        "--chain",
        &d("c.pem"),
        "--dangerously-trust-emulator-roots",
        &roots,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json_of(&out);
    let tcb = &v["report"]["reported_tcb"];
    assert_eq!(
        (
            tcb["fmc"].as_u64(),
            tcb["bootloader"].as_u64(),
            tcb["snp"].as_u64()
        ),
        (Some(2), Some(3), Some(9))
    );
    assert_eq!(tcb["microcode"], 77);
    assert_eq!(v["report"]["firmware"], "1.57.3");
    assert_eq!(v["report"]["platform_info"]["tsme_enabled"], true);
    // A policy demanding a newer TCB rejects this host: the "TCB too old" path.
    std::fs::write(d("policy.toml"), "min_tcb = { snp = 10 }\n").unwrap();
    let out = cvm(&[
        "evidence",
        "verify",
        &d("r.bin"),
        "--chain",
        &d("c.pem"),
        "--dangerously-trust-emulator-roots",
        &roots,
        "--policy",
        &d("policy.toml"),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    assert_eq!(v["reasons"][0]["code"], "policy.tcb");
    // Bad values are usage errors.
    for bad in [
        ["--tcb", "fmc=1"],
        ["--tcb", "snp=999"],
        ["--firmware", "1.2"],
    ] {
        let out = cvm(&[
            "snp",
            "create",
            "--platform",
            &d("q"),
            "--product",
            "Milan",
            bad[0],
            bad[1],
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn vlek_platform_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    assert!(
        cvm(&[
            "snp",
            "create",
            "--platform",
            &d("p"),
            "--product",
            "Genoa",
            "--vlek"
        ])
        .status
        .success()
    );
    let roots = export_roots(&d("p"), &d("roots.pem"));
    for (key, signer) in [("default", "vlek"), ("vlek", "vlek"), ("vcek", "vcek")] {
        let (r, c) = (d(&format!("{key}.bin")), d(&format!("{key}.pem")));
        let out = cvm(&[
            "snp",
            "report",
            "--platform",
            &d("p"),
            "--report-data",
            "01",
            "--key",
            key,
            "--out",
            &r,
            "--chain-out",
            &c,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = cvm(&[
            "evidence",
            "verify",
            &r,
            "--chain",
            &c,
            "--dangerously-trust-emulator-roots",
            &roots,
            "--json",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{key}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v = json_of(&out);
        assert_eq!(v["signer"], signer);
        assert_eq!(v["report"]["signing_key"], signer);
    }
}

/// Emulator roots are trusted by pin, never by label: evidence from a second emulated
/// platform, whose root carries the same emulator label and the same names, is refused
/// while only the first platform's roots are pinned, and accepted under its own.
#[test]
fn another_emulators_evidence_is_refused_under_this_ones_roots() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    for platform in ["this", "other"] {
        let out = cvm(&[
            "snp",
            "create",
            "--platform",
            &d(platform),
            "--product",
            "Genoa",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cvm(&[
        "snp",
        "report",
        "--platform",
        &d("other"),
        "--report-data",
        "c0ffee",
        "--out",
        &d("r.bin"),
        "--chain-out",
        &d("c.pem"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let this_roots = export_roots(&d("this"), &d("this-roots.pem"));
    let other_roots = export_roots(&d("other"), &d("other-roots.pem"));
    let (report, chain) = (d("r.bin"), d("c.pem"));
    let verify = |pinned: &[&str]| {
        let mut args = vec![
            "evidence",
            "verify",
            &report,
            "--chain",
            &chain,
            "--json",
            "--offline",
        ];
        args.extend_from_slice(pinned);
        let out = cvm(&args);
        (out.status.code(), json_of(&out))
    };

    // Only this platform's roots pinned: the other's root, labelled an emulator's too,
    // is not trusted.
    let (code, v) = verify(&["--dangerously-trust-emulator-roots", &this_roots]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["verdict"], "rejected", "{v}");
    assert_eq!(v["verified"], false, "{v}");
    assert_eq!(v["reasons"][0]["code"], "emulated_root", "{v}");
    let message = v["reasons"][0]["message"].as_str().unwrap();
    assert!(message.contains("not pinned"), "{message}");
    assert!(v.get("trust").is_none(), "{v}");

    // Its own roots pinned (alone or beside this one's): accepted, labelled emulated,
    // with the CRL from its roots file applied.
    for pinned in [
        vec!["--dangerously-trust-emulator-roots", other_roots.as_str()],
        vec![
            "--dangerously-trust-emulator-roots",
            this_roots.as_str(),
            "--dangerously-trust-emulator-roots",
            other_roots.as_str(),
        ],
    ] {
        let (code, v) = verify(&pinned);
        assert_eq!(code, Some(0), "{v}");
        assert_eq!(v["trust"], "emulated", "{v}");
        assert_eq!(v["emulated"], true, "{v}");
        assert_eq!(v["revocation"], "checked", "{v}");
    }

    // AMD's roots are not an emulator's: refused as a roots file.
    let amd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/snp/go-sev-guest/ask_ark_milan.pem"
    );
    let (code, v) = verify(&["--dangerously-trust-emulator-roots", amd]);
    assert_eq!(code, Some(2), "{v}");
    let message = v["reasons"][0]["message"].as_str().unwrap();
    assert!(message.contains("not an emulated ARK"), "{message}");

    // The flag that trusted any root labelled an emulator's is gone.
    let out = cvm(&[
        "evidence",
        "verify",
        &report,
        "--chain",
        &chain,
        "--dangerously-trust-emulator",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--dangerously-trust-emulator"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
