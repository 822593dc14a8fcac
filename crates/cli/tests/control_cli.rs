//! The control plane through `cvm up` and the CLI: the VM model's refusals, placement
//! on SNP hosts, tenants kept apart on every route, the OpenAPI document against the
//! running server, restarts and kill -9, and two replicas on one PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `cvm up`, killed (SIGKILL) when dropped.
struct Up {
    child: Child,
    url: String,
    state: PathBuf,
    stdout: Vec<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cvm up --state state ...extra` and reads its banner up to the Ctrl-C line.
fn up(state: &Path, extra: &[&str]) -> Up {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args([
            "up",
            "--state",
            state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("cvm up ended: {lines:?}");
        }
        let done = line.starts_with("stop with Ctrl-C");
        lines.push(line.trim_end().to_string());
        if done {
            break;
        }
    }
    let url = lines[0]
        .strip_prefix("ready: ")
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_string();
    Up {
        child,
        url,
        state: state.to_path_buf(),
        stdout: lines,
    }
}

fn cvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(args)
        .output()
        .unwrap()
}

/// `cvm args... --state STATE --json`: exit code and JSON.
fn cli(up: &Up, args: &[&str]) -> (i32, Value) {
    let mut all: Vec<&str> = args.to_vec();
    let s = up.state.to_str().unwrap();
    all.extend(["--state", s, "--json"]);
    let o = cvm(&all);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "{args:?}: not JSON: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

/// A control-plane replica (`cvm control serve`) on loopback with its state in
/// `state`, on the database `database` (eastus offered), with `extra` arguments.
fn replica(state: &Path, database: &str, extra: &[&str]) -> common::Served {
    let mut args = vec![
        "control",
        "serve",
        "--state",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--regions",
        "eastus",
        "--database",
        database,
    ];
    args.extend_from_slice(extra);
    common::spawn(&args)
}

/// One HTTP call: status and JSON body (null when empty).
fn http(method: &str, url: &str, cred: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    common::call(method, url, cred, body)
}

/// A disk whose ESP holds Debian's signed shim (as BOOTX64.EFI), GRUB and kernel.
fn debian_disk(dir: &Path, name: &str) -> PathBuf {
    let f = common::esp::fixtures();
    common::esp::gpt_disk(
        dir,
        name,
        &[
            ("EFI/BOOT/BOOTX64.EFI", &f.join("shimx64.efi.signed")),
            ("EFI/BOOT/grubx64.efi", &f.join("grubx64.efi.signed")),
            ("vmlinuz", &f.join("vmlinuz")),
        ],
        Some(b"root"),
    )
}

fn create_request(size: &str) -> Value {
    json!({
        "vmSize": size,
        "image": "debian-12",
        "securityProfile": {"securityType": "ConfidentialVM"},
        "osDisk": {"securityEncryptionType": "DiskWithVMGuestState"}
    })
}

/// The operations of the checked-in document, every one reached by the test.
fn document_operations() -> Vec<String> {
    let doc: Value =
        serde_json::from_slice(&std::fs::read(root().join("openapi/control.json")).unwrap())
            .unwrap();
    api_contract::operations(&doc)
        .into_iter()
        .map(|(_, _, op)| op["operationId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_vm_is_validated_priced_and_placed_and_tenants_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let platform = up(
        &d.join("up"),
        &["--hosts", "2", "--regions", "eastus,westus,australiaeast"],
    );
    assert!(
        platform.stdout.iter().any(|l| l
            .contains("host-1, host-2 (host-N: emulated AMD SEV-SNP secure processors in eastus)")),
        "{:?}",
        platform.stdout
    );
    let u = |p: &str| format!("{}{p}", platform.url);
    let tenant = std::fs::read_to_string(d.join("up/tenant.token")).unwrap();
    let operator = std::fs::read_to_string(d.join("up/control/operator.token")).unwrap();
    let mut records: Vec<Value> = Vec::new();
    let mut rec = |op: &str, r: (u16, Value)| -> (u16, Value) {
        records.push(json!({"operation": op, "status": r.0, "body": r.1}));
        r
    };

    // The catalog.
    let (st, sizes) = rec("list_sizes", http("GET", &u("/sizes"), Some(&tenant), None));
    assert_eq!(st, 200);
    assert_eq!(sizes["value"].as_array().unwrap().len(), 36);
    let (_, regions) = rec(
        "list_regions",
        http("GET", &u("/regions"), Some(&tenant), None),
    );
    let snp: Vec<_> = regions["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["snpAvailable"] == true)
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(snp, [json!("eastus")]);
    let (_, price) = rec(
        "quote_price",
        http(
            "POST",
            &u("/prices"),
            Some(&tenant),
            Some(
                &json!({"vmSize": "Standard_DC2as_v5", "securityEncryptionType": "DiskWithVMGuestState"}),
            ),
        ),
    );
    assert_eq!(
        price["computePerHour"],
        json!(0.086),
        "the captured eastus price: {price}"
    );
    assert!(price["encryptedOsDiskPerMonth"].as_f64().unwrap() > 0.0);

    // No artifact yet: a clear refusal, nothing created.
    let (st, e) = rec(
        "create_vm",
        http(
            "PUT",
            &u("/vms/a"),
            Some(&tenant),
            Some(&create_request("Standard_DC2as_v5")),
        ),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("image_not_available")),
        "{e}"
    );
    // A disk whose first stage is GRUB (signed by Debian, not by a CA in the linux
    // template's db) is refused at import; shim's passes.
    let f = common::esp::fixtures();
    let grub_first = common::esp::gpt_disk(
        d,
        "grub-first",
        &[("EFI/BOOT/BOOTX64.EFI", &f.join("grubx64.efi.signed"))],
        None,
    );
    let (st, e) = http(
        "PUT",
        &u("/images/debian-12/artifact"),
        Some(&operator),
        Some(&json!({"path": grub_first.to_str().unwrap()})),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("invalid_artifact")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Secure Boot"),
        "{e}"
    );
    // A FIFO is refused without blocking on it, and so is a relative path.
    let fifo = d.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for path in [fifo.to_str().unwrap(), "debian.img"] {
        let (st, e) = http(
            "PUT",
            &u("/images/debian-12/artifact"),
            Some(&operator),
            Some(&json!({"path": path})),
        );
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (400, Some("invalid_artifact")),
            "{path}: {e}"
        );
    }
    let disk = debian_disk(d, "debian");
    let (code, img) = cli(
        &platform,
        &["image", "import", "debian-12", disk.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{img}");
    assert_eq!(
        img["artifact"]["bytes"],
        json!(std::fs::metadata(&disk).unwrap().len())
    );
    rec(
        "import_image",
        http(
            "PUT",
            &u("/images/debian-12/artifact"),
            Some(&operator),
            Some(&json!({"path": disk.to_str().unwrap()})),
        ),
    );
    rec(
        "list_images",
        http("GET", &u("/images"), Some(&tenant), None),
    );

    // Create: placed on an SNP host of the default region, priced, events recorded.
    let (st, vm) = rec(
        "create_vm",
        http(
            "PUT",
            &u("/vms/a"),
            Some(&tenant),
            Some(&create_request("Standard_DC2as_v5")),
        ),
    );
    assert_eq!(st, 200, "{vm}");
    // Its OS disk is pre-encrypted in the background: `creating`, then `stopped`.
    assert_eq!(vm["state"], "creating", "{vm}");
    let vm = wait_vm(&platform.url, &tenant, "a", |v| v["state"] != "creating");
    assert_eq!(vm["state"], "stopped", "{vm}");
    assert_eq!(vm["location"], "eastus");
    assert!(vm["host"].as_str().unwrap().starts_with("host-"));
    assert_eq!(vm["security"]["secureBootEnabled"], true);
    assert_eq!(vm["security"]["keyManagement"], "platform");
    assert_eq!(vm["security"]["secureBootTemplate"], "linux");
    // The same PUT again is the same VM; another body under the name is a conflict.
    let (st, again) = http(
        "PUT",
        &u("/vms/a"),
        Some(&tenant),
        Some(&create_request("Standard_DC2as_v5")),
    );
    assert_eq!((st, &again["id"]), (200, &vm["id"]));
    let (st, e) = http(
        "PUT",
        &u("/vms/a"),
        Some(&tenant),
        Some(&create_request("Standard_DC4as_v5")),
    );
    assert_eq!((st, e["error"]["code"].as_str()), (409, Some("conflict")));
    let (_, events) = rec(
        "vm_events",
        http("GET", &u("/vms/a/events"), Some(&tenant), None),
    );
    let steps: Vec<(&str, &str)> = events["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["step"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("validate", "ok"),
            ("place", "ok"),
            ("disk_pre_encryption", "ok"),
        ]
    );
    rec("get_vm", http("GET", &u("/vms/a"), Some(&tenant), None));
    // Start, attest, stop, restart: each route answers the VM (its boot is tested
    // step by step in `a_vm_boots_only_after_attestation...`).
    let (st, started) = rec(
        "start_vm",
        http("POST", &u("/vms/a/start"), Some(&tenant), None),
    );
    assert_eq!(
        (st, started["state"].as_str()),
        (200, Some("running")),
        "{started}"
    );
    let (st, token) = rec(
        "attest_vm",
        http(
            "POST",
            &u("/vms/a/attest"),
            Some(&tenant),
            Some(&json!({"nonce": "0a0b"})),
        ),
    );
    assert_eq!(
        (st, token["nonce"].as_str()),
        (200, Some("0a0b")),
        "{token}"
    );
    let (st, stopped) = rec(
        "stop_vm",
        http("POST", &u("/vms/a/stop"), Some(&tenant), None),
    );
    assert_eq!(
        (st, stopped["state"].as_str()),
        (200, Some("stopped")),
        "{stopped}"
    );
    let (st, e) = http("POST", &u("/vms/a/attest"), Some(&tenant), Some(&json!({})));
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{e}"
    );
    let (st, again) = rec(
        "restart_vm",
        http("POST", &u("/vms/a/restart"), Some(&tenant), None),
    );
    assert_eq!(
        (st, again["state"].as_str()),
        (200, Some("running")),
        "{again}"
    );
    // Stopped again, so the restart at the end of this test finds it as it was.
    let (st, _) = http("POST", &u("/vms/a/stop"), Some(&tenant), None);
    assert_eq!(st, 200);
    rec("list_vms", http("GET", &u("/vms"), Some(&tenant), None));

    // A second tenant: every tenant route with its credential sees nothing of the
    // first tenant's, and its own VM of the same name is its own.
    let (code, other) = cli(&platform, &["tenant", "create", "other"]);
    assert_eq!(code, 0);
    let other = other["credential"].as_str().unwrap().to_string();
    rec(
        "create_tenant",
        http("PUT", &u("/tenants/third"), Some(&operator), None),
    );
    // A tenant's vCPU quota: two DC2 fit in 4 vCPUs, the third is refused.
    let (_, small) = cli(
        &platform,
        &["tenant", "create", "small", "--max-vcpus", "4"],
    );
    let small = small["credential"].as_str().unwrap().to_string();
    for n in ["s1", "s2"] {
        let (st, _) = http(
            "PUT",
            &u(&format!("/vms/{n}")),
            Some(&small),
            Some(&create_request("Standard_DC2as_v5")),
        );
        assert_eq!(st, 200);
    }
    let (st, e) = rec(
        "create_vm",
        http(
            "PUT",
            &u("/vms/s3"),
            Some(&small),
            Some(&create_request("Standard_DC2as_v5")),
        ),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (409, Some("quota_exceeded")),
        "{e}"
    );
    assert_eq!(http("DELETE", &u("/vms/s1"), Some(&small), None).0, 204);
    assert_eq!(http("DELETE", &u("/vms/s2"), Some(&small), None).0, 204);
    for (op, method, path) in [
        ("get_vm", "GET", "/vms/a"),
        ("vm_events", "GET", "/vms/a/events"),
        ("vm_console", "GET", "/vms/a/console"),
        ("delete_vm", "DELETE", "/vms/a"),
        ("capture_vm", "POST", "/vms/a/capture"),
        ("migrate_vm", "POST", "/vms/a/migrate"),
        ("start_vm", "POST", "/vms/a/start"),
        ("stop_vm", "POST", "/vms/a/stop"),
        ("restart_vm", "POST", "/vms/a/restart"),
        ("attest_vm", "POST", "/vms/a/attest"),
    ] {
        let (st, e) = rec(op, http(method, &u(path), Some(&other), None));
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{op}: {e}"
        );
    }
    let (_, list) = http("GET", &u("/vms"), Some(&other), None);
    assert_eq!(list["value"], json!([]));
    // An emulated host runs no guest: its VMs have no console.
    let (st, e) = rec(
        "vm_console",
        http("GET", &u("/vms/a/console"), Some(&tenant), None),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (409, Some("no_console")),
        "{e}"
    );
    let (st, theirs) = http(
        "PUT",
        &u("/vms/a"),
        Some(&other),
        Some(&create_request("Standard_DC4as_v5")),
    );
    assert_eq!(st, 200, "{theirs}");
    assert_ne!(theirs["id"], vm["id"]);
    let (_, mine) = http("GET", &u("/vms/a"), Some(&tenant), None);
    assert_eq!(
        mine["vmSize"], "Standard_DC2as_v5",
        "the first tenant's VM is unchanged"
    );
    // Operator routes refuse tenant credentials; VM routes refuse the operator's.
    for (op, method, path, body) in [
        ("list_hosts", "GET", "/hosts", None),
        (
            "register_host",
            "PUT",
            "/hosts/x",
            Some(
                json!({"region": "eastus", "vCpus": 8, "memoryGiB": 8, "maxVms": 1, "snpEnabled": true, "backend": "emulated"}),
            ),
        ),
        ("create_tenant", "PUT", "/tenants/x", None),
        (
            "register_host_agent",
            "PUT",
            "/hosts/host-1/agent",
            Some(json!({"url": "http://127.0.0.1:9", "credential": "c".repeat(64)})),
        ),
        (
            "import_image",
            "PUT",
            "/images/debian-12/artifact",
            Some(json!({"path": "/etc/passwd"})),
        ),
    ] {
        let (st, e) = rec(op, http(method, &u(path), Some(&tenant), body.as_ref()));
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{op}"
        );
    }
    let (st, _) = http(
        "PUT",
        &u("/vms/op"),
        Some(&operator),
        Some(&create_request("Standard_DC2as_v5")),
    );
    assert_eq!(st, 403);
    // Roles: a reader reads and cannot create or make credentials.
    let (st, reader) = rec(
        "create_credential",
        http(
            "POST",
            &u("/credentials"),
            Some(&tenant),
            Some(&json!({"role": "reader"})),
        ),
    );
    assert_eq!(st, 200);
    let reader = reader["credential"].as_str().unwrap().to_string();
    // A contributor creates and deletes VMs, and cannot make credentials.
    let (st, contributor) = http(
        "POST",
        &u("/credentials"),
        Some(&tenant),
        Some(&json!({"role": "contributor"})),
    );
    assert_eq!(
        (st, contributor["role"].as_str()),
        (200, Some("contributor")),
        "{contributor}"
    );
    let contributor = contributor["credential"].as_str().unwrap().to_string();
    assert_eq!(
        http(
            "PUT",
            &u("/vms/c1"),
            Some(&contributor),
            Some(&create_request("Standard_DC2as_v5"))
        )
        .0,
        200
    );
    assert_eq!(
        http("DELETE", &u("/vms/c1"), Some(&contributor), None).0,
        204
    );
    let (st, e) = http(
        "POST",
        &u("/credentials"),
        Some(&contributor),
        Some(&json!({"role": "reader"})),
    );
    assert_eq!(
        (st, e["error"]["message"].as_str()),
        (403, Some("the contributor role may not manage credentials"))
    );
    assert_eq!(
        http(
            "POST",
            &u("/credentials"),
            Some(&tenant),
            Some(&json!({"role": "operator"}))
        )
        .0,
        400
    );
    assert_eq!(http("GET", &u("/vms/a"), Some(&reader), None).0, 200);
    assert_eq!(
        http(
            "PUT",
            &u("/vms/r"),
            Some(&reader),
            Some(&create_request("Standard_DC2as_v5"))
        )
        .0,
        403
    );
    assert_eq!(
        http(
            "POST",
            &u("/credentials"),
            Some(&reader),
            Some(&json!({"role": "administrator"}))
        )
        .0,
        403
    );
    // Without a credential, every operation of the document is routed and refused
    // with 401 (not 404 or 405).
    let doc: Value =
        serde_json::from_slice(&std::fs::read(root().join("openapi/control.json")).unwrap())
            .unwrap();
    for (path, method, _) in api_contract::operations(&doc) {
        let p = path.replace("{name}", "n").replace("{id}", "debian-12");
        let body = (method != "get" && method != "delete").then(|| json!({}));
        let (st, _) = http(&method.to_uppercase(), &u(&p), None, body.as_ref());
        assert_eq!(st, 401, "{method} {path}");
    }

    // Unsupported features, each refused by name through the CLI's az-style flags.
    let s = platform.state.to_str().unwrap().to_string();
    for (flags, feature) in [
        (vec!["--accelerated-networking"], "accelerated networking"),
        (vec!["--ephemeral-os-disk"], "ephemeral OS disks"),
        (vec!["--host-group", "g"], "dedicated hosts"),
        (vec!["--vmss", "s"], "virtual machine scale sets"),
        (vec!["--backup-policy", "daily"], "Azure Backup"),
        (vec!["--site-recovery"], "Azure Site Recovery"),
        (vec!["--batch-pool", "p"], "Azure Batch pools"),
        (vec!["--shared-disk"], "shared disks"),
        (vec!["--ultra-ssd-enabled"], "ultra disks"),
    ] {
        let mut args = vec![
            "vm",
            "create",
            "u",
            "--state",
            &s,
            "--size",
            "Standard_DC2as_v5",
            "--image",
            "debian-12",
        ];
        args.extend(flags.iter());
        let o = cvm(&args);
        assert_eq!(o.status.code(), Some(1), "{feature}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("unsupported_feature") && err.contains(feature),
            "{feature}: {err}"
        );
    }
    // Each refused with exit 1 and its code (and, for unsupported features, the
    // feature's name).
    let gallery =
        "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/x/images/y";
    let create = |size: &'static str, image: &'static str, more: &[&'static str]| {
        let mut a = vec!["vm", "create", "u", "--size", size, "--image", image];
        a.extend(more);
        a
    };
    for (args, code, feature) in [
        (
            create("Standard_DC2as_v5", gallery, &[]),
            "unsupported_feature",
            Some("Azure Compute Gallery images"),
        ),
        (
            vec!["vm", "capture", "a"],
            "unsupported_feature",
            Some("image capture"),
        ),
        (
            vec!["vm", "migrate", "a"],
            "unsupported_feature",
            Some("live migration"),
        ),
        (
            create("Standard_EC128es_v5", "debian-12", &[]),
            "unknown_size",
            None,
        ),
        (
            create("Standard_DC2as_v5", "debian-12", &["--region", "mars"]),
            "unknown_region",
            None,
        ),
        (
            create("Standard_DC2as_v5", "windows-server-2022", &[]),
            "image_not_available",
            None,
        ),
    ] {
        let (exit, e) = cli(&platform, &args);
        assert_eq!(
            (exit, e["error"]["code"].as_str()),
            (1, Some(code)),
            "{args:?}: {e}"
        );
        assert_eq!(
            e["error"]["detail"]["feature"].as_str(),
            feature,
            "{args:?}"
        );
    }
    // A region whose only host has SNP disabled cannot take a confidential VM.
    let (code, _) = cli(
        &platform,
        &[
            "host",
            "add",
            "nosnp",
            "--region",
            "australiaeast",
            "--snp-enabled",
            "false",
        ],
    );
    assert_eq!(code, 0);
    let (code, e) = cli(
        &platform,
        &[
            "vm",
            "create",
            "u",
            "--size",
            "Standard_DC2as_v5",
            "--image",
            "debian-12",
            "--region",
            "australiaeast",
        ],
    );
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (1, Some("region_without_snp")),
        "{e}"
    );
    // Capacity: each 112-vCPU host holds one 96-vCPU VM beside the small ones; the
    // third is refused as Azure's AllocationFailed, and an isolated size finds no
    // empty host.
    for n in ["big1", "big2"] {
        let (code, v) = cli(
            &platform,
            &[
                "vm",
                "create",
                n,
                "--size",
                "Standard_DC96as_v5",
                "--image",
                "debian-12",
            ],
        );
        assert_eq!(code, 0, "{v}");
    }
    let (code, e) = cli(
        &platform,
        &[
            "vm",
            "create",
            "big3",
            "--size",
            "Standard_DC96as_v5",
            "--image",
            "debian-12",
        ],
    );
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (1, Some("allocation_failed"))
    );
    let (code, e) = cli(
        &platform,
        &[
            "vm",
            "create",
            "iso",
            "--size",
            "Standard_EC96iads_v5",
            "--image",
            "debian-12",
        ],
    );
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (1, Some("allocation_failed"))
    );
    let (_, hosts) = rec(
        "list_hosts",
        http("GET", &u("/hosts"), Some(&operator), None),
    );
    let used: i64 = hosts["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["usedVCpus"].as_i64().unwrap())
        .sum();
    // The first tenant's DC2 and two DC96, and the other tenant's DC4.
    assert_eq!(used, 2 + 96 + 96 + 4, "{hosts}");
    rec(
        "register_host",
        http(
            "PUT",
            &u("/hosts/extra"),
            Some(&operator),
            Some(
                &json!({"region": "westus", "vCpus": 112, "memoryGiB": 768, "maxVms": 32, "snpEnabled": true, "backend": "emulated"}),
            ),
        ),
    );
    // A host agent registers where it listens: loopback HTTP or HTTPS, a credential
    // of 32 to 512 characters, a known host.
    let cred = "c".repeat(64);
    for (path, body, status) in [
        (
            "/hosts/nowhere/agent",
            json!({"url": "http://127.0.0.1:9", "credential": cred}),
            404,
        ),
        (
            "/hosts/extra/agent",
            json!({"url": "http://10.0.0.1:9", "credential": cred}),
            400,
        ),
        (
            "/hosts/extra/agent",
            json!({"url": "ftp://127.0.0.1:9", "credential": cred}),
            400,
        ),
        (
            "/hosts/extra/agent",
            json!({"url": "http://127.0.0.1:9@10.0.0.5", "credential": cred}),
            400,
        ),
        (
            "/hosts/extra/agent",
            json!({"url": "http://localhost:9@evil.example", "credential": cred}),
            400,
        ),
        (
            "/hosts/extra/agent",
            json!({"url": "http://127.0.0.1:9", "credential": "short"}),
            400,
        ),
        (
            "/hosts/extra/agent",
            json!({"url": "http://127.0.0.1:9", "credential": cred, "x": 1}),
            400,
        ),
    ] {
        let (st, e) = rec(
            "register_host_agent",
            http("PUT", &u(path), Some(&operator), Some(&body)),
        );
        assert_eq!(st, status, "{path} {body}: {e}");
    }
    let (st, h) = rec(
        "register_host_agent",
        http(
            "PUT",
            &u("/hosts/extra/agent"),
            Some(&operator),
            Some(&json!({"url": "https://agent.example:8443/", "credential": cred})),
        ),
    );
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["agent"], "https://agent.example:8443", "{h}");
    assert!(!h.to_string().contains(&cred), "{h}");
    let (code, iso) = cli(
        &platform,
        &[
            "vm",
            "create",
            "iso",
            "--size",
            "Standard_EC96iads_v5",
            "--image",
            "debian-12",
            "--region",
            "westus",
        ],
    );
    assert_eq!((code, iso["host"].as_str()), (0, Some("extra")), "{iso}");
    // Delete gives capacity back.
    rec(
        "delete_vm",
        http("DELETE", &u("/vms/big1"), Some(&tenant), None),
    );
    let (code, _) = cli(
        &platform,
        &[
            "vm",
            "create",
            "big3",
            "--size",
            "Standard_DC96as_v5",
            "--image",
            "debian-12",
        ],
    );
    assert_eq!(code, 0);

    // Every operation was recorded, and every record matches the document.
    let recorded: std::collections::BTreeSet<String> = records
        .iter()
        .map(|r| r["operation"].as_str().unwrap().to_string())
        .collect();
    for op in document_operations() {
        assert!(recorded.contains(&op), "{op} was not exercised");
    }
    let (code, out) =
        api_contract::validate_responses(&root(), &root().join("openapi/control.json"), &records)
            .unwrap();
    assert_eq!(code, Some(0), "{out}");
    let mut broken = records.clone();
    broken[0]["body"]["value"][0]["vCpus"] = json!("two");
    let (code, _) =
        api_contract::validate_responses(&root(), &root().join("openapi/control.json"), &broken)
            .unwrap();
    assert_eq!(code, Some(1), "a damaged record fails the validator");

    // A restart on the same state finds everything as it was.
    let before = cli(&platform, &["vm", "list"]).1;
    let hosts_before = cli(&platform, &["host", "list"]).1;
    let state = platform.state.clone();
    drop(platform);
    let platform = up(
        &state,
        &["--hosts", "2", "--regions", "eastus,westus,australiaeast"],
    );
    assert_eq!(cli(&platform, &["vm", "list"]).1, before);
    assert_eq!(cli(&platform, &["host", "list"]).1, hosts_before);
}

/// A pseudo-random number from the clock (the tests need spread, not secrecy).
fn jitter(max: u64) -> u64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (n.wrapping_mul(6364136223846793005) >> 17) % max.max(1)
}

/// Every VM is on one host, every host's counters are the sum of its VMs' sizes (all
/// DC2: 2 vCPUs, 8 GiB) and within what it offers. Returns the VMs' names.
fn consistent(url: &str, tenant: &str, operator: &str) -> Vec<String> {
    let (_, vms) = http("GET", &format!("{url}/vms"), Some(tenant), None);
    let (_, hosts) = http("GET", &format!("{url}/hosts"), Some(operator), None);
    let vms = vms["value"].as_array().unwrap().clone();
    for h in hosts["value"].as_array().unwrap() {
        let name = h["name"].as_str().unwrap();
        let mine = vms.iter().filter(|v| v["host"] == name).count() as i64;
        assert_eq!(h["vms"].as_i64().unwrap(), mine, "{h}");
        assert_eq!(h["usedVCpus"].as_i64().unwrap(), 2 * mine, "{h}");
        assert_eq!(h["usedMemoryGiB"].as_i64().unwrap(), 8 * mine, "{h}");
        assert!(
            h["usedVCpus"].as_i64() <= h["vCpus"].as_i64()
                && h["vms"].as_i64() <= h["maxVms"].as_i64()
        );
    }
    assert!(vms.iter().all(|v| v["host"].is_string()));
    vms.iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until no VM of `tenant` is `creating` or `deleting` (a restart finishes
/// what a kill interrupted), then checks that every VM is `stopped` (their
/// pre-encryption done, none failed). Returns how many were `creating` at first.
fn settled(url: &str, tenant: &str) -> usize {
    let mut first = None;
    for _ in 0..600 {
        let (_, vms) = http("GET", &format!("{url}/vms"), Some(tenant), None);
        let vms = vms["value"].as_array().unwrap().clone();
        let creating = vms.iter().filter(|v| v["state"] == "creating").count();
        let first = *first.get_or_insert(creating);
        if creating == 0 && vms.iter().all(|v| v["state"] != "deleting") {
            for v in &vms {
                assert_eq!(v["state"], "stopped", "{v}");
            }
            return first;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("VMs stay creating after a restart");
}

/// kill -9 of the platform at random moments while four clients create and delete
/// VMs (60 trials), each create pre-encrypting its VM's OS disk: after each restart
/// every create interrupted during its pre-encryption is finished, every VM whose
/// create was answered is there,
/// every deleted one is gone, none is half-created, none is on two hosts, and every
/// host's counters equal what its VMs hold.
#[test]
fn kill_9_at_random_moments_loses_no_vm_and_overfills_no_host() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("up");
    let disk = debian_disk(d, "debian");
    let mut answered_creates = std::collections::BTreeSet::new();
    let mut answered_deletes = std::collections::BTreeSet::new();
    // VMs found `creating` after a restart: creates killed in their pre-encryption.
    let mut caught = 0;
    for trial in 0..60 {
        let platform = up(&state, &["--hosts", "2", "--regions", "eastus"]);
        let url = platform.url.clone();
        let tenant = std::fs::read_to_string(state.join("tenant.token")).unwrap();
        let operator = std::fs::read_to_string(state.join("control/operator.token")).unwrap();
        if trial == 0 {
            let (st, e) = http(
                "PUT",
                &format!("{url}/images/debian-12/artifact"),
                Some(&operator),
                Some(&json!({"path": disk.to_str().unwrap()})),
            );
            assert_eq!(st, 200, "{e}");
        }
        // A create killed during its disk's pre-encryption is finished after the
        // restart (in the background): every VM ends `stopped`, none `failed`.
        caught += settled(&url, &tenant);
        // What the previous trials' answers promised holds after the restart.
        let names: std::collections::BTreeSet<String> =
            consistent(&url, &tenant, &operator).into_iter().collect();
        for n in &answered_creates {
            assert!(
                names.contains(n) || answered_deletes.contains(n),
                "{n} was created and is lost"
            );
        }
        for n in &answered_deletes {
            assert!(!names.contains(n), "{n} was deleted and is back");
        }
        // Keep the population small, so that the hosts (64 VMs) never fill up.
        for n in names.iter().skip(16) {
            let (st, _) = http("DELETE", &format!("{url}/vms/{n}"), Some(&tenant), None);
            assert_eq!(st, 204);
            answered_deletes.insert(n.clone());
        }
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (url, tenant, answered) = (url.clone(), tenant.clone(), answered.clone());
                std::thread::spawn(move || {
                    let mut created = Vec::new();
                    let mut deleted = Vec::new();
                    for i in 0..40 {
                        let name = format!("t{trial}-c{c}-{i}");
                        let agent: ureq::Agent = ureq::Agent::config_builder()
                            .http_status_as_error(false)
                            .build()
                            .into();
                        let r = agent
                            .put(&format!("{url}/vms/{name}"))
                            .header("Authorization", &format!("Bearer {tenant}"))
                            .header("Content-Type", "application/json")
                            .send(create_request("Standard_DC2as_v5").to_string().as_bytes());
                        match r {
                            Ok(r) if r.status() == 200 => {
                                created.push(name.clone());
                                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                        if i % 3 == 0 && created.len() > 1 {
                            let victim = created.remove(0);
                            match agent
                                .delete(&format!("{url}/vms/{victim}"))
                                .header("Authorization", &format!("Bearer {tenant}"))
                                .call()
                            {
                                Ok(r) if r.status() == 204 => deleted.push(victim),
                                Ok(_) => created.insert(0, victim),
                                Err(_) => break,
                            }
                        }
                    }
                    (created, deleted)
                })
            })
            .collect();
        // The kill comes after 1 to 5 answered creates (or 5 s), then up to 100 ms
        // later: at a random point of a create, a delete or between them.
        let wanted = 1 + (trial % 5);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while answered.load(std::sync::atomic::Ordering::SeqCst) < wanted
            && std::time::Instant::now() < until
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(jitter(100)));
        drop(platform); // SIGKILL
        for c in clients {
            let (created, deleted) = c.join().unwrap();
            answered_creates.extend(created);
            answered_deletes.extend(deleted);
        }
    }
    let platform = up(&state, &["--hosts", "2", "--regions", "eastus"]);
    let tenant = std::fs::read_to_string(state.join("tenant.token")).unwrap();
    let operator = std::fs::read_to_string(state.join("control/operator.token")).unwrap();
    caught += settled(&platform.url, &tenant);
    assert!(caught > 0, "no kill came during a pre-encryption");
    let names: std::collections::BTreeSet<String> = consistent(&platform.url, &tenant, &operator)
        .into_iter()
        .collect();
    for n in &answered_creates {
        assert!(
            names.contains(n) || answered_deletes.contains(n),
            "{n} lost"
        );
    }
    assert!(
        answered_creates.len() >= 60,
        "the clients created VMs ({})",
        answered_creates.len()
    );
    assert!(!answered_deletes.is_empty());
}

/// Two control-plane replicas on one PostgreSQL database: 500 concurrent creates,
/// half through each, against hosts with room for 40 VMs: exactly 40 are placed,
/// no host is over-filled, and each replica serves what the other created.
#[test]
fn two_replicas_on_postgres_place_500_concurrent_creates_without_overfilling() {
    let Some(pg) = sqldb::scratch::postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = replica(&d.join("a"), &pg.url, &[]);
    let b = replica(&d.join("b"), &pg.url, &[]);
    // One operator credential for both: the first replica made it.
    let operator = std::fs::read_to_string(d.join("a/operator.token")).unwrap();
    assert!(!d.join("b/operator.token").exists());
    let (st, t) = http(
        "PUT",
        &format!("{}/tenants/fleet", b.url),
        Some(&operator),
        None,
    );
    assert_eq!(st, 200, "{t}");
    let tenant = t["credential"].as_str().unwrap().to_string();
    // Nearly full hosts: room for 16 + 24 DC2 VMs (vCPUs on one, the VM cap on the
    // other), one host without SNP.
    for (name, vcpus, max, snp) in [
        ("p1", 32, 32, true),
        ("p2", 112, 24, true),
        ("p3", 112, 32, false),
    ] {
        let (st, h) = http(
            "PUT",
            &format!("{}/hosts/{name}", a.url),
            Some(&operator),
            Some(
                &json!({"region": "eastus", "vCpus": vcpus, "memoryGiB": 768, "maxVms": max, "snpEnabled": snp, "backend": "emulated"}),
            ),
        );
        assert_eq!(st, 200, "{h}");
    }
    let disk = debian_disk(d, "debian");
    let (st, e) = http(
        "PUT",
        &format!("{}/images/debian-12/artifact", b.url),
        Some(&operator),
        Some(&json!({"path": disk.to_str().unwrap()})),
    );
    assert_eq!(st, 200, "{e}");
    let urls = [a.url.clone(), b.url.clone()];
    let threads: Vec<_> = (0..20)
        .map(|t| {
            let url = urls[t % 2].clone();
            let tenant = tenant.clone();
            std::thread::spawn(move || {
                let mut placed = 0;
                let mut full = 0;
                for i in 0..25 {
                    let (st, body) = http(
                        "PUT",
                        &format!("{url}/vms/v{t}-{i}"),
                        Some(&tenant),
                        Some(&create_request("Standard_DC2as_v5")),
                    );
                    match (st, body["error"]["code"].as_str()) {
                        (200, _) => placed += 1,
                        (409, Some("allocation_failed")) => full += 1,
                        other => panic!("{other:?}: {body}"),
                    }
                }
                (placed, full)
            })
        })
        .collect();
    let (placed, full) = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(p, f), (a, b)| (p + a, f + b));
    assert_eq!((placed, full), (40, 460));
    let names = consistent(&a.url, &tenant, &operator);
    assert_eq!(names.len(), 40);
    assert_eq!(
        consistent(&b.url, &tenant, &operator),
        names,
        "both replicas see the same VMs"
    );
    let (_, hosts) = http("GET", &format!("{}/hosts", b.url), Some(&operator), None);
    let by_name = |n: &str| {
        hosts["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("p1")["vms"], 16);
    assert_eq!(by_name("p2")["vms"], 24);
    assert_eq!(by_name("p3")["vms"], 0);
}

/// `cvm control serve` over HTTPS with a private CA (made by Python `cryptography`),
/// reached by the client with `--ca`; without TLS it refuses to listen beyond
/// loopback, and so does `cvm up`.
#[test]
fn the_control_plane_serves_https_and_refuses_plain_http_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let st = Command::new("python3")
        .arg(root().join("tests/oracles/make_tls_cert.py"))
        .arg(d)
        .status()
        .unwrap();
    assert!(st.success());
    let s = common::spawn(&[
        "control",
        "serve",
        "--state",
        d.join("c").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--regions",
        "eastus",
        "--tls-cert",
        d.join("cert.pem").to_str().unwrap(),
        "--tls-key",
        d.join("key.pem").to_str().unwrap(),
    ]);
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let op = d.join("c/operator.token");
    let list = |ca: Option<&Path>| {
        let mut args = vec![
            "region",
            "list",
            "--json",
            "--url",
            &s.url,
            "--credential-file",
            op.to_str().unwrap(),
        ];
        let ca = ca.map(|c| c.to_str().unwrap().to_string());
        if let Some(c) = &ca {
            args.extend(["--ca", c.as_str()]);
        }
        cvm(&args)
    };
    let o = list(Some(&d.join("ca.pem")));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["value"][0]["name"], "eastus");
    // Without the private CA the server's certificate is not trusted.
    assert_eq!(list(None).status.code(), Some(2));
    for args in [
        vec![
            "control",
            "serve",
            "--state",
            d.join("x").to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ],
        vec![
            "up",
            "--state",
            d.join("y").to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ],
    ] {
        let o = cvm(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("beyond loopback"),
            "{args:?}"
        );
    }
}

/// Polls the VM until `pred` holds on it (at most 60 s).
fn wait_vm(url: &str, cred: &str, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let (_, vm) = http("GET", &format!("{url}/vms/{name}"), Some(cred), None);
        if pred(&vm) {
            return vm;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{name} never reached the awaited state");
}

/// The steps of the VM's events from `from` on, as (step, outcome).
fn steps_since(up: &Up, name: &str, from: usize) -> Vec<(String, String)> {
    let (_, e) = cli(up, &["vm", "events", name]);
    e["value"].as_array().unwrap()[from..]
        .iter()
        .map(|e| {
            (
                e["step"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The attested boot end to end on `cvm up`'s emulated hosts: a VM starts only after
/// its evidence passed the attestation service and the key vault released its VMGS
/// key to that token; its token checks with PyJWT against the service's JWKS and binds
/// the caller's nonce and the VM's HOST_DATA; a restart opens the same VMGS. Then each
/// failure ends `failed` with the reason and nothing left running: an attestation
/// policy that refuses emulated platforms, another VM's VMGS, a TCB below the policy's
/// minimum, a host launching with a debug guest policy, a tampered GRUB under Secure
/// Boot, a host whose SEV-SNP is disabled. After kill -9 of `cvm up`, the VM that was
/// running boots again.
#[test]
fn a_vm_boots_only_after_attestation_and_its_vmgs_opens_only_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("up");
    let platform = up(&state, &["--hosts", "1"]);
    let url = platform.url.clone();
    let tenant = std::fs::read_to_string(state.join("tenant.token")).unwrap();
    let attest_url = attestation_url(&platform);
    let disk = debian_disk(d, "debian");
    let (code, img) = cli(
        &platform,
        &["image", "import", "debian-12", disk.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{img}");
    let create = |name: &str, extra: &[&str]| {
        let mut a = vec![
            "vm",
            "create",
            name,
            "--size",
            "Standard_DC2as_v5",
            "--image",
            "debian-12",
            "--disk-encryption",
            "none",
        ];
        a.extend_from_slice(extra);
        let (code, vm) = cli(&platform, &a);
        assert_eq!(code, 0, "{vm}");
        vm
    };
    let web = create("web", &[]);
    let id = web["id"].as_str().unwrap().to_string();

    // Start: every step of the attested boot, in order, each ok.
    let (code, vm) = cli(&platform, &["vm", "start", "web"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("running")), "{vm}");
    let steps = steps_since(&platform, "web", 2);
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "start",
            "launch",
            "attest",
            "vmgs_key_release",
            "vmgs",
            "vtpm",
            "secure_boot",
            "running"
        ]
    );
    assert!(steps.iter().all(|(_, o)| o == "ok"), "{steps:?}");
    let (_, events) = cli(&platform, &["vm", "events", "web"]);
    let detail = |step: &str| -> String {
        events["value"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e["step"] == step)
            .map(|e| e["detail"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(detail("vmgs").starts_with("created"), "{}", detail("vmgs"));
    assert!(
        detail("secure_boot").contains("loader")
            && detail("secure_boot").contains("second_stage")
            && detail("secure_boot").contains("kernel")
            && detail("secure_boot").contains("measured into PCR 4"),
        "{}",
        detail("secure_boot")
    );
    // The event log kept beside the VMGS: PCR 7's and PCR 4's events.
    let log: Value = serde_json::from_slice(
        &std::fs::read(state.join(format!("hosts/host-1/vms/{id}/boot-events.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(log["pcr4"].as_array().unwrap().len(), 6, "{log}");
    assert!(!log["pcr7"].as_array().unwrap().is_empty(), "{log}");
    // The VMGS is on the host, encrypted: the VM's HOST_DATA is nowhere in clear.
    let vmgs = state.join(format!("hosts/host-1/vms/{id}/guest.vmgs"));
    assert!(vmgs.exists());

    // A fresh token with our nonce, checked by PyJWT against the JWKS.
    let nonce = "00112233445566778899aabbccddeeff";
    let (code, t) = cli(&platform, &["vm", "attest", "web", "--nonce", nonce]);
    assert_eq!(code, 0, "{t}");
    let claims = pyjwt_claims(&attest_url, t["token"].as_str().unwrap());
    assert_eq!(claims["x-ms-runtime"]["nonce"], nonce, "{claims}");
    let host_data = hex::encode(host::host_data(&id));
    assert_eq!(claims["x-ms-sevsnpvm-hostdata"], host_data, "{claims}");
    assert_eq!(claims["x-ms-sevsnpvm-is-debuggable"], false);
    assert_eq!(claims["x-opencvm-emulated"], true);
    // A nonce that is not hex is refused.
    let (code, e) = cli(&platform, &["vm", "attest", "web", "--nonce", "xyz"]);
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (1, Some("bad_request")),
        "{e}"
    );

    // Stop and start again: the same VMGS opens (the released key is the VM's own).
    let (code, vm) = cli(&platform, &["vm", "stop", "web"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("stopped")), "{vm}");
    let (code, vm) = cli(&platform, &["vm", "start", "web"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("running")), "{vm}");
    let (_, events) = cli(&platform, &["vm", "events", "web"]);
    let last_vmgs = events["value"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["step"] == "vmgs")
        .unwrap()["detail"]
        .clone();
    assert!(
        last_vmgs.as_str().unwrap().starts_with("opened"),
        "{last_vmgs}"
    );

    // A VMGS copied from another VM: its key protector does not open with this VM's
    // released key; the VM ends failed with the reason, and nothing runs.
    let other = create("other", &[]);
    let (code, _) = cli(&platform, &["vm", "start", "other"]);
    assert_eq!(code, 0);
    cli(&platform, &["vm", "stop", "other"]);
    cli(&platform, &["vm", "stop", "web"]);
    let other_vmgs = state.join(format!(
        "hosts/host-1/vms/{}/guest.vmgs",
        other["id"].as_str().unwrap()
    ));
    let kept = d.join("other.vmgs");
    std::fs::copy(&other_vmgs, &kept).unwrap();
    std::fs::copy(&vmgs, &other_vmgs).unwrap();
    let (code, vm) = cli(&platform, &["vm", "start", "other"]);
    assert_eq!((code, vm["state"].as_str()), (1, Some("failed")), "{vm}");
    assert_eq!(vm["lastFailure"]["code"], "vmgs_unopenable", "{vm}");
    assert_eq!(vm["lastFailure"]["step"], "vmgs", "{vm}");
    let (_, e) = cli(&platform, &["vm", "attest", "other"]);
    assert_eq!(
        e["error"]["code"], "conflict",
        "a failed VM does not attest: {e}"
    );
    std::fs::copy(&kept, &other_vmgs).unwrap();
    let (code, vm) = cli(&platform, &["vm", "start", "other"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("running")), "{vm}");
    assert!(vm.get("lastFailure").is_none(), "{vm}");
    cli(&platform, &["vm", "stop", "other"]);

    // A VMGS that an earlier start created and that is now missing is not created
    // again (that would reset the vTPM and the UEFI variables): refused.
    let moved = d.join("web.vmgs");
    std::fs::rename(&vmgs, &moved).unwrap();
    let (code, vm) = cli(&platform, &["vm", "start", "web"]);
    assert_eq!((code, vm["state"].as_str()), (1, Some("failed")), "{vm}");
    assert_eq!(vm["lastFailure"]["code"], "vmgs_unopenable", "{vm}");
    let reason = vm["lastFailure"]["reason"].as_str().unwrap();
    assert!(reason.contains("missing"), "{reason}");
    assert!(!vmgs.exists(), "no new VMGS was made");
    std::fs::rename(&moved, &vmgs).unwrap();

    let admin = std::fs::read_to_string(state.join("attest/admin.token")).unwrap();
    // An attestation provider with `settings`, a VM `name` created under it, and its
    // start, which must end `failed`: the VM as the start answered it.
    let failed_under = |provider: &str, settings: Option<Value>, name: &str| -> Value {
        let (st, p) = http(
            "POST",
            &format!("{attest_url}/providers/{provider}"),
            Some(admin.trim()),
            settings.as_ref(),
        );
        assert_eq!(st, 200, "{p}");
        create(name, &["--attestation-policy", provider]);
        let (code, vm) = cli(&platform, &["vm", "start", name]);
        assert_eq!((code, vm["state"].as_str()), (1, Some("failed")), "{vm}");
        vm
    };
    // An attestation policy that refuses emulated platforms (a new provider's
    // default): the start ends at `attest`, naming the rule.
    let vm = failed_under("strict", None, "strict");
    assert_eq!(vm["lastFailure"]["code"], "attestation_denied", "{vm}");
    let reason = vm["lastFailure"]["reason"].as_str().unwrap();
    assert!(reason.contains("no-emulated-platform"), "{reason}");
    let steps = steps_since(&platform, "strict", 2);
    assert_eq!(
        steps
            .iter()
            .map(|(s, o)| format!("{s}:{o}"))
            .collect::<Vec<_>>(),
        ["start:ok", "launch:ok", "failed:failed"],
        "no key was asked for"
    );

    // A named provider that accepts the evidence: the platform vault trusts the
    // default provider's tokens only, so the VMGS key is refused, saying why.
    let vm = failed_under("lenient", Some(json!({"allow_emulated": true})), "lenient");
    assert_eq!(
        (
            vm["lastFailure"]["step"].as_str(),
            vm["lastFailure"]["code"].as_str()
        ),
        (Some("vmgs_key_release"), Some("key_release_denied")),
        "{vm}"
    );
    assert!(
        vm["lastFailure"]["reason"]
            .as_str()
            .unwrap()
            .contains("default provider only"),
        "{vm}"
    );

    // A TCB below the policy's minimum (a provider that allows emulated platforms but
    // wants SNP firmware SVN 25; the emulated Milan reports 24): refused, naming it.
    let vm = failed_under(
        "current",
        Some(json!({"allow_emulated": true, "min_tcb": {"snp": 25}})),
        "oldtcb",
    );
    assert_eq!(vm["lastFailure"]["code"], "attestation_denied", "{vm}");
    let reason = vm["lastFailure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("min-tcb") && reason.contains("24") && reason.contains("25"),
        "the reason names the rule with the actual and expected SVN: {reason}"
    );

    // A host whose launcher uses a debug guest policy: the report says debuggable,
    // the default policy refuses it, and the VMGS key is never asked for.
    let launcher = state.join("hosts/host-1").join(host::LAUNCHER_CONFIG);
    std::fs::write(&launcher, r#"{"guest_policy": "0xB0000"}"#).unwrap();
    let before = cli(&platform, &["vm", "events", "web"]).1["value"]
        .as_array()
        .unwrap()
        .len();
    let (code, vm) = cli(&platform, &["vm", "start", "web"]);
    assert_eq!((code, vm["state"].as_str()), (1, Some("failed")), "{vm}");
    assert_eq!(vm["lastFailure"]["code"], "attestation_denied", "{vm}");
    assert_eq!(vm["lastFailure"]["step"], "attest", "{vm}");
    let reason = vm["lastFailure"]["reason"].as_str().unwrap();
    assert!(reason.contains("no-debug"), "{reason}");
    let steps = steps_since(&platform, "web", before);
    assert!(
        steps.iter().all(|(s, _)| s != "vmgs_key_release"),
        "no key was asked for: {steps:?}"
    );
    std::fs::remove_file(&launcher).unwrap();

    // A tampered GRUB under Secure Boot: shim refuses it, the VM does not run.
    let f = common::esp::fixtures();
    let mut grub = std::fs::read(f.join("grubx64.efi.signed")).unwrap();
    let n = grub.len();
    grub[n / 2] ^= 0x01;
    let bad_grub = d.join("grub-tampered.efi");
    std::fs::write(&bad_grub, &grub).unwrap();
    let tampered = common::esp::gpt_disk(
        d,
        "tampered",
        &[
            ("EFI/BOOT/BOOTX64.EFI", &f.join("shimx64.efi.signed")),
            ("EFI/BOOT/grubx64.efi", &bad_grub),
            ("vmlinuz", &f.join("vmlinuz")),
        ],
        Some(b"root"),
    );
    let (code, img) = cli(
        &platform,
        &["image", "import", "debian-12", tampered.to_str().unwrap()],
    );
    assert_eq!(code, 0, "shim itself is intact: {img}");
    let (code, vm) = cli(&platform, &["vm", "start", "web"]);
    assert_eq!((code, vm["state"].as_str()), (1, Some("failed")), "{vm}");
    assert_eq!(vm["lastFailure"]["code"], "secure_boot_violation", "{vm}");
    let reason = vm["lastFailure"]["reason"].as_str().unwrap();
    assert!(reason.contains("grubx64.efi"), "{reason}");
    // A tampered kernel: shim (through GRUB's shim_lock) refuses it.
    let mut kernel = std::fs::read(f.join("vmlinuz")).unwrap();
    let n = kernel.len();
    kernel[n / 2] ^= 0x01;
    let bad_kernel = d.join("vmlinuz-tampered");
    std::fs::write(&bad_kernel, &kernel).unwrap();
    let tampered = common::esp::gpt_disk(
        d,
        "tampered-kernel",
        &[
            ("EFI/BOOT/BOOTX64.EFI", &f.join("shimx64.efi.signed")),
            ("EFI/BOOT/grubx64.efi", &f.join("grubx64.efi.signed")),
            ("vmlinuz", &bad_kernel),
        ],
        Some(b"root"),
    );
    let (code, img) = cli(
        &platform,
        &["image", "import", "debian-12", tampered.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{img}");
    let (code, vm) = cli(&platform, &["vm", "start", "web"]);
    assert_eq!((code, vm["state"].as_str()), (1, Some("failed")), "{vm}");
    assert_eq!(vm["lastFailure"]["code"], "secure_boot_violation", "{vm}");
    let reason = vm["lastFailure"]["reason"].as_str().unwrap();
    assert!(reason.contains("kernel"), "{reason}");
    let (code, img) = cli(
        &platform,
        &["image", "import", "debian-12", disk.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{img}");

    // A host whose SEV-SNP is disabled (as its BIOS would say): no VM runs there.
    let pj = state.join("hosts/host-1/snp/platform.json");
    let orig = std::fs::read_to_string(&pj).unwrap();
    let mut cfg: Value = serde_json::from_str(&orig).unwrap();
    let flag = cfg
        .pointer_mut("/config/snp_enabled")
        .expect("platform.json has config.snp_enabled");
    *flag = json!(false);
    std::fs::write(&pj, cfg.to_string()).unwrap();
    let (code, vm) = cli(&platform, &["vm", "start", "web"]);
    assert_eq!((code, vm["state"].as_str()), (1, Some("failed")), "{vm}");
    assert_eq!(vm["lastFailure"]["code"], "host_unhealthy", "{vm}");
    std::fs::write(&pj, orig).unwrap();

    // Running when cvm up is killed: it boots again after the restart.
    let (code, vm) = cli(&platform, &["vm", "start", "web"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("running")), "{vm}");
    drop(platform); // SIGKILL
    let platform = up(&state, &["--hosts", "1"]);
    let vm = wait_vm(&platform.url, &tenant, "web", |v| {
        v["state"] == "running" || v["state"] == "failed"
    });
    assert_eq!(vm["state"], "running", "{vm}");
    let steps = steps_since(&platform, "web", 0);
    assert!(
        steps.iter().any(|(s, _)| s == "resume"),
        "the restart booted it again: {steps:?}"
    );
    let (code, _) = cli(&platform, &["vm", "attest", "web"]);
    assert_eq!(code, 0);
    // Deleting a running VM stops it and removes its files from the host.
    let (code, _) = cli(&platform, &["vm", "delete", "web"]);
    assert_eq!(code, 0);
    assert!(!vmgs.exists());
    let _ = url;
}

/// Plaintext the test disk's root partition starts with.
const ROOT_MARKER: &[u8] = b"opencvm test root partition, plaintext";

/// The first encrypted (non-boot) partition of the GPT disk `path`, copied out.
fn root_partition(path: &Path, to: &Path) -> PathBuf {
    let bytes = std::fs::read(path).unwrap();
    let head = &bytes[..disk::gpt::Gpt::HEAD_LEN.min(bytes.len())];
    let gpt = disk::gpt::Gpt::parse(head, bytes.len() as u64).unwrap();
    let p = gpt.partitions.iter().find(|p| !p.boot_critical()).unwrap();
    let start = (p.first * disk::gpt::LBA) as usize;
    std::fs::write(to, &bytes[start..start + p.bytes() as usize]).unwrap();
    to.to_path_buf()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `cryptsetup luksDump` of a LUKS2 volume file.
fn luks_dump(path: &Path) -> String {
    let o = Command::new("cryptsetup")
        .args(["luksDump", path.to_str().unwrap()])
        .output()
        .expect("cryptsetup (scripts/setup installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Full-disk encryption before first boot, end to end on `cvm up`: the create
/// pre-encrypts the VM's OS disk (its root partition nowhere in clear, cryptsetup
/// reads the header and the token naming the key); the first start has the disk key
/// released to the VM's token and binds the disk to its vTPM, which then unseals it
/// (`cvm disk decrypt --vtpm` through the running VM's vTPM gives back the
/// plaintext); later starts open it through the vTPM. Another VM's disk does not
/// open; a customer key is checked at create, and its release policy decides at
/// start; a kill -9 during pre-encryption leaves a VM that is pre-encrypted after the
/// restart.
#[test]
fn an_encrypted_os_disk_opens_only_for_its_own_attested_vm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("up");
    let platform = up(&state, &["--hosts", "1"]);
    let f = common::esp::fixtures();
    let image = common::esp::gpt_disk(
        d,
        "debian",
        &[
            ("EFI/BOOT/BOOTX64.EFI", &f.join("shimx64.efi.signed")),
            ("EFI/BOOT/grubx64.efi", &f.join("grubx64.efi.signed")),
            ("vmlinuz", &f.join("vmlinuz")),
        ],
        Some(ROOT_MARKER),
    );
    assert!(contains(&std::fs::read(&image).unwrap(), ROOT_MARKER));
    let (code, img) = cli(
        &platform,
        &["image", "import", "debian-12", image.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{img}");
    let create = |name: &str, extra: &[&str]| -> (i32, Value) {
        let mut a = vec![
            "vm",
            "create",
            name,
            "--size",
            "Standard_DC2as_v5",
            "--image",
            "debian-12",
        ];
        a.extend_from_slice(extra);
        cli(&platform, &a)
    };
    let detail = |name: &str, step: &str| -> String {
        let (_, events) = cli(&platform, &["vm", "events", name]);
        events["value"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e["step"] == step)
            .map(|e| e["detail"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {step} event: {events}"))
    };

    // Create: the disk is encrypted before the VM is `stopped`.
    let (code, vm) = create("enc", &["--disk-encryption", "platform-key"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("stopped")), "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    assert_eq!(
        steps_since(&platform, "enc", 0),
        [
            ("validate".to_string(), "ok".to_string()),
            ("place".into(), "ok".into()),
            ("disk_pre_encryption".into(), "ok".into())
        ]
    );
    let vm_dir = state.join(format!("hosts/host-1/vms/{id}"));
    let os = vm_dir.join("os.img");
    assert!(
        !contains(&std::fs::read(&os).unwrap(), ROOT_MARKER),
        "the root partition's plaintext is in the VM's disk"
    );
    let part = root_partition(&os, &d.join("root.luks"));
    let dump = luks_dump(&part);
    assert!(dump.contains("opencvm-key-release"), "{dump}");
    assert!(dump.contains("aes-xts-plain64"), "{dump}");
    assert!(
        !dump.contains("systemd-tpm2"),
        "not bound before the first boot: {dump}"
    );

    // First start: the key is released to the VM's token, the disk opens and is
    // bound to the VM's vTPM.
    let (code, vm) = cli(&platform, &["vm", "start", "enc"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("running")), "{vm}");
    let names: Vec<String> = steps_since(&platform, "enc", 3)
        .into_iter()
        .map(|(s, o)| {
            assert_eq!(o, "ok", "{s}");
            s
        })
        .collect();
    assert_eq!(
        names,
        [
            "start",
            "launch",
            "attest",
            "vmgs_key_release",
            "vmgs",
            "vtpm",
            "secure_boot",
            "disk_unlock",
            "running"
        ]
    );
    let first = detail("enc", "disk_unlock");
    assert!(
        first.contains(&format!("vm-{id}-disk")) && first.contains("bound to the vTPM"),
        "{first}"
    );
    // The running VM's vTPM unseals the disk for `cvm disk decrypt`, as systemd
    // in the guest would: the plaintext comes back.
    let part = root_partition(&os, &d.join("root-bound.luks"));
    let dump = luks_dump(&part);
    assert!(dump.contains("systemd-tpm2"), "{dump}");
    let plain = d.join("root.plain");
    let o = cvm(&[
        "disk",
        "decrypt",
        "--in",
        part.to_str().unwrap(),
        "--out",
        plain.to_str().unwrap(),
        "--vtpm",
        &format!("unix:{}", vm_dir.join("tpm/data").display()),
        "--progress",
        "none",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&plain).unwrap().starts_with(ROOT_MARKER));

    // A later start: the vTPM unseals it.
    cli(&platform, &["vm", "stop", "enc"]);
    let (code, vm) = cli(&platform, &["vm", "start", "enc"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("running")), "{vm}");
    let again = detail("enc", "disk_unlock");
    assert!(again.contains("unsealed by the vTPM"), "{again}");

    // Another VM's disk (bound to another vTPM) does not open; its own does.
    let (code, other) = create("other", &["--disk-encryption", "platform-key"]);
    assert_eq!(code, 0, "{other}");
    let (code, _) = cli(&platform, &["vm", "start", "other"]);
    assert_eq!(code, 0);
    cli(&platform, &["vm", "stop", "other"]);
    cli(&platform, &["vm", "stop", "enc"]);
    let other_os = state.join(format!(
        "hosts/host-1/vms/{}/os.img",
        other["id"].as_str().unwrap()
    ));
    let kept = d.join("other.img");
    std::fs::rename(&other_os, &kept).unwrap();
    std::fs::copy(&os, &other_os).unwrap();
    let (code, vm) = cli(&platform, &["vm", "start", "other"]);
    assert_eq!((code, vm["state"].as_str()), (1, Some("failed")), "{vm}");
    assert_eq!(vm["lastFailure"]["step"], "disk_unlock", "{vm}");
    assert_eq!(vm["lastFailure"]["code"], "disk_locked", "{vm}");
    // A missing disk is refused, not made again.
    std::fs::remove_file(&other_os).unwrap();
    let (code, vm) = cli(&platform, &["vm", "start", "other"]);
    assert_eq!(
        (code, vm["lastFailure"]["code"].as_str()),
        (1, Some("disk_locked")),
        "{vm}"
    );
    assert!(!other_os.exists());
    std::fs::rename(&kept, &other_os).unwrap();
    let (code, vm) = cli(&platform, &["vm", "start", "other"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("running")), "{vm}");
    cli(&platform, &["vm", "stop", "other"]);

    // Disks the host made or changed are refused before any key is released: a
    // copy of another VM's pre-encrypted disk (never started, so not bound) ...
    let fresh = |name: &str| {
        let (code, vm) = create(name, &["--disk-encryption", "platform-key"]);
        assert_eq!(code, 0, "{vm}");
        state.join(format!(
            "hosts/host-1/vms/{}/os.img",
            vm["id"].as_str().unwrap()
        ))
    };
    let (x, y) = (fresh("x"), fresh("y"));
    let y_kept = d.join("y.img");
    std::fs::rename(&y, &y_kept).unwrap();
    std::fs::copy(&x, &y).unwrap();
    let (code, vm) = cli(&platform, &["vm", "start", "y"]);
    assert_eq!(
        (code, vm["lastFailure"]["code"].as_str()),
        (1, Some("disk_locked")),
        "{vm}"
    );
    let reason = vm["lastFailure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("not the disk pre-encrypted for this VM"),
        "{reason}"
    );
    assert!(reason.contains("no key is released"), "{reason}");
    // ... and its own disk whose header names another VM's disk key.
    std::fs::rename(&y_kept, &y).unwrap();
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&y)
            .unwrap();
        let head = {
            let mut b = vec![0u8; disk::gpt::Gpt::HEAD_LEN];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0).unwrap();
            b
        };
        let gpt = disk::gpt::Gpt::parse(&head, f.metadata().unwrap().len()).unwrap();
        let p = gpt.partitions.iter().find(|p| !p.boot_critical()).unwrap();
        let w = disk::device::Window::new(&f, p.first * disk::gpt::LBA, p.bytes());
        let mut luks = disk::Luks2::read(&w).unwrap();
        let t = luks
            .metadata
            .tokens
            .values_mut()
            .find(|t| t.kind == "opencvm-key-release")
            .unwrap();
        let kid = t.other["kid"].as_str().unwrap().to_string();
        let x_id = x.parent().unwrap().file_name().unwrap().to_str().unwrap();
        let y_id = y.parent().unwrap().file_name().unwrap().to_str().unwrap();
        t.other.insert("kid".into(), json!(kid.replace(y_id, x_id)));
        luks.write(&w).unwrap();
    }
    let (code, vm) = cli(&platform, &["vm", "start", "y"]);
    assert_eq!(
        (code, vm["lastFailure"]["code"].as_str()),
        (1, Some("disk_locked")),
        "{vm}"
    );
    let reason = vm["lastFailure"]["reason"].as_str().unwrap();
    assert!(reason.contains("not the VM's own"), "{reason}");
    // ... and a header with a second volume-key digest beside the pinned one (which
    // could vouch for a key the host chose).
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&y)
            .unwrap();
        let mut head = vec![0u8; disk::gpt::Gpt::HEAD_LEN];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
        let gpt = disk::gpt::Gpt::parse(&head, f.metadata().unwrap().len()).unwrap();
        let p = gpt.partitions.iter().find(|p| !p.boot_critical()).unwrap();
        let w = disk::device::Window::new(&f, p.first * disk::gpt::LBA, p.bytes());
        let mut luks = disk::Luks2::read(&w).unwrap();
        let mut second = luks.metadata.digests[&0].clone();
        second.keyslots.clear();
        luks.metadata.digests.insert(1, second);
        luks.write(&w).unwrap();
    }
    let (code, vm) = cli(&platform, &["vm", "start", "y"]);
    assert_eq!(
        (code, vm["lastFailure"]["code"].as_str()),
        (1, Some("disk_locked")),
        "{vm}"
    );
    let reason = vm["lastFailure"]["reason"].as_str().unwrap();
    assert!(reason.contains("2 volume-key digests"), "{reason}");
    // A deleted VM's keys leave the vault with it.
    let (vault, admin) = platform_vault(&state);
    let x_id = x
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let (st, _) = http(
        "GET",
        &format!("{vault}/keys/vm-{x_id}-disk"),
        Some(admin.trim()),
        None,
    );
    assert_eq!(st, 200);
    let (code, _) = cli(&platform, &["vm", "delete", "x"]);
    assert_eq!(code, 0);
    let (st, _) = http(
        "GET",
        &format!("{vault}/keys/vm-{x_id}-disk"),
        Some(admin.trim()),
        None,
    );
    assert_eq!(st, 404, "the deleted VM's disk key is still in the vault");

    // Customer keys: checked against the vault at create.
    let attest_url = platform
        .stdout
        .iter()
        .find_map(|l| l.trim().strip_prefix("attestation"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let key = |name: &str, kty: &str, hostdata: Option<&str>| {
        let mut body = json!({"kty": kty, "attributes": {"exportable": true}});
        if kty == "RSA" {
            body["key_size"] = json!(2048);
        } else {
            body["key_size"] = json!(256);
        }
        let mut all = vec![json!({"claim": "x-ms-attestation-type", "equals": "sevsnpvm"})];
        if let Some(h) = hostdata {
            all.push(json!({"claim": "x-ms-sevsnpvm-hostdata", "equals": h}));
        }
        let policy =
            json!({"version": "1.0.0", "anyOf": [{"authority": attest_url, "allOf": all}]});
        use base64::Engine as _;
        body["release_policy"] = json!({
            "contentType": "application/json; charset=utf-8",
            "data": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(policy.to_string()),
        });
        let (st, k) = http(
            "POST",
            &format!("{vault}/keys/{name}/create"),
            Some(admin.trim()),
            Some(&body),
        );
        assert_eq!(st, 200, "{k}");
    };
    let cmk = |name: &str, key: &str| {
        create(
            name,
            &["--disk-encryption", "customer-key", "--customer-key", key],
        )
    };
    let (code, e) = cmk("c0", "no-such-key");
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (1, Some("customer_key_unusable")),
        "{e}"
    );
    key("sym", "oct", None);
    let (code, e) = cmk("c0", "sym");
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (1, Some("customer_key_unusable")),
        "{e}"
    );
    assert!(
        e["error"]["message"].as_str().unwrap().contains("RSA"),
        "{e}"
    );
    let (_, list) = cli(&platform, &["vm", "list"]);
    assert_eq!(
        list["value"].as_array().unwrap().len(),
        3,
        "a refused create leaves no VM: {list}"
    );

    // A customer key whose release policy refuses this VM (another HOST_DATA): the
    // disk is encrypted, but the VM does not start.
    key("locked", "RSA", Some(&"00".repeat(32)));
    let (code, vm) = cmk("c1", "locked");
    assert_eq!((code, vm["state"].as_str()), (0, Some("stopped")), "{vm}");
    assert!(detail("c1", "disk_pre_encryption").contains("customer-managed"));
    let (code, vm) = cli(&platform, &["vm", "start", "c1"]);
    assert_eq!((code, vm["state"].as_str()), (1, Some("failed")), "{vm}");
    assert_eq!(vm["lastFailure"]["step"], "disk_unlock", "{vm}");
    assert_eq!(vm["lastFailure"]["code"], "key_release_denied", "{vm}");

    // One whose policy admits SEV-SNP VMs of this attestation service: it runs.
    key("open", "RSA", None);
    let (code, vm) = cmk("c2", "open");
    assert_eq!(code, 0, "{vm}");
    let (code, vm) = cli(&platform, &["vm", "start", "c2"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("running")), "{vm}");
    assert!(detail("c2", "disk_unlock").contains("/keys/open/"));
    drop(platform);

    // kill -9 right after a create answered `creating` (its disk being
    // pre-encrypted): after the restart the pre-encryption is done again from the
    // beginning, once, its work directory gone, and the VM starts.
    let platform = up(&state, &["--hosts", "1"]);
    let tenant = std::fs::read_to_string(state.join("tenant.token")).unwrap();
    let mut body = create_request("Standard_DC2as_v5");
    body["osDisk"]["securityEncryptionType"] = json!("DiskWithVMGuestState");
    let (st, vm) = http(
        "PUT",
        &format!("{}/vms/late", platform.url),
        Some(tenant.trim()),
        Some(&body),
    );
    drop(platform); // SIGKILL
    assert_eq!((st, vm["state"].as_str()), (200, Some("creating")), "{vm}");
    let platform = up(&state, &["--hosts", "1"]);
    let vm = wait_vm(&platform.url, tenant.trim(), "late", |v| {
        v["state"] != "creating"
    });
    assert_eq!(vm["state"], "stopped", "{vm}");
    let late_dir = state.join(format!("hosts/host-1/vms/{}", vm["id"].as_str().unwrap()));
    assert!(late_dir.join("os.img").exists());
    assert!(!late_dir.join("pre-encryption").exists());
    assert_eq!(
        steps_since(&platform, "late", 0)
            .iter()
            .filter(|(s, o)| s == "disk_pre_encryption" && o == "ok")
            .count(),
        1
    );
    let (code, vm) = cli(&platform, &["vm", "start", "late"]);
    assert_eq!((code, vm["state"].as_str()), (0, Some("running")), "{vm}");

    // kill -9 of the platform while the VM runs, again and again: each kill is a
    // disorderly shutdown of its vTPM, which counts against the vTPM's
    // dictionary-attack protection; the VM still boots again each time and its disk
    // still unseals (a few such counts would otherwise lock the sealed key out).
    let mut platform = platform;
    for round in 0..5 {
        drop(platform);
        platform = up(&state, &["--hosts", "1"]);
        let vm = wait_vm(&platform.url, tenant.trim(), "late", |v| {
            v["state"] != "starting"
        });
        assert_eq!(vm["state"], "running", "round {round}: {vm}");
    }
    let (_, events) = cli(&platform, &["vm", "events", "late"]);
    let unlocks = events["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "disk_unlock" && e["outcome"] == "ok")
        .count();
    assert_eq!(unlocks, 6, "{events}");
    assert!(
        events["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["step"] == "secure_boot"
                && e["detail"]
                    .as_str()
                    .unwrap()
                    .contains("dictionary-attack count")),
        "no boot cleared the vTPM's dictionary-attack count: {events}"
    );
}

/// The vTPM processes of `state`'s platform, as (VM id, count).
fn vtpms(state: &Path) -> std::collections::BTreeMap<String, usize> {
    let o = Command::new("pgrep")
        .args([
            "-a",
            "-f",
            &format!("vtpm run --kek-stdin --vmgs {}/", state.display()),
        ])
        .output()
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        // ... --vmgs STATE/hosts/host-N/vms/ID/guest.vmgs ...
        if let Some(id) = line
            .split_whitespace()
            .find(|w| w.ends_with("/guest.vmgs"))
            .and_then(|p| p.rsplit('/').nth(1))
        {
            *out.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// kill -9 of `cvm up` (the control plane and its in-process host agent) at random
/// moments while a client starts, stops and restarts VMs (50 trials, each kill 0 to
/// 1.5 s into the operations, so at any step of a start): after each restart every VM
/// settles `running`, `stopped` or `failed` (none stays `starting`), keeps the host it
/// was placed on, none `failed` (a kill corrupts nothing: not its VMGS, not its
/// vault key), runs exactly one vTPM when `running` and none otherwise (the killed
/// platform's vTPMs are gone), and the hosts' counters hold. Some kills must land
/// during a start (the VM's `resume` event says it was `starting`).
#[test]
fn kill_9_during_starts_leaves_every_vm_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("up");
    let disk = debian_disk(d, "debian");
    let names = ["k1", "k2", "k3"];
    let mut hosts = std::collections::BTreeMap::new();
    let mut ids = std::collections::BTreeMap::new();
    for trial in 0..50 {
        let platform = up(&state, &["--hosts", "2", "--regions", "eastus"]);
        let url = platform.url.clone();
        let tenant = std::fs::read_to_string(state.join("tenant.token")).unwrap();
        let operator = std::fs::read_to_string(state.join("control/operator.token")).unwrap();
        if trial == 0 {
            let (code, img) = cli(
                &platform,
                &["image", "import", "debian-12", disk.to_str().unwrap()],
            );
            assert_eq!(code, 0, "{img}");
            for n in names {
                let mut body = create_request("Standard_DC2as_v5");
                body["osDisk"]["securityEncryptionType"] = json!("VMGuestStateOnly");
                let (st, vm) = http("PUT", &format!("{url}/vms/{n}"), Some(&tenant), Some(&body));
                assert_eq!(st, 200, "{vm}");
                hosts.insert(n, vm["host"].as_str().unwrap().to_string());
                ids.insert(n, vm["id"].as_str().unwrap().to_string());
            }
        }
        // After the restart: every VM settles, on its own host, with one vTPM when
        // running and none otherwise.
        let mut settled = Vec::new();
        for n in names {
            let vm = wait_vm(&url, &tenant, n, |v| {
                !matches!(
                    v["state"].as_str(),
                    Some("starting" | "stopping" | "creating")
                )
            });
            assert_eq!(vm["host"].as_str(), Some(hosts[n].as_str()), "{vm}");
            // A kill corrupts nothing: no VM fails because of one.
            assert_ne!(vm["state"], "failed", "trial {trial}: {vm}");
            settled.push(vm);
        }
        consistent(&url, &tenant, &operator);
        // The vTPMs of the killed platform end when their pipe closes; give them a
        // moment.
        let mut ok = false;
        for _ in 0..50 {
            let running = vtpms(&state);
            ok = settled.iter().all(|vm| {
                let want = usize::from(vm["state"] == "running");
                running
                    .get(vm["id"].as_str().unwrap())
                    .copied()
                    .unwrap_or(0)
                    == want
            }) && running.len() <= names.len();
            if ok {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(
            ok,
            "trial {trial}: vTPMs {:?} for {settled:?}",
            vtpms(&state)
        );
        // Operations, then a kill at a random moment among them.
        let ops = std::thread::spawn({
            let (url, tenant) = (url.clone(), tenant.clone());
            move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                for i in 0..6 {
                    let n = names[(trial + i) % names.len()];
                    let op = ["start", "restart", "stop", "start"][(trial * 7 + i) % 4];
                    let sent = agent
                        .post(&format!("{url}/vms/{n}/{op}"))
                        .header("Authorization", &format!("Bearer {tenant}"))
                        .send_empty();
                    if sent.is_err() {
                        return; // the platform is gone
                    }
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(jitter(1500)));
        drop(platform); // SIGKILL
        ops.join().unwrap();
    }
    // Kills that landed during a start: the VM was `starting` when the platform
    // stopped, and its next life says so.
    let platform = up(&state, &["--hosts", "2", "--regions", "eastus"]);
    let tenant = std::fs::read_to_string(state.join("tenant.token")).unwrap();
    let mut caught = 0;
    for n in names {
        wait_vm(&platform.url, &tenant, n, |v| {
            !matches!(v["state"].as_str(), Some("starting" | "stopping"))
        });
        let (_, events) = cli(&platform, &["vm", "events", n]);
        caught += events["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["step"] == "resume" && e["detail"].as_str().unwrap().contains("was starting")
            })
            .count();
    }
    eprintln!("{caught} kills landed during a start");
    assert!(
        caught >= 5,
        "only {caught} of 50 kills landed during a start"
    );
}

/// A running `cvm host run NAME` (its log in `log`), killed (SIGKILL) when dropped.
struct HostAgentProc {
    child: Child,
    url: String,
}

impl Drop for HostAgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cvm host run name --state state ...extra` and waits for its `ready:` line
/// (it has registered with the control plane).
fn host_agent(state: &Path, name: &str, extra: &[&str]) -> HostAgentProc {
    let log = state.with_file_name(format!("agent-{name}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(["host", "run", name, "--state", state.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let prefix = format!("ready: agent of {name} at ");
    let url = line
        .trim()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| {
            panic!(
                "cvm host run {name}: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .to_string();
    HostAgentProc { child, url }
}

/// The vTPM processes of `state`'s platform, as (VM id, the pid of their parent).
fn vtpm_parents(state: &Path) -> Vec<(String, u32)> {
    let o = Command::new("pgrep")
        .args([
            "-f",
            &format!("vtpm run --kek-stdin --vmgs {}/", state.display()),
        ])
        .output()
        .unwrap();
    let mut out = Vec::new();
    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
        let (Ok(cmd), Ok(stat)) = (
            std::fs::read(format!("/proc/{pid}/cmdline")),
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
        ) else {
            continue; // ended meanwhile
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let id = cmd
            .split_whitespace()
            .find(|w| w.ends_with("/guest.vmgs"))
            .and_then(|p| p.rsplit('/').nth(1))
            .unwrap()
            .to_string();
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        out.push((id, ppid));
    }
    out
}

/// Every VM of `tenant` settles (none `starting` or `stopping`); then, within a few
/// seconds (the vTPMs of a killed agent end when their pipe closes), each `running`
/// VM has exactly one vTPM, a child of its own host's agent, and no other VM has one.
/// Returns the VMs.
fn settled_on_agents(
    url: &str,
    tenant: &str,
    state: &Path,
    agents: &std::collections::BTreeMap<String, u32>,
) -> Vec<Value> {
    let mut vms = Vec::new();
    for _ in 0..600 {
        let (_, v) = http("GET", &format!("{url}/vms"), Some(tenant), None);
        vms = v["value"].as_array().unwrap().clone();
        if vms
            .iter()
            .all(|v| !matches!(v["state"].as_str(), Some("starting" | "stopping")))
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut last = Vec::new();
    for _ in 0..100 {
        last = vtpm_parents(state);
        let ok = vms.iter().all(|vm| {
            let id = vm["id"].as_str().unwrap();
            let mine: Vec<u32> = last
                .iter()
                .filter(|(i, _)| i == id)
                .map(|(_, p)| *p)
                .collect();
            match vm["state"].as_str() {
                Some("running") => mine == [agents[vm["host"].as_str().unwrap()]],
                _ => mine.is_empty(),
            }
        }) && last.len() <= vms.len();
        if ok {
            return vms;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("vTPMs {last:?} (agents {agents:?}) for {vms:#?}");
}

/// Fleet: two control-plane replicas (`cvm up --host-agents external` and `cvm
/// control serve`) on one PostgreSQL database and two host agents (`cvm host run`),
/// each registered through a different replica. VMs created through one replica start
/// through the other on their own host's agent (their vTPM is that agent's child),
/// attest through either; kill -9 of one agent ends its VMs' vTPMs, and when it runs
/// again its VMs boot again, the others untouched. A VM whose host has no agent is
/// refused with 409 `host_agent_unavailable`, its state unchanged.
#[test]
fn two_replicas_and_two_host_agents_on_postgres_boot_each_vm_on_its_own_host() {
    let Some(pg) = sqldb::scratch::postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // host-1's agent serves HTTPS with a certificate of a private CA.
    let st = Command::new("python3")
        .arg(root().join("tests/oracles/make_tls_cert.py"))
        .arg(d)
        .status()
        .unwrap();
    assert!(st.success());
    let ca = d.join("ca.pem");
    let state = d.join("up");
    let a = up(
        &state,
        &[
            "--hosts",
            "2",
            "--regions",
            "eastus",
            "--host-agents",
            "external",
            "--database",
            &pg.url,
            "--agent-ca",
            ca.to_str().unwrap(),
        ],
    );
    assert!(
        a.stdout
            .iter()
            .any(|l| l.contains("host agents      external")),
        "{:?}",
        a.stdout
    );
    let b = replica(&d.join("b"), &pg.url, &["--agent-ca", ca.to_str().unwrap()]);
    let tenant = std::fs::read_to_string(state.join("tenant.token")).unwrap();
    let operator_file = state.join("control/operator.token");
    let operator = std::fs::read_to_string(&operator_file).unwrap();
    // host-1 takes two DC2 VMs, host-2 the rest.
    let (st, h) = http(
        "PUT",
        &format!("{}/hosts/host-1", b.url),
        Some(&operator),
        Some(
            &json!({"region": "eastus", "vCpus": 112, "memoryGiB": 768, "maxVms": 2, "snpEnabled": true, "backend": "emulated"}),
        ),
    );
    assert_eq!(st, 200, "{h}");
    let disk = debian_disk(d, "debian");
    let (code, img) = cli(
        &a,
        &["image", "import", "debian-12", disk.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{img}");
    let urls = [a.url.clone(), b.url.clone()];
    let names = ["f1", "f2", "f3", "f4"];
    for (i, n) in names.iter().enumerate() {
        let mut body = create_request("Standard_DC2as_v5");
        body["osDisk"]["securityEncryptionType"] = json!("VMGuestStateOnly");
        let (st, vm) = http(
            "PUT",
            &format!("{}/vms/{n}", urls[i % 2]),
            Some(&tenant),
            Some(&body),
        );
        assert_eq!(st, 200, "{vm}");
    }
    // No agent yet: a start is refused and changes nothing.
    let (st, e) = http(
        "POST",
        &format!("{}/vms/f1/start", b.url),
        Some(&tenant),
        None,
    );
    assert_eq!(st, 409, "{e}");
    assert_eq!(e["error"]["code"], "host_agent_unavailable", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cvm host run"),
        "{e}"
    );
    let (_, vm) = http("GET", &format!("{}/vms/f1", a.url), Some(&tenant), None);
    assert_eq!(vm["state"], "stopped", "{vm}");
    // host-1's agent (HTTPS) registers through replica b, host-2's (loopback HTTP)
    // through a (--state).
    let agent1 = host_agent(
        &state,
        "host-1",
        &[
            "--url",
            &b.url,
            "--credential-file",
            operator_file.to_str().unwrap(),
            "--tls-cert",
            d.join("cert.pem").to_str().unwrap(),
            "--tls-key",
            d.join("key.pem").to_str().unwrap(),
        ],
    );
    assert!(
        agent1.url.starts_with("https://127.0.0.1:"),
        "{}",
        agent1.url
    );
    let mut agent2 = host_agent(&state, "host-2", &[]);
    let (_, hosts) = http("GET", &format!("{}/hosts", a.url), Some(&operator), None);
    for (h, agent) in [("host-1", &agent1), ("host-2", &agent2)] {
        let host = hosts["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == h)
            .unwrap();
        assert_eq!(host["agent"].as_str(), Some(agent.url.as_str()), "{host}");
    }
    // Each VM starts through the replica that did not create it.
    for (i, n) in names.iter().enumerate() {
        let (st, vm) = http(
            "POST",
            &format!("{}/vms/{n}/start", urls[(i + 1) % 2]),
            Some(&tenant),
            None,
        );
        assert_eq!(st, 200, "{vm}");
        assert_eq!(vm["state"], "running", "{vm}");
    }
    let mut agents = std::collections::BTreeMap::from([
        ("host-1".to_string(), agent1.child.id()),
        ("host-2".to_string(), agent2.child.id()),
    ]);
    let vms = settled_on_agents(&a.url, &tenant, &state, &agents);
    let on = |h: &str| vms.iter().filter(|v| v["host"] == h).count();
    assert_eq!((on("host-1"), on("host-2")), (2, 2), "{vms:#?}");
    // Attested through either replica.
    for (i, n) in names.iter().enumerate() {
        let (st, t) = http(
            "POST",
            &format!("{}/vms/{n}/attest", urls[i % 2]),
            Some(&tenant),
            Some(&json!({"nonce": "0badc0de"})),
        );
        assert_eq!(st, 200, "{t}");
        assert_eq!(t["nonce"], "0badc0de", "{t}");
    }
    // kill -9 of host-2's agent: its VMs' vTPMs end, host-1's run on.
    let host2: Vec<String> = vms
        .iter()
        .filter(|v| v["host"] == "host-2")
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    drop(agent2);
    let mut gone = false;
    for _ in 0..100 {
        let now = vtpm_parents(&state);
        if now.iter().all(|(id, _)| !host2.contains(id)) {
            assert_eq!(now.len(), 2, "{now:?}");
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(gone, "host-2's vTPMs outlived its agent");
    // It runs again (registering through b): its VMs boot again on it.
    agent2 = host_agent(
        &state,
        "host-2",
        &[
            "--url",
            &b.url,
            "--credential-file",
            operator_file.to_str().unwrap(),
        ],
    );
    agents.insert("host-2".into(), agent2.child.id());
    for n in names {
        wait_vm(&a.url, &tenant, n, |v| v["state"] == "running");
    }
    let vms = settled_on_agents(&b.url, &tenant, &state, &agents);
    for vm in &vms {
        let (_, ev) = http(
            "GET",
            &format!("{}/vms/{}/events", a.url, vm["name"].as_str().unwrap()),
            Some(&tenant),
            None,
        );
        let resumed = ev["value"].as_array().unwrap().iter().any(|e| {
            e["step"] == "resume"
                && e["detail"]
                    .as_str()
                    .unwrap()
                    .contains("its host's agent started again")
        });
        assert_eq!(resumed, vm["host"] == "host-2", "{vm}: {ev}");
    }
    let operator = operator.trim();
    assert_eq!(consistent(&a.url, &tenant, operator).len(), 4);
    assert_eq!(consistent(&b.url, &tenant, operator).len(), 4);
    // A replica that does not trust the agents' CA does not reach host-1's agent
    // (and changes nothing); host-2's it reaches.
    let c = replica(&d.join("c"), &pg.url, &[]);
    for vm in &vms {
        let n = vm["name"].as_str().unwrap();
        let (st, t) = http(
            "POST",
            &format!("{}/vms/{n}/attest", c.url),
            Some(&tenant),
            None,
        );
        if vm["host"] == "host-1" {
            assert_eq!(st, 502, "{t}");
            assert_eq!(t["error"]["code"], "host_agent", "{t}");
            assert!(
                t["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("unreachable"),
                "{t}"
            );
        } else {
            assert_eq!(st, 200, "{t}");
        }
    }
    let vms = settled_on_agents(&a.url, &tenant, &state, &agents);
    assert!(vms.iter().all(|v| v["state"] == "running"), "{vms:#?}");
    // A delete through a replica stops the VM on its host's agent and removes its
    // files there.
    for vm in &vms {
        let n = vm["name"].as_str().unwrap();
        let id = vm["id"].as_str().unwrap();
        let vm_dir = state
            .join("hosts")
            .join(vm["host"].as_str().unwrap())
            .join("vms")
            .join(id);
        assert!(vm_dir.exists());
        let (st, e) = http("DELETE", &format!("{}/vms/{n}", b.url), Some(&tenant), None);
        assert_eq!(st, 204, "{e}");
        assert!(!vm_dir.exists(), "{}", vm_dir.display());
        assert!(vtpm_parents(&state).iter().all(|(i, _)| i != id));
    }
    assert!(consistent(&a.url, &tenant, operator).is_empty());
    // An encrypted OS disk through replica b, which has no pre-encryption service of
    // its own: the VM's host agent encrypts the disk before the VM is `stopped`, and
    // it opens for the VM at its start through a; a customer key the vault does not
    // hold is refused through b (an agent checks it).
    let mut body = create_request("Standard_DC2as_v5");
    body["osDisk"]["customerKey"] = json!("no-such-key");
    let (st, e) = http(
        "PUT",
        &format!("{}/vms/e0", b.url),
        Some(&tenant),
        Some(&body),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("customer_key_unusable")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not in the platform's key vault"),
        "{e}"
    );
    let body = create_request("Standard_DC2as_v5");
    let (st, vm) = http(
        "PUT",
        &format!("{}/vms/e1", b.url),
        Some(&tenant),
        Some(&body),
    );
    assert_eq!(st, 200, "{vm}");
    assert_eq!(vm["state"], "creating", "{vm}");
    let vm = wait_vm(&b.url, &tenant, "e1", |v| v["state"] != "creating");
    assert_eq!(vm["state"], "stopped", "{vm}");
    let disk = state
        .join("hosts")
        .join(vm["host"].as_str().unwrap())
        .join("vms")
        .join(vm["id"].as_str().unwrap())
        .join(host::pre_encryption::OS_DISK);
    assert!(disk.exists(), "{}", disk.display());
    let (st, vm) = http(
        "POST",
        &format!("{}/vms/e1/start", a.url),
        Some(&tenant),
        None,
    );
    assert_eq!((st, vm["state"].as_str()), (200, Some("running")), "{vm}");
    let (_, ev) = http(
        "GET",
        &format!("{}/vms/e1/events", b.url),
        Some(&tenant),
        None,
    );
    let outcome = |step: &str| -> Vec<(String, String)> {
        ev["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["step"] == step)
            .map(|e| {
                (
                    e["outcome"].as_str().unwrap().to_string(),
                    e["detail"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let pre = outcome("disk_pre_encryption");
    assert!(pre.len() == 1 && pre[0].0 == "ok", "{ev}");
    let unlock = outcome("disk_unlock");
    assert!(
        unlock.len() == 1 && unlock[0].0 == "ok" && unlock[0].1.contains("released to the token"),
        "{ev}"
    );
    let (st, e) = http("DELETE", &format!("{}/vms/e1", b.url), Some(&tenant), None);
    assert_eq!(st, 204, "{e}");
}

/// kill -9 of a host agent (`cvm host run`) at random moments while a client starts,
/// stops and restarts one VM on each of two hosts and the other two run untouched (50
/// trials, each kill 0 to 1.5 s into the operations, so at any step of a start):
/// after the agent runs again every VM
/// settles (none stays `starting` or `stopping`), keeps its host, runs exactly one
/// vTPM under its own host's agent when `running` and none otherwise; a VM fails only
/// because its agent was gone mid-operation (and says so); the VMs that were running
/// on the killed agent boot again; the hosts' counters hold.
#[test]
fn kill_9_of_a_host_agent_at_random_moments_leaves_every_vm_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("up");
    let platform = up(
        &state,
        &[
            "--hosts",
            "2",
            "--regions",
            "eastus",
            "--host-agents",
            "external",
        ],
    );
    let url = platform.url.clone();
    let tenant = std::fs::read_to_string(state.join("tenant.token")).unwrap();
    let operator = std::fs::read_to_string(state.join("control/operator.token")).unwrap();
    let (st, h) = http(
        "PUT",
        &format!("{url}/hosts/host-1"),
        Some(&operator),
        Some(
            &json!({"region": "eastus", "vCpus": 112, "memoryGiB": 768, "maxVms": 2, "snpEnabled": true, "backend": "emulated"}),
        ),
    );
    assert_eq!(st, 200, "{h}");
    let disk = debian_disk(d, "debian");
    let (code, img) = cli(
        &platform,
        &["image", "import", "debian-12", disk.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{img}");
    let names = ["k1", "k2", "k3", "k4"];
    let mut hosts = std::collections::BTreeMap::new();
    for n in names {
        let mut body = create_request("Standard_DC2as_v5");
        body["osDisk"]["securityEncryptionType"] = json!("VMGuestStateOnly");
        let (st, vm) = http("PUT", &format!("{url}/vms/{n}"), Some(&tenant), Some(&body));
        assert_eq!(st, 200, "{vm}");
        hosts.insert(n, vm["host"].as_str().unwrap().to_string());
    }
    let mut running = [
        Some(host_agent(&state, "host-1", &[])),
        Some(host_agent(&state, "host-2", &[])),
    ];
    let mut resumed_total = 0;
    let mut failed_by_kill = 0;
    let mut mid_boot = 0;
    for trial in 0..50 {
        let agents: std::collections::BTreeMap<String, u32> = running
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("host-{}", i + 1), a.as_ref().unwrap().child.id()))
            .collect();
        let vms = settled_on_agents(&url, &tenant, &state, &agents);
        for vm in &vms {
            let n = vm["name"].as_str().unwrap();
            assert_eq!(vm["host"].as_str(), Some(hosts[n].as_str()), "{vm}");
            if vm["state"] == "failed" {
                // Only a kill fails a VM here: the agent was gone mid-operation.
                let (_, ev) = http("GET", &format!("{url}/vms/{n}/events"), Some(&tenant), None);
                let last = ev["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .rev()
                    .find(|e| e["outcome"] == "failed")
                    .cloned()
                    .unwrap();
                assert!(
                    last["detail"].as_str().unwrap().contains("agent of host"),
                    "trial {trial}: {vm}: {last}"
                );
            }
        }
        consistent(&url, &tenant, &operator);
        // One VM on each host is operated on; the other two run untouched, so a
        // kill of their agent leaves them for its next start to boot again.
        let active = [names[trial % 2], names[2 + (trial + 1) % 2]];
        for n in names.iter().filter(|n| !active.contains(n)) {
            let (st, vm) = http("POST", &format!("{url}/vms/{n}/start"), Some(&tenant), None);
            assert_eq!((st, vm["state"].as_str()), (200, Some("running")), "{vm}");
        }
        let ops = std::thread::spawn({
            let (url, tenant) = (url.clone(), tenant.clone());
            move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                for i in 0..6 {
                    let n = active[i % 2];
                    let op = ["start", "restart", "stop", "start"][(trial * 7 + i) % 4];
                    let _ = agent
                        .post(&format!("{url}/vms/{n}/{op}"))
                        .header("Authorization", &format!("Bearer {tenant}"))
                        .send_empty();
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(jitter(1500)));
        let victim = (trial + usize::try_from(jitter(2)).unwrap()) % 2;
        running[victim] = None; // SIGKILL
        ops.join().unwrap();
        running[victim] = Some(host_agent(&state, &format!("host-{}", victim + 1), &[]));
    }
    let agents: std::collections::BTreeMap<String, u32> = running
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("host-{}", i + 1), a.as_ref().unwrap().child.id()))
        .collect();
    settled_on_agents(&url, &tenant, &state, &agents);
    consistent(&url, &tenant, &operator);
    for n in names {
        let (_, ev) = http("GET", &format!("{url}/vms/{n}/events"), Some(&tenant), None);
        for e in ev["value"].as_array().unwrap() {
            let detail = e["detail"].as_str().unwrap_or_default();
            if e["step"] == "resume" && detail.contains("its host's agent started again") {
                resumed_total += 1;
            }
            if e["outcome"] == "failed" && detail.contains("agent of host") {
                failed_by_kill += 1;
                // Its answer broke off after some of the steps were recorded.
                if detail.contains("its answer ended after") || detail.contains("broke off after") {
                    mid_boot += 1;
                }
            }
        }
    }
    eprintln!(
        "{resumed_total} VMs booted again after their agent's restart; {failed_by_kill} operations met a killed agent, {mid_boot} of them cut off mid-boot"
    );
    // Kills landed while VMs ran (every kill finds its host's untouched VM running),
    // in the middle of boots, and operations met them.
    assert!(resumed_total >= 50, "only {resumed_total} resumes");
    assert!(
        failed_by_kill >= 5,
        "only {failed_by_kill} operations met a killed agent"
    );
    assert!(mid_boot >= 3, "only {mid_boot} boots cut off by a kill");
}

/// One HTTP call with an `Idempotency-Key`: status, whether the answer was replayed,
/// and its JSON (null when empty).
fn keyed_call(
    method: &str,
    url: &str,
    cred: &str,
    key: &str,
    body: Option<&Value>,
) -> (u16, bool, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {cred}");
    let mut r = match method {
        "DELETE" => agent
            .delete(url)
            .header("Authorization", &auth)
            .header("Idempotency-Key", key)
            .call()
            .unwrap(),
        m => {
            let req = if m == "PUT" {
                agent.put(url)
            } else {
                agent.post(url)
            };
            req.header("Authorization", &auth)
                .header("Idempotency-Key", key)
                .header("Content-Type", "application/json")
                .send(body.map(Value::to_string).unwrap_or_default().as_bytes())
                .unwrap()
        }
    };
    let replayed = r
        .headers()
        .get("Idempotent-Replayed")
        .is_some_and(|v| v == "true");
    let st = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (st, replayed, v)
}

/// How many boots of `name` its events record (a `start` event each).
fn boots(url: &str, cred: &str, name: &str) -> usize {
    let (_, ev) = http("GET", &format!("{url}/vms/{name}/events"), Some(cred), None);
    ev["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "start")
        .count()
}

/// Client idempotency keys: a retry with the request's key gets the first answer
/// (marked `Idempotent-Replayed`) and does not run again — a restart retried does not
/// restart twice, a delete retried is still 204; the key used for another request is
/// refused (422), malformed keys too (400); keys are per tenant; two concurrent
/// requests with one key run once. The CLI sends a key with each VM-changing request.
#[test]
fn idempotency_keys_make_retries_safe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let platform = up(&d.join("up"), &["--hosts", "1", "--regions", "eastus"]);
    let url = platform.url.clone();
    let tenant = std::fs::read_to_string(d.join("up/tenant.token")).unwrap();
    let operator = std::fs::read_to_string(d.join("up/control/operator.token")).unwrap();
    let disk = debian_disk(d, "debian");
    let (code, img) = cli(
        &platform,
        &["image", "import", "debian-12", disk.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{img}");
    let mut body = create_request("Standard_DC2as_v5");
    body["osDisk"]["securityEncryptionType"] = json!("VMGuestStateOnly");
    let vm_url = format!("{url}/vms/i1");
    // Create: the retry is a replay of the same answer.
    let (st, replayed, first) = keyed_call("PUT", &vm_url, &tenant, "create-1", Some(&body));
    assert_eq!((st, replayed), (200, false), "{first}");
    let (st, replayed, again) = keyed_call("PUT", &vm_url, &tenant, "create-1", Some(&body));
    assert_eq!((st, replayed), (200, true), "{again}");
    assert_eq!(again, first);
    // The key with another body, or for another operation: refused, nothing run.
    let mut other = body.clone();
    other["vmSize"] = json!("Standard_DC4as_v5");
    let (st, _, e) = keyed_call("PUT", &vm_url, &tenant, "create-1", Some(&other));
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{e}"
    );
    let (st, _, e) = keyed_call(
        "POST",
        &format!("{vm_url}/start"),
        &tenant,
        "create-1",
        None,
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{e}"
    );
    assert_eq!(boots(&url, &tenant, "i1"), 0);
    // Malformed keys.
    for bad in ["k".repeat(65), "with space".to_string(), String::new()] {
        let (st, _, e) = keyed_call("POST", &format!("{vm_url}/start"), &tenant, &bad, None);
        assert_eq!(st, 400, "{bad:?}: {e}");
    }
    // Start, then a restart sent three times: one restart.
    let (st, _, vm) = keyed_call("POST", &format!("{vm_url}/start"), &tenant, "start-1", None);
    assert_eq!((st, vm["state"].as_str()), (200, Some("running")), "{vm}");
    assert_eq!(boots(&url, &tenant, "i1"), 1);
    for i in 0..3 {
        let (st, replayed, vm) = keyed_call(
            "POST",
            &format!("{vm_url}/restart"),
            &tenant,
            "restart-1",
            None,
        );
        assert_eq!((st, replayed), (200, i > 0), "{vm}");
        assert_eq!(vm["state"], "running", "{vm}");
    }
    assert_eq!(boots(&url, &tenant, "i1"), 2, "one restart, not three");
    // Two concurrent restarts with one key: one runs, the other waits its turn
    // (409 request_in_progress) or gets its answer.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let (u, t) = (format!("{vm_url}/restart"), tenant.clone());
            std::thread::spawn(move || keyed_call("POST", &u, &t, "restart-2", None))
        })
        .collect();
    let answers: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(boots(&url, &tenant, "i1"), 3, "{answers:?}");
    let ran = answers
        .iter()
        .filter(|(st, rep, _)| *st == 200 && !rep)
        .count();
    assert_eq!(ran, 1, "{answers:?}");
    for (st, rep, v) in &answers {
        assert!(
            (*st == 200) || (*st == 409 && v["error"]["code"] == "request_in_progress" && !rep),
            "{answers:?}"
        );
    }
    // Keys are per tenant: another tenant's "restart-1" is its own.
    let (st, t) = http(
        "PUT",
        &format!("{url}/tenants/second"),
        Some(operator.trim()),
        None,
    );
    assert_eq!(st, 200, "{t}");
    let second = t["credential"].as_str().unwrap().to_string();
    let (st, replayed, vm) = keyed_call("PUT", &vm_url, &second, "restart-1", Some(&body));
    assert_eq!((st, replayed), (200, false), "{vm}");
    assert_ne!(vm["id"], first["id"]);
    // Delete retried: 204 both times (a plain second delete would be 404).
    for i in 0..2 {
        let (st, replayed, _) = keyed_call("DELETE", &vm_url, &tenant, "delete-1", None);
        assert_eq!((st, replayed), (204, i > 0));
    }
    assert_eq!(http("GET", &vm_url, Some(&tenant), None).0, 404);
    assert_eq!(http("DELETE", &vm_url, Some(&tenant), None).0, 404);
    // The CLI's own keys: a VM created, started, stopped and deleted through it.
    for args in [
        vec![
            "vm",
            "create",
            "i2",
            "--size",
            "Standard_DC2as_v5",
            "--image",
            "debian-12",
            "--disk-encryption",
            "none",
        ],
        vec!["vm", "start", "i2"],
        vec!["vm", "stop", "i2"],
        vec!["vm", "delete", "i2"],
    ] {
        let o = cvm(&[&args[..], &["--state", d.join("up").to_str().unwrap()]].concat());
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The `qemu` backend: after the attested steps a real guest runs under QEMU (TCG)
/// with OVMF's Secure Boot build enforcing the VM's own db/dbx and the VM's vTPM as
/// its TPM: Debian's signed shim, GRUB and kernel boot, the guest's initramfs prints
/// the PCRs its kernel reads from the vTPM and the firmware's event log, and PCR 7 is
/// the value the `secure_boot` step predicted and the log replays to. The console is
/// the VM's (`cvm vm console`); a stop ends QEMU and the vTPM; a start again reopens
/// the same VMGS; a host launching with a debug policy is refused at attestation and
/// QEMU never starts.
#[test]
fn a_guest_boots_under_qemu_after_attestation_with_its_own_secure_boot_and_vtpm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = common::esp::fixtures();
    common::qemu::initramfs(d, true);
    let disk = common::qemu::os_disk(
        d,
        "guest",
        &f.join("shimx64.efi.signed"),
        &f.join("grubx64.efi.signed"),
        Some(b"root"),
    );
    let state = d.join("up");
    let platform = up(
        &state,
        &["--hosts", "1", "--regions", "eastus", "--backend", "qemu"],
    );
    assert!(
        platform.stdout.iter().any(|l| l.contains("backend qemu")),
        "{:?}",
        platform.stdout
    );
    let (code, img) = cli(
        &platform,
        &["image", "import", "debian-12", disk.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{img}");
    let create = |name: &str| {
        let (code, vm) = cli(
            &platform,
            &[
                "vm",
                "create",
                name,
                "--size",
                "Standard_DC2as_v5",
                "--image",
                "debian-12",
                "--disk-encryption",
                "none",
            ],
        );
        assert_eq!(code, 0, "{vm}");
        vm
    };
    let vm = create("q1");
    let vm_dir = state
        .join("hosts/host-1/vms")
        .join(vm["id"].as_str().unwrap());
    let (code, started) = cli(&platform, &["vm", "start", "q1"]);
    assert_eq!(
        (code, started["state"].as_str()),
        (0, Some("running")),
        "{started}"
    );
    assert_eq!(
        steps_since(&platform, "q1", 0),
        [
            "validate",
            "place",
            "start",
            "launch",
            "attest",
            "vmgs_key_release",
            "vmgs",
            "vtpm",
            "secure_boot",
            "guest",
            "running"
        ]
        .map(|s| (s.to_string(), "ok".to_string()))
    );
    let (_, events) = cli(&platform, &["vm", "events", "q1"]);
    let detail = |step: &str| {
        events["value"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e["step"] == step)
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let predicted = detail("secure_boot")
        .split("PCR 7 predicted ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        detail("guest").contains("OVMF's Secure Boot build"),
        "{events}"
    );
    // The guest's own report on its console, followed as it prints.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(["vm", "console", "q1", "--follow", "--state"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    std::thread::spawn({
        let (out, lines) = (follow.stdout.take().unwrap(), lines.clone());
        move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let mut all = lines.lock().unwrap();
                all.push_str(&l);
                all.push('\n');
            }
        }
    });
    for _ in 0..240 {
        if lines.lock().unwrap().contains("OPENCVM-EVENTLOG-END") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let followed = lines.lock().unwrap().clone();
    assert!(followed.contains("OPENCVM-EVENTLOG-END"), "{followed}");
    assert_eq!(
        followed.matches("OPENCVM-EVENTLOG-BEGIN").count(),
        1,
        "each line is printed once"
    );
    let (code, console) = cli(&platform, &["vm", "console", "q1"]);
    assert_eq!(code, 0, "{console}");
    let text = console["text"].as_str().unwrap();
    assert!(text.contains("OPENCVM-EVENTLOG-END"), "{text}");
    assert_eq!(console["stage"], "kernel", "{console}");
    let (log, pcrs) = common::qemu::guest_report(text);
    assert_eq!(
        pcrs["7"], predicted,
        "the guest's PCR 7 is the predicted one"
    );
    let log_file = d.join("guest.log.bin");
    std::fs::write(&log_file, &log).unwrap();
    let o = cvm(&["eventlog", "replay", "--json", log_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let replay: Value = serde_json::from_slice(&o.stdout).unwrap();
    for i in ["0", "4", "7"] {
        assert_eq!(
            replay["pcrs"]["sha256"][i].as_str().unwrap().to_lowercase(),
            pcrs[i],
            "PCR {i}: the event log replays to what the guest read from the vTPM"
        );
    }
    // Attested while it runs.
    let (code, t) = cli(&platform, &["vm", "attest", "q1", "--nonce", "0a0b"]);
    assert_eq!((code, t["nonce"].as_str()), (0, Some("0a0b")), "{t}");
    // Stop: QEMU and the vTPM end.
    let qemus = || {
        let o = Command::new("pgrep")
            .args(["-f", &format!("qemu-system-x86_64.*{}", vm_dir.display())])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    assert_eq!(qemus(), 1);
    let (code, stopped) = cli(&platform, &["vm", "stop", "q1"]);
    assert_eq!(
        (code, stopped["state"].as_str()),
        (0, Some("stopped")),
        "{stopped}"
    );
    assert_eq!(qemus(), 0);
    assert_eq!(vtpms(&state).len(), 0);
    // Started again: the same VMGS, opened (not created), its guest running again.
    let before = events["value"].as_array().unwrap().len();
    let (code, again) = cli(&platform, &["vm", "start", "q1"]);
    assert_eq!(
        (code, again["state"].as_str()),
        (0, Some("running")),
        "{again}"
    );
    let (_, events) = cli(&platform, &["vm", "events", "q1"]);
    let vmgs = events["value"].as_array().unwrap()[before..]
        .iter()
        .find(|e| e["step"] == "vmgs")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(vmgs.starts_with("opened "), "{vmgs}");
    assert_eq!(qemus(), 1);
    // A host launching guests with a debug policy: refused at attestation, QEMU
    // never started for it.
    let bad = create("q2");
    std::fs::write(
        state.join("hosts/host-1").join(host::LAUNCHER_CONFIG),
        r#"{"guest_policy": "0xB0000"}"#,
    )
    .unwrap();
    let (code, failed) = cli(&platform, &["vm", "start", "q2"]);
    assert_eq!(code, 1, "{failed}");
    assert_eq!(
        failed["lastFailure"]["code"], "attestation_denied",
        "{failed}"
    );
    let bad_dir = state
        .join("hosts/host-1/vms")
        .join(bad["id"].as_str().unwrap());
    assert!(!bad_dir.join(host::qemu::CONSOLE).exists());
    let (code, e) = cli(&platform, &["vm", "console", "q2"]);
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (1, Some("no_console")),
        "{e}"
    );
    std::fs::remove_file(state.join("hosts/host-1").join(host::LAUNCHER_CONFIG)).unwrap();
    // Delete: QEMU, the vTPM and the VM's files go.
    let (code, _) = cli(&platform, &["vm", "delete", "q1"]);
    assert_eq!(code, 0);
    assert_eq!(qemus(), 0);
    assert!(!vm_dir.exists());
}

/// What the guest's console shows of its last boot (after the agent's last mark),
/// once it reaches Debian's login prompt, a failure, or `secs` pass.
fn last_boot_console(platform: &Up, name: &str, secs: u64) -> String {
    console_until(
        platform,
        name,
        &[
            "login:",
            "Kernel panic",
            "emergency mode",
            "Security Violation",
        ],
        secs,
    )
}

/// Writes `files` (path, bytes) into the root file system (partition 2) of the raw
/// GPT image `img` with debugfs, making their directories.
fn put_files(img: &Path, files: &[(&str, &[u8])]) {
    let table = Command::new("sfdisk")
        .args(["--json"])
        .arg(img)
        .output()
        .unwrap();
    let table: Value = serde_json::from_slice(&table.stdout).unwrap();
    let start = table["partitiontable"]["partitions"][1]["start"]
        .as_u64()
        .unwrap();
    let root = format!("{}?offset={}", img.display(), start * 512);
    let local = tempfile::tempdir().unwrap();
    let mut script = String::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (i, (path, bytes)) in files.iter().enumerate() {
        let mut d = Path::new(path).parent().unwrap();
        while d != Path::new("/") {
            dirs.insert(d.to_path_buf());
            d = d.parent().unwrap();
        }
        let f = local.path().join(i.to_string());
        std::fs::write(&f, bytes).unwrap();
        script.push_str(&format!("write {} {path}\n", f.display()));
    }
    let mkdirs: String = dirs
        .iter()
        .map(|d| format!("mkdir {}\n", d.display()))
        .collect();
    let cmds = local.path().join("cmds");
    std::fs::write(&cmds, mkdirs + &script).unwrap();
    let o = Command::new("debugfs")
        .args(["-w", "-f"])
        .arg(&cmds)
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (path, bytes) in files {
        let o = Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&root)
            .output()
            .unwrap();
        assert_eq!(&o.stdout, bytes, "{path} in the image");
    }
}

/// The platform key vault of `cvm up`'s `state`: its URL and administrator token.
fn platform_vault(state: &Path) -> (String, String) {
    let url = format!(
        "http://{}",
        std::fs::read_to_string(state.join("keyvault.listen"))
            .unwrap()
            .trim()
    );
    let admin = std::fs::read_to_string(state.join("secrets/platform-vault-admin.token")).unwrap();
    (url, admin)
}

/// The attestation service's URL, as `cvm up` printed it.
fn attestation_url(platform: &Up) -> String {
    platform
        .stdout
        .iter()
        .find_map(|l| l.trim().strip_prefix("attestation"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string()
}

/// The claims of `token`, checked by PyJWT against the JWKS of the attestation
/// service at `attest_url` (its issuer).
fn pyjwt_claims(attest_url: &str, token: &str) -> Value {
    let py = Command::new("python3")
        .args([
            "-c",
            "import jwt, json, sys\n\
             jwks = jwt.PyJWKClient(sys.argv[1] + '/certs')\n\
             key = jwks.get_signing_key_from_jwt(sys.argv[2])\n\
             c = jwt.decode(sys.argv[2], key.key, algorithms=['RS256', 'ES384'], issuer=sys.argv[1], options={'verify_aud': False})\n\
             print(json.dumps(c))",
            attest_url,
            token,
        ])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    serde_json::from_slice(&py.stdout).unwrap()
}

/// The console of the VM's last boot once it shows one of `marks` (or `secs` pass).
fn console_until(platform: &Up, name: &str, marks: &[&str], secs: u64) -> String {
    let mut text = String::new();
    for _ in 0..secs {
        let (code, console) = cli(platform, &["vm", "console", name]);
        assert_eq!(code, 0, "{console}");
        let all = console["text"]
            .as_str()
            .unwrap_or_default()
            .replace('\r', "");
        text = all
            .rsplit_once(host::qemu::BOOT_MARK)
            .map_or(all.as_str(), |(_, t)| t)
            .to_string();
        if marks.iter().any(|m| text.contains(m)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    text
}

/// Whether a boot's console shows the guest's initramfs opening its LUKS2 root:
/// systemd found the volume by the pre-encryption's label and finished
/// `systemd-cryptsetup@root.service` ("Cryptography Setup for root"; systemd
/// shortens the unit's name to the console's width).
fn opened_root(console: &str) -> bool {
    let lines: Vec<&str> = console.lines().collect();
    lines
        .iter()
        .any(|l| l.contains("Found device") && l.contains(disk::os::ROOT_LABEL))
        && lines
            .iter()
            .any(|l| l.contains("Finished") && l.contains("Cryptography Setup for root"))
}

/// Issue 16's proof on the Debian image `cvm image build` makes: a VM created with
/// an encrypted OS disk (pre-encrypted at create) starts on a `qemu` host through
/// the attested steps, and the guest's own initramfs (dracut, systemd-cryptsetup)
/// opens its LUKS2 root with the key its vTPM unseals under PCR 7 as its firmware
/// measured the boot; Debian comes up to its login prompt. Stopped (an ACPI
/// power-down the guest answers) and started again, the root opens again from the
/// same VMGS, its key rotated. (The same image in clear boots to its login prompt
/// in `image_cli`: the crypttab line finds no volume and is passed over.)
#[test]
fn an_encrypted_debian_guest_opens_its_own_root_through_its_vtpm_under_qemu() {
    let (built, _) = common::qemu::debian_image();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("up");
    let platform = up(
        &state,
        &["--hosts", "1", "--regions", "eastus", "--backend", "qemu"],
    );
    // The image's owner names the keys its guest releases at boot, and pins the
    // platform vault's release signer, in the image's own files (debugfs, on a copy).
    let img = dir.path().join("debian-keys.img");
    std::fs::copy(&built, &img).unwrap();
    let keys = json!({
        "vault_signer": "/etc/opencvm/vault-signer.pem",
        "keys": [{"name": "app-key"}, {"name": "other-key"}, {"name": "foreign-key"},
                 {"name": "no-such-key"}, {"name": "vm-x-vmgs"}],
    });
    put_files(
        &img,
        &[
            ("/etc/opencvm/keys.json", keys.to_string().as_bytes()),
            (
                "/etc/opencvm/vault-signer.pem",
                &std::fs::read(state.join("keyvault/release-signer.pem")).unwrap(),
            ),
        ],
    );
    let (code, out) = cli(
        &platform,
        &["image", "import", "debian-12", img.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    let (code, vm) = cli(
        &platform,
        &[
            "vm",
            "create",
            "enc",
            "--size",
            "Standard_DC2as_v5",
            "--image",
            "debian-12",
            "--disk-encryption",
            "platform-key",
        ],
    );
    assert_eq!((code, vm["state"].as_str()), (0, Some("stopped")), "{vm}");
    // Keys in the platform vault, tagged for the local tenant's guests: one whose
    // release policy names this VM (the guest's own `azurevm` token, its HOST_DATA
    // inside `x-ms-isolation-tee`), one naming another VM.
    let (vault, admin) = platform_vault(&state);
    let attest_url = attestation_url(&platform);
    let material: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(29) ^ 0xa5).collect();
    let import = |name: &str, host_data: &str, tenant: &str| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let policy = json!({"version": "1.0.0", "anyOf": [{"authority": attest_url, "allOf": [
            {"claim": "x-ms-attestation-type", "equals": "azurevm"},
            {"claim": "x-ms-azurevm-secureboot", "equals": true},
            {"claim": "x-ms-isolation-tee.x-ms-sevsnpvm-hostdata", "equals": host_data}]}]});
        let (st, k) = http(
            "PUT",
            &format!("{vault}/keys/{name}"),
            Some(admin.trim()),
            Some(&json!({
                "key": {"kty": "oct", "k": b64.encode(&material)},
                "attributes": {"exportable": true},
                "tags": {"opencvm-tenant": tenant},
                "release_policy": {
                    "contentType": "application/json; charset=utf-8",
                    "data": b64.encode(policy.to_string()),
                },
            })),
        );
        assert_eq!(st, 200, "{k}");
        k["key"]["kid"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    };
    let id = vm["id"].as_str().unwrap().to_string();
    let app_version = import("app-key", &hex::encode(host::host_data(&id)), "local");
    import("other-key", &"ab".repeat(32), "local");
    // Named for this VM, but tagged for another tenant's guests.
    import(
        "foreign-key",
        &hex::encode(host::host_data(&id)),
        "someone-else",
    );
    let (code, started) = cli(&platform, &["vm", "start", "enc"]);
    assert_eq!(
        (code, started["state"].as_str()),
        (0, Some("running")),
        "{started}"
    );
    let steps: Vec<String> = steps_since(&platform, "enc", 0)
        .into_iter()
        .map(|(s, o)| {
            assert_eq!(o, "ok", "{s}");
            s
        })
        .collect();
    let tail: Vec<&str> = steps.iter().map(String::as_str).collect();
    assert!(
        tail.ends_with(&["vtpm", "secure_boot", "disk_unlock", "guest", "running"]),
        "{steps:?}"
    );
    let console = last_boot_console(&platform, "enc", 420);
    // The guest's own systemd opened the root in its initramfs, through the vTPM,
    // and mounted it (the root file system is only inside the LUKS2 volume).
    assert!(opened_root(&console), "{console}");
    assert!(console.contains("debian login:"), "{console}");
    assert!(!console.contains("Please enter passphrase"), "{console}");
    let (_, events) = cli(&platform, &["vm", "events", "enc"]);
    let details = |step: &str| -> Vec<String> {
        events["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["step"] == step)
            .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let unlock = details("disk_unlock");
    assert!(
        unlock[0].contains("released to the token") && unlock[0].contains("opens it itself"),
        "{unlock:?}"
    );

    // The guest agent (`cvm-guest`, in the image) reports that the root is the open
    // LUKS2 volume, and attests with the guest's own evidence: its vTPM's HCL
    // report, a quote of its PCRs and its firmware's event log, through the host
    // agent's channel (the guest has no network).
    let console = console_until(
        &platform,
        "enc",
        &[guest_agent::READY_LINE, "opencvm-guest: attestation failed"],
        180,
    );
    assert!(
        console.contains("opencvm-guest: the root file system is on the open LUKS2 volume root"),
        "{console}"
    );
    assert!(console.contains(guest_agent::READY_LINE), "{console}");
    assert!(
        console.contains("x-ms-attestation-type=\"azurevm\" x-ms-azurevm-secureboot=true"),
        "{console}"
    );
    let (_, shown) = cli(&platform, &["vm", "console", "enc"]);
    assert_eq!(shown["stage"], "guest agent ready", "{shown}");
    // Secure key release inside the guest: the key named for this VM is released to
    // the guest's own token and unwrapped by its vTPM (the console shows a
    // fingerprint, never the key); the key of another VM is refused by the vault, and
    // the VM's own platform keys by the host agent.
    let fingerprint = hex::encode(&common::sha256(&material)[..8]);
    assert!(
        console.contains(&format!(
            "opencvm-guest: released key app-key version {app_version} (32 bytes, fingerprint {fingerprint}) to /run/opencvm/keys/app-key"
        )),
        "{console}"
    );
    let other = console
        .lines()
        .find(|l| l.contains("key other-key not released"))
        .unwrap_or_default();
    assert!(
        other.contains("release_policy_denied") || other.contains("release policy"),
        "{console}"
    );
    // Keys of another tenant, and keys that do not exist, are refused alike by the
    // host agent (the guest learns nothing of other tenants' keys).
    for k in ["foreign-key", "no-such-key"] {
        assert!(
            console.contains(&format!(
                "key {k} not released: the platform vault holds no key {k} for the guests of tenant 'local'"
            )),
            "{console}"
        );
    }
    assert!(
        console.contains(
            "key vm-x-vmgs not released: the VM's own keys (its VMGS and disk keys, vm-*, and its customer key) are not released to its guest"
        ),
        "{console}"
    );
    assert!(!console.contains(&hex::encode(&material)), "{console}");
    // `cvm vm attest` asks the guest agent: a token of the guest's own evidence with
    // our nonce in its report, checked by PyJWT. Secure Boot on, the event log
    // replayed against the quoted PCRs, the VM's id from its vTPM's report.
    let nonce = "c0ffee00112233445566778899aabbcc";
    let (code, t) = cli(&platform, &["vm", "attest", "enc", "--nonce", nonce]);
    assert_eq!(code, 0, "{t}");
    let claims = pyjwt_claims(&attestation_url(&platform), t["token"].as_str().unwrap());
    assert_eq!(claims["x-ms-attestation-type"], "azurevm", "{claims}");
    assert_eq!(claims["x-ms-azurevm-secureboot"], true, "{claims}");
    assert_eq!(claims["x-ms-azurevm-eventlog-verified"], true, "{claims}");
    assert_eq!(
        claims["x-ms-azurevm-attested-pcrs"],
        json!((0..24).collect::<Vec<u32>>()),
        "{claims}"
    );
    let id = id.as_str();
    assert_eq!(
        claims["x-ms-azurevm-vmid"]
            .as_str()
            .map(|v| v.replace('-', "").to_lowercase()),
        Some(id.to_string()),
        "{claims}"
    );
    // The SNP report's runtime claims (the vTPM's, bound by REPORT_DATA).
    let runtime = &claims["x-ms-isolation-tee"]["x-ms-runtime"];
    let user_data = runtime["user-data"].as_str().unwrap_or_default();
    assert_eq!(
        user_data,
        format!("{}{}", nonce.to_uppercase(), "0".repeat(128 - nonce.len())),
        "{claims}"
    );
    assert_eq!(
        claims["x-ms-isolation-tee"]["x-ms-sevsnpvm-hostdata"],
        hex::encode(host::host_data(id)),
        "{claims}"
    );
    let ek_of = |runtime: &Value| -> String {
        runtime["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == "HCLEkPub")
            .unwrap()["n"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ek = ek_of(runtime);

    // Stopped: the guest answers the ACPI power-down and powers off.
    let (code, stopped) = cli(&platform, &["vm", "stop", "enc"]);
    assert_eq!(
        (code, stopped["state"].as_str()),
        (0, Some("stopped")),
        "{stopped}"
    );
    let (_, console) = cli(&platform, &["vm", "console", "enc"]);
    let text = console["text"].as_str().unwrap().replace('\r', "");
    assert!(text.contains("reboot: Power down"), "{text}");

    // Started again: the VMGS opened (not made) with its key rotated, the disk
    // unsealed by the vTPM (no key released), and the guest opens its root again.
    let (code, again) = cli(&platform, &["vm", "start", "enc"]);
    assert_eq!(
        (code, again["state"].as_str()),
        (0, Some("running")),
        "{again}"
    );
    let (_, events) = cli(&platform, &["vm", "events", "enc"]);
    let last = |step: &str| -> String {
        events["value"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e["step"] == step)
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(last("vmgs").starts_with("opened "), "{}", last("vmgs"));
    assert!(last("vmgs").contains("rotated"), "{}", last("vmgs"));
    assert!(
        last("disk_unlock").contains("unsealed by the vTPM"),
        "{}",
        last("disk_unlock")
    );
    let console = last_boot_console(&platform, "enc", 420);
    assert!(
        opened_root(&console) && console.contains("debian login:"),
        "{console}"
    );
    // The same vTPM: the guest's fresh token names the same endorsement key.
    let console = console_until(&platform, "enc", &[guest_agent::READY_LINE], 180);
    assert!(console.contains(guest_agent::READY_LINE), "{console}");
    let (code, t) = cli(&platform, &["vm", "attest", "enc", "--nonce", "0b"]);
    assert_eq!(code, 0, "{t}");
    let claims = pyjwt_claims(&attestation_url(&platform), t["token"].as_str().unwrap());
    assert_eq!(claims["x-ms-attestation-type"], "azurevm", "{claims}");
    assert_eq!(ek_of(&claims["x-ms-isolation-tee"]["x-ms-runtime"]), ek);

    let (code, _) = cli(&platform, &["vm", "delete", "enc"]);
    assert_eq!(code, 0);
}

/// Saga takeover between replicas: a replica (`cvm control serve`) killed with -9
/// while it runs a VM's start leaves the VM `starting` under a lease it no longer
/// renews; once the lease runs out (`--saga-lease 5`), another replica on the same
/// PostgreSQL database takes the start over and boots the VM through its host's agent:
/// it ends `running` with one vTPM, its events saying the start was taken over. Trials
/// go on until three kills landed during a start (at most twelve).
#[test]
fn a_start_whose_replica_died_is_taken_over_by_another() {
    let Some(pg) = sqldb::scratch::postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("up");
    let lease = ["--saga-lease", "5"];
    let a = up(
        &state,
        &[
            "--hosts",
            "1",
            "--regions",
            "eastus",
            "--host-agents",
            "external",
            "--database",
            &pg.url,
            lease[0],
            lease[1],
        ],
    );
    let _agent = host_agent(&state, "host-1", &[]);
    let tenant = std::fs::read_to_string(state.join("tenant.token")).unwrap();
    let disk = debian_disk(d, "debian");
    let (code, img) = cli(
        &a,
        &["image", "import", "debian-12", disk.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{img}");
    let mut body = create_request("Standard_DC2as_v5");
    body["osDisk"]["securityEncryptionType"] = json!("VMGuestStateOnly");
    let (st, vm) = http(
        "PUT",
        &format!("{}/vms/t1", a.url),
        Some(&tenant),
        Some(&body),
    );
    assert_eq!(st, 200, "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    let state_of = |url: &str| -> String {
        let (_, vm) = http("GET", &format!("{url}/vms/t1"), Some(&tenant), None);
        vm["state"].as_str().unwrap_or_default().to_string()
    };
    let mut taken_over = 0;
    for _ in 0..12 {
        let mut b = replica(&d.join("b"), &pg.url, &lease);
        let url = b.url.clone();
        // Its answer may never come (b is killed): the error is not the test's.
        let starter = std::thread::spawn({
            let tenant = tenant.clone();
            move || {
                common::agent()
                    .post(format!("{url}/vms/t1/start"))
                    .header("Authorization", format!("Bearer {tenant}"))
                    .send(&b"{}"[..])
                    .is_ok()
            }
        });
        // Killed as soon as the start is under way.
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(10) {
            match state_of(&a.url).as_str() {
                "starting" | "running" | "failed" => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        b.child.kill().unwrap();
        b.child.wait().unwrap();
        let _ = starter.join();
        // Still `starting` once b is gone: b's saga was cut off.
        let mid_start = state_of(&a.url) == "starting";
        // Whatever the kill interrupted, the VM settles without replica b.
        let mut settled = String::new();
        for _ in 0..300 {
            settled = state_of(&a.url);
            if settled != "starting" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(settled, "running", "the VM did not settle running");
        assert_eq!(
            vtpms(&state).get(&id).copied(),
            Some(1),
            "one vTPM for the running VM"
        );
        let (_, events) = http(
            "GET",
            &format!("{}/vms/t1/events", a.url),
            Some(&tenant),
            None,
        );
        let took = events["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["detail"]
                    .as_str()
                    .is_some_and(|t| t.contains("its start was taken over"))
            })
            .count();
        if mid_start {
            assert!(
                took > taken_over,
                "a start killed mid-way was not taken over: {events}"
            );
            taken_over = took;
        }
        let (st, vm) = http(
            "POST",
            &format!("{}/vms/t1/stop", a.url),
            Some(&tenant),
            None,
        );
        assert_eq!((st, vm["state"].as_str()), (200, Some("stopped")), "{vm}");
        assert_eq!(vtpms(&state).get(&id), None);
        if taken_over >= 3 {
            break;
        }
    }
    assert!(
        taken_over >= 3,
        "only {taken_over} kills landed during a start"
    );

    // A stop and a delete that a dead replica left: the VM's state and an expired
    // lease of a replica that no longer exists, as such a replica leaves them in the
    // database. Another replica finishes each.
    let (st, vm) = http(
        "POST",
        &format!("{}/vms/t1/start", a.url),
        Some(&tenant),
        None,
    );
    assert_eq!((st, vm["state"].as_str()), (200, Some("running")), "{vm}");
    // What a replica that died mid-saga leaves: the VM in the saga's state (`from`,
    // what the VM was, becomes `to`) under an expired lease of a replica that no
    // longer exists.
    let plant = |id: &str, from: &str, to: &str| {
        use sqldb::Queries as _;
        let mut conn = sqldb::Conn::open(&pg.location).unwrap();
        let mut tx = conn.write().unwrap();
        let n = tx
            .execute(
                "UPDATE vms SET state = ?3,
                   body = replace(body, '\"state\":\"' || ?2 || '\"', '\"state\":\"' || ?3 || '\"')
                 WHERE id = ?1 AND state = ?2",
                sqldb::args![id, from, to],
            )
            .unwrap();
        assert_eq!(n, 1, "{id} was not {from}");
        tx.execute(
            "INSERT INTO saga_leases (vm, owner, until_ms) VALUES (?1, 'replica-dead', 1)
             ON CONFLICT (vm) DO UPDATE SET owner = 'replica-dead', until_ms = 1",
            sqldb::args![id],
        )
        .unwrap();
        tx.commit().unwrap();
    };
    let settle = |from: &str| -> (String, Value) {
        for _ in 0..100 {
            let (st, vm) = http("GET", &format!("{}/vms/t1", a.url), Some(&tenant), None);
            if st == 404 {
                return ("gone".into(), vm);
            }
            if vm["state"] != from {
                return (vm["state"].as_str().unwrap_or_default().to_string(), vm);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        (from.to_string(), Value::Null)
    };
    plant(&id, "running", "stopping");
    let (now, vm) = settle("stopping");
    assert_eq!(now, "stopped", "{vm}");
    assert_eq!(vtpms(&state).get(&id), None, "the stop reached the agent");
    let (_, events) = http(
        "GET",
        &format!("{}/vms/t1/events", a.url),
        Some(&tenant),
        None,
    );
    assert!(
        events["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["step"] == "stop"
                && e["detail"]
                    .as_str()
                    .is_some_and(|t| t.contains("its stop was taken over"))),
        "{events}"
    );
    plant(&id, "stopped", "deleting");
    let (now, vm) = settle("deleting");
    assert_eq!(now, "gone", "{vm}");
    assert!(
        !state.join("hosts/host-1/vms").join(&id).exists(),
        "the delete reached the agent"
    );
    // A create whose replica died while its disk was being pre-encrypted: another
    // replica does the pre-encryption again (a disk whose pin was never recorded is
    // made anew) and the VM is `stopped`.
    let body = create_request("Standard_DC2as_v5");
    let (st, vm) = http(
        "PUT",
        &format!("{}/vms/t1", a.url),
        Some(&tenant),
        Some(&body),
    );
    assert_eq!(st, 200, "{vm}");
    let vm = wait_vm(&a.url, &tenant, "t1", |v| v["state"] != "creating");
    assert_eq!(vm["state"], "stopped", "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    plant(&id, "stopped", "creating");
    let (now, vm) = settle("creating");
    assert_eq!(now, "stopped", "{vm}");
    let (_, events) = http(
        "GET",
        &format!("{}/vms/t1/events", a.url),
        Some(&tenant),
        None,
    );
    let pre: Vec<&Value> = events["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "disk_pre_encryption")
        .collect();
    assert!(
        pre.len() == 2 && pre.iter().all(|e| e["outcome"] == "ok"),
        "{events}"
    );
}
