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
    assert_eq!(vm["state"], "stopped");
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
            ("disk_pre_encryption", "not_enforced"),
            ("attested_boot", "not_enforced")
        ]
    );
    rec("get_vm", http("GET", &u("/vms/a"), Some(&tenant), None));
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
        ("delete_vm", "DELETE", "/vms/a"),
        ("capture_vm", "POST", "/vms/a/capture"),
        ("migrate_vm", "POST", "/vms/a/migrate"),
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

/// kill -9 of the platform at random moments while four clients create and delete
/// VMs (60 trials): after each restart every VM whose create was answered is there,
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
    let replica = |name: &str| {
        common::spawn(&[
            "control",
            "serve",
            "--state",
            d.join(name).to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--regions",
            "eastus",
            "--database",
            &pg.url,
        ])
    };
    let a = replica("a");
    let b = replica("b");
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
