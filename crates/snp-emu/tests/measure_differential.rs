//! Differential tests: our launch digests against the `sev-snp-measure` CLI run as a
//! subprocess on the same inputs.
//!
//! `sev-snp-measure` must be on `PATH` (`pip install sev-snp-measure`); these tests fail,
//! never skip, without it. Kernels and initrds are pseudo-random, from a seed printed on
//! failure (set `MEASURE_SEED` to replay one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use snp_emu::ovmf::{MeasureOptions, VcpuType, measure_snp, ovmf_hash};

const TOOL: &str = "sev-snp-measure";
const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

fn amdsev() -> PathBuf {
    testdata("snp/virtee-sev/ovmf_AmdSev_suffix.bin")
}

fn ovmfx64() -> PathBuf {
    testdata("snp/virtee-sev/ovmf_OvmfX64_suffix.bin")
}

fn debian_ovmf() -> PathBuf {
    let p = PathBuf::from(DEBIAN_OVMF);
    assert!(
        p.exists(),
        "{DEBIAN_OVMF} is missing; install Debian's OVMF with `apt-get install -y ovmf`"
    );
    p
}

/// Runs sev-snp-measure; `Ok(stdout)` on success, `Err(stderr)` when it reports an error.
fn run_tool(args: &[&str]) -> Result<String, String> {
    let out = Command::new(TOOL)
        .args(args)
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{TOOL}` ({e}): install it with `pip install sev-snp-measure` \
                 (0.0.13 was used to write these tests); these differential tests do not skip"
            )
        });
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn seed() -> u64 {
    match std::env::var("MEASURE_SEED") {
        Ok(s) => s.parse().expect("MEASURE_SEED must be a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// xorshift64*: enough for test data.
fn random_bytes(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// One launch to measure both ways.
struct Case<'a> {
    ovmf: &'a Path,
    vcpus: u32,
    vcpu_type: &'a str,
    guest_features: u64,
    kernel: Option<&'a Path>,
    initrd: Option<&'a Path>,
    append: Option<&'a str>,
}

impl Case<'_> {
    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "--mode",
            "snp",
            "--output-format",
            "hex",
            "--ovmf",
            self.ovmf.to_str().unwrap(),
            "--vcpus",
            &self.vcpus.to_string(),
            "--vcpu-type",
            self.vcpu_type,
            "--guest-features",
            &format!("{:#x}", self.guest_features),
        ]
        .map(str::to_owned)
        .to_vec();
        for (flag, path) in [("--kernel", self.kernel), ("--initrd", self.initrd)] {
            if let Some(p) = path {
                a.push(flag.to_owned());
                a.push(p.to_str().unwrap().to_owned());
            }
        }
        if let Some(s) = self.append {
            a.push("--append".to_owned());
            a.push(s.to_owned());
        }
        a
    }

    fn ours(&self) -> Result<String, String> {
        let opts = MeasureOptions {
            vcpus: self.vcpus,
            vcpu_type: self.vcpu_type.parse().unwrap(),
            guest_features: self.guest_features,
            kernel: self.kernel.map(|p| std::fs::read(p).unwrap()),
            initrd: self.initrd.map(|p| std::fs::read(p).unwrap()),
            append: self.append.map(str::to_owned),
        };
        let ovmf = std::fs::read(self.ovmf).unwrap();
        measure_snp(&ovmf, &opts)
            .map(hex::encode)
            .map_err(|e| e.to_string())
    }

    /// Asserts both sides agree; returns whether they succeeded.
    fn check(&self, seed: u64) -> bool {
        let args = self.args();
        let theirs = run_tool(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let ours = self.ours();
        match (&theirs, &ours) {
            (Ok(t), Ok(o)) => {
                assert_eq!(
                    o,
                    t,
                    "digest differs for `{TOOL} {}` (seed {seed})",
                    args.join(" ")
                );
                true
            }
            (Err(_), Err(_)) => false,
            _ => panic!(
                "`{TOOL} {}` gave {theirs:?}, we gave {ours:?} (seed {seed})",
                args.join(" ")
            ),
        }
    }
}

struct Inputs {
    _dir: tempfile::TempDir,
    kernel: PathBuf,
    initrd: PathBuf,
    empty: PathBuf,
    seed: u64,
}

fn inputs() -> Inputs {
    let seed = seed();
    let mut state = seed | 1;
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    let initrd = dir.path().join("initrd.img");
    let empty = dir.path().join("empty");
    // Sizes vary with the seed, including non-multiples of the page size.
    let klen = 1 + (seed % 50_000) as usize;
    let ilen = (seed / 7 % 30_000) as usize;
    std::fs::write(&kernel, random_bytes(&mut state, klen)).unwrap();
    std::fs::write(&initrd, random_bytes(&mut state, ilen)).unwrap();
    std::fs::write(&empty, b"").unwrap();
    Inputs {
        _dir: dir,
        kernel,
        initrd,
        empty,
        seed,
    }
}

#[test]
fn vcpus_types_and_features_without_kernel() {
    let seed = 0;
    let debian = debian_ovmf();
    for ovmf in [amdsev(), ovmfx64(), debian] {
        for vcpus in [1, 2, 4, 8] {
            for vcpu_type in ["EPYC-v4", "EPYC-Milan", "EPYC-Genoa"] {
                for guest_features in [0x1, 0x21] {
                    let case = Case {
                        ovmf: &ovmf,
                        vcpus,
                        vcpu_type,
                        guest_features,
                        kernel: None,
                        initrd: None,
                        append: None,
                    };
                    assert!(case.check(seed), "{:?} should measure", case.args());
                }
            }
        }
    }
}

#[test]
fn every_vcpu_type() {
    for t in VcpuType::ALL {
        let ovmf = amdsev();
        let case = Case {
            ovmf: &ovmf,
            vcpus: 2,
            vcpu_type: t.name(),
            guest_features: 0x1,
            kernel: None,
            initrd: None,
            append: None,
        };
        assert!(case.check(0));
    }
}

#[test]
fn kernel_initrd_and_append() {
    let inp = inputs();
    let ovmf = amdsev();
    let appends = [
        None,
        Some("console=ttyS0 root=/dev/vda1 ro quiet"),
        Some(""),
        Some("init=/sbin/init märkte=ü"),
    ];
    let mut n = 0;
    for (vcpus, vcpu_type, guest_features) in [
        (1, "EPYC-v4", 0x1),
        (2, "EPYC-Milan", 0x21),
        (4, "EPYC-Genoa", 0x1),
        (8, "EPYC-v4", 0x21),
    ] {
        for initrd in [None, Some(inp.initrd.as_path()), Some(inp.empty.as_path())] {
            for append in appends {
                let case = Case {
                    ovmf: &ovmf,
                    vcpus,
                    vcpu_type,
                    guest_features,
                    kernel: Some(&inp.kernel),
                    initrd,
                    append,
                };
                assert!(case.check(inp.seed), "{:?} should measure", case.args());
                n += 1;
            }
        }
    }
    assert_eq!(n, 48);
    // An empty kernel, as `--kernel /dev/null` gives.
    let case = Case {
        ovmf: &ovmf,
        vcpus: 2,
        vcpu_type: "EPYC-Milan",
        guest_features: 0x21,
        kernel: Some(&inp.empty),
        initrd: None,
        append: Some("x"),
    };
    assert!(case.check(inp.seed));
}

#[test]
fn kernel_without_hashes_section_fails_on_both_sides() {
    let inp = inputs();
    for ovmf in [ovmfx64(), debian_ovmf()] {
        let case = Case {
            ovmf: &ovmf,
            vcpus: 2,
            vcpu_type: "EPYC-v4",
            guest_features: 0x1,
            kernel: Some(&inp.kernel),
            initrd: Some(&inp.initrd),
            append: Some("console=ttyS0"),
        };
        assert!(!case.check(inp.seed), "{:?} must fail", case.args());
        let theirs = run_tool(&case.args().iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            theirs
                .unwrap_err()
                .contains("OVMF metadata doesn't include SNP_KERNEL_HASHES section")
        );
        assert!(
            case.ours()
                .unwrap_err()
                .contains("OVMF metadata doesn't include SNP_KERNEL_HASHES section")
        );
    }
}

#[test]
fn ovmf_hash_mode() {
    for ovmf in [amdsev(), ovmfx64(), debian_ovmf()] {
        let theirs =
            run_tool(&["--mode", "snp:ovmf-hash", "--ovmf", ovmf.to_str().unwrap()]).unwrap();
        let ours = hex::encode(ovmf_hash(&std::fs::read(&ovmf).unwrap()).unwrap());
        assert_eq!(ours, theirs, "{}", ovmf.display());
    }
}
