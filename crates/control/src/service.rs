//! The control plane: who may call (tenants with role-bearing credentials, and the
//! platform operator), the catalog as the API shows it, prices, VMs and their events,
//! hosts, and image artifacts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine as _;
use catalog::PriceTable;
use control_api::{self as api, Access, Operation, codes};
use httpd::ApiError;
use serde_json::json;
use sqldb::Location;
use zeroize::Zeroizing;

use crate::agent::{BootFailure, BootSpec, HostAgent, PreEncrypted, PreEncryption, StepReport};
use crate::store::{
    Created, EventRow, HostRow, ImageRow, PlaceOutcome, Placement, PutHost, Reserved, Store,
    StoreError, VmRow,
};
use crate::validate::{self, Encryption, KeyManagement, VmSpec};

/// A tenant credential's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything in the tenant, including its credentials.
    Administrator,
    /// Create, read and delete VMs (Azure's Contributor).
    Contributor,
    /// Read only.
    Reader,
}

impl Role {
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::Contributor => "contributor",
            Role::Reader => "reader",
        }
    }

    /// The role named `s`.
    pub fn from_name(s: &str) -> Option<Role> {
        [Role::Administrator, Role::Contributor, Role::Reader]
            .into_iter()
            .find(|r| r.name() == s)
    }

    fn admits(self, access: Access) -> bool {
        match access {
            Access::Read => true,
            Access::Write => matches!(self, Role::Administrator | Role::Contributor),
            Access::Admin => self == Role::Administrator,
            Access::Operator => false,
        }
    }
}

/// Who is calling, admitted for one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A tenant's credential.
    Tenant {
        /// The tenant.
        tenant: String,
        /// The credential's role.
        role: Role,
    },
    /// The platform operator.
    Operator,
}

impl Caller {
    fn tenant(&self) -> Result<&str, ApiError> {
        match self {
            Caller::Tenant { tenant, .. } => Ok(tenant),
            Caller::Operator => Err(ApiError::new(
                403,
                "forbidden",
                "the operator's credential manages the platform; use a tenant credential for VMs",
            )),
        }
    }
}

/// How the control plane is set up.
#[derive(Debug)]
pub struct ControlConfig {
    /// State directory: the SQLite database (by default), the operator's credential,
    /// imported image artifacts.
    pub state_dir: PathBuf,
    /// The database; `None` is SQLite at `state_dir/control.db`.
    pub database: Option<Location>,
    /// Regions the platform offers (added to the store at start).
    pub regions: Vec<String>,
    /// The region a request without `location` goes to.
    pub default_region: String,
    /// The price table.
    pub prices: PriceTable,
    /// CA certificates (PEM) that host agents serving HTTPS chain to; `None`: the
    /// Mozilla roots.
    pub agent_ca: Option<Vec<u8>>,
    /// This replica's name in saga leases; `None`: a fresh random one (a process that
    /// restarts under the same name, as `cvm up` does, resumes its own sagas at once).
    pub replica: Option<String>,
    /// How long a saga's lease lasts without renewal: a create, start, stop or delete
    /// whose replica died is taken over by another replica after it
    /// ([`DEFAULT_SAGA_LEASE`]).
    pub saga_lease: std::time::Duration,
}

/// The default lease of a VM's saga (start, stop, delete): a replica renews its
/// leases every third of it.
pub const DEFAULT_SAGA_LEASE: std::time::Duration = std::time::Duration::from_secs(15);

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The state directory.
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration.
    #[error("{0}")]
    Config(String),
}

/// The control plane.
pub struct Control {
    store: std::sync::Arc<Store>,
    /// The agents of hosts that registered one (`cvm host run`).
    remote: std::sync::Arc<dyn HostAgent>,
    /// The same agents, as the pre-encryption service of their hosts' disks.
    remote_agents: std::sync::Arc<crate::remote::RemoteAgents>,
    operator_sha256: Vec<u8>,
    prices: PriceTable,
    default_region: String,
    state_dir: PathBuf,
    agent: std::sync::OnceLock<std::sync::Arc<dyn HostAgent>>,
    pre_encryption: std::sync::OnceLock<std::sync::Arc<dyn PreEncryption>>,
    /// VMs whose disk this process is pre-encrypting (one run per VM at a time).
    pre_encrypting: std::sync::Mutex<std::collections::HashSet<String>>,
    /// This replica's name in saga leases.
    replica: String,
    /// How long a saga lease lasts without renewal.
    saga_lease: std::time::Duration,
    /// VMs whose saga (start, stop, delete) this process runs: one per VM at a time
    /// in a process; between replicas the lease decides.
    booting: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// A tenant's vCPU quota unless its creation names one.
pub const DEFAULT_TENANT_VCPUS: u32 = 512;
/// The largest vCPU quota.
pub const MAX_TENANT_VCPUS: u32 = 1 << 20;

/// The operator's credential file in the state directory.
pub const OPERATOR_TOKEN: &str = "operator.token";

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn random_token() -> Result<Zeroizing<String>, ApiError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| ApiError::internal("random"))?;
    Ok(Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref()),
    ))
}

/// A credential's id: the first 8 bytes of its SHA-256, hex.
fn credential_id(hash: &[u8]) -> String {
    hex::encode(hash.get(..8).unwrap_or(hash))
}

/// Milliseconds since `since`.
fn elapsed_ms(since: Instant) -> i64 {
    i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    let t = time::OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// VM, tenant and host names: 1-64 of letters, digits, `-`, `_` and `.`, starting
/// with a letter or digit (Azure's VM names, which also allow no other characters).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_name(name: &str, what: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad(
            codes::INVALID_NAME,
            format!(
                "'{name}' is not a {what} name: 1-64 letters, digits, '-', '_' and '.', starting with a letter or digit"
            ),
        ))
    }
}

fn store_err(e: StoreError) -> ApiError {
    ApiError::logged("store", e)
}

fn not_found(what: &str, name: &str) -> ApiError {
    ApiError::new(404, "not_found", format!("no {what} named '{name}'"))
}

/// The refusal of a request that failed validation: the first refusal's code and
/// message, every refusal in `detail.refusals`.
fn refused(refusals: &[validate::Refusal]) -> ApiError {
    let Some(first) = refusals.first() else {
        return ApiError::internal("validation");
    };
    let more = match refusals.len() {
        1 => String::new(),
        n => format!(" (and {} more: see detail.refusals)", n - 1),
    };
    let mut detail = json!({ "target": first.target, "refusals": refusals });
    if let Some(f) = first.feature {
        detail["feature"] = json!(f);
    }
    ApiError::bad(first.code, format!("{}{more}", first.message)).with_detail(detail)
}

fn quote_of(
    table: &PriceTable,
    size: &catalog::Size,
    region: &str,
    os: catalog::OsType,
    encrypted: bool,
    disk_gib: u32,
) -> api::PriceQuote {
    let q = table.quote(size, region, os, encrypted, disk_gib);
    api::PriceQuote {
        vm_size: size.name.to_string(),
        location: region.to_string(),
        os_type: os.name().to_string(),
        currency: q.currency,
        compute_per_hour: q.compute_per_hour.units(),
        compute_per_month: q.compute_per_month.units(),
        vmgs_per_month: q.vmgs_per_month.units(),
        encrypted_os_disk_per_month: q.encrypted_os_disk_per_month.units(),
        total_per_month: q.total_per_month.units(),
        hours_per_month: q.hours_per_month,
        lines: q
            .lines
            .into_iter()
            .map(|l| api::PriceLine {
                item: l.item,
                amount: l.amount.units(),
                unit: l.unit,
                as_of: l.provenance.as_of,
                source: l.provenance.source,
            })
            .collect(),
    }
}

fn api_size(s: &catalog::Size) -> api::Size {
    api::Size {
        name: s.name.to_string(),
        series: s.series.name().to_string(),
        v_cpus: s.vcpus,
        memory_gib: s.memory_gib,
        temp_disk_gib: s.temp_disk_gib,
        max_data_disks: s.max_data_disks,
        max_nics: s.max_nics,
        network_mbps: s.network_mbps,
        isolated: s.isolated,
        confidential_computing_type: "SNP".to_string(),
    }
}

fn api_host(h: &HostRow) -> api::Host {
    let u = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    api::Host {
        name: h.name.clone(),
        region: h.region.clone(),
        v_cpus: u(h.vcpus),
        memory_gib: u(h.memory_gib),
        max_vms: u(h.max_vms),
        snp_enabled: h.snp_enabled,
        backend: h.backend.clone(),
        used_v_cpus: u(h.used_vcpus),
        used_memory_gib: u(h.used_memory_gib),
        vms: u(h.vms),
        generation: h.generation,
        agent: None,
    }
}

fn api_image(entry: &catalog::Image, artifact: Option<&ImageRow>) -> api::Image {
    api::Image {
        id: entry.id.to_string(),
        title: entry.title.to_string(),
        os_type: entry.os.name().to_string(),
        secure_boot_template: entry.secure_boot_template.to_string(),
        azure_urn: entry.azure_urn.map(str::to_string),
        buildable: entry.buildable,
        artifact: artifact.map(|a| api::Artifact {
            sha256: a.sha256.clone(),
            bytes: u64::try_from(a.bytes).unwrap_or(0),
            boot_loader_digest: a.boot_loader_digest.clone(),
            imported: a.imported,
        }),
    }
}

fn parse_vm(row: &VmRow) -> Result<api::Vm, ApiError> {
    serde_json::from_str(&row.body).map_err(|e| {
        store_err(StoreError::Corrupt {
            what: format!("vm {}", row.id),
            why: e.to_string(),
        })
    })
}

impl Control {
    /// Opens the control plane's state. On first start the operator's credential is
    /// written to `STATE/operator.token` (0600) and its path returned.
    pub fn open(cfg: ControlConfig) -> Result<(Control, Option<PathBuf>), OpenError> {
        if !cfg.regions.iter().all(|r| catalog::regions::valid_name(r)) {
            return Err(OpenError::Config(
                "a region name is 1-40 lowercase letters and digits".into(),
            ));
        }
        if !cfg.regions.contains(&cfg.default_region) {
            return Err(OpenError::Config(format!(
                "the default region {} is not one of the regions",
                cfg.default_region
            )));
        }
        std::fs::create_dir_all(&cfg.state_dir)?;
        let location = cfg
            .database
            .clone()
            .unwrap_or_else(|| Location::sqlite(&cfg.state_dir.join("control.db")));
        let store = Store::open(&location)?;
        store.ensure_regions(&cfg.regions)?;
        // The operator's credential: written to a pending file (a unique name) before
        // its hash is stored, and renamed into place after, so a kill between the two
        // leaves a file the next start recognises by its hash rather than a stored
        // hash nobody holds.
        let path = cfg.state_dir.join(OPERATOR_TOKEN);
        let holds = |p: &Path, hash: &[u8]| {
            std::fs::read_to_string(p).is_ok_and(|t| sha256(t.trim().as_bytes()) == hash)
        };
        let mut created = None;
        let stored = match store.secret("operator-sha256")? {
            Some(stored) => stored,
            None => {
                let token = random_token().map_err(|e| std::io::Error::other(e.message))?;
                let ours = sha256(token.as_bytes());
                let mut nonce = [0u8; 8];
                aws_lc_rs::rand::fill(&mut nonce)
                    .map_err(|_| std::io::Error::other("no randomness"))?;
                let pending = cfg
                    .state_dir
                    .join(format!("{OPERATOR_TOKEN}.new.{}", hex::encode(nonce)));
                seal::write_secret_file(&pending, token.as_bytes())?;
                store.secret_or_insert("operator-sha256", &ours)?
            }
        };
        // Put in place the pending file that holds the stored credential, unless the
        // file in place already does; remove every other pending file.
        let pending: Vec<PathBuf> = std::fs::read_dir(&cfg.state_dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{OPERATOR_TOKEN}.new.")))
            })
            .collect();
        for p in pending {
            if !holds(&path, &stored) && holds(&p, &stored) {
                std::fs::rename(&p, &path)?;
                created = Some(path.clone());
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
        crate::artifact::remove_stale(&cfg.state_dir.join("images"));
        let store = std::sync::Arc::new(store);
        let remote = crate::remote::RemoteAgents::new(store.clone(), cfg.agent_ca.as_deref())
            .map_err(|e| OpenError::Config(format!("the host agents' CA: {e}")))?;
        let remote = std::sync::Arc::new(remote);
        Ok((
            Control {
                remote: remote.clone(),
                remote_agents: remote,
                store,
                operator_sha256: stored,
                prices: cfg.prices,
                default_region: cfg.default_region,
                state_dir: cfg.state_dir,
                agent: std::sync::OnceLock::new(),
                pre_encryption: std::sync::OnceLock::new(),
                pre_encrypting: std::sync::Mutex::new(std::collections::HashSet::new()),
                replica: match cfg.replica {
                    Some(r) => r,
                    None => {
                        let mut b = [0u8; 8];
                        aws_lc_rs::rand::fill(&mut b).map_err(|_| {
                            OpenError::Config("no randomness for the replica's name".into())
                        })?;
                        format!("replica-{}", hex::encode(b))
                    }
                },
                saga_lease: cfg.saga_lease.max(std::time::Duration::from_secs(1)),
                booting: std::sync::Mutex::new(std::collections::HashSet::new()),
            },
            created,
        ))
    }

    /// This replica's name in saga leases.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Takes the lease on `vm`'s saga (start, stop or delete) for this replica (see
    /// [`Store::lease_take`]) and marks it as running in this process; `None` when
    /// another replica holds it or this process runs a saga of it already.
    fn take_saga(&self, vm: &str) -> Result<Option<SagaGuard<'_>>, ApiError> {
        {
            let mut booting = self
                .booting
                .lock()
                .map_err(|_| ApiError::internal("lock"))?;
            if !booting.insert(vm.to_string()) {
                return Ok(None);
            }
        }
        let mut guard = SagaGuard {
            control: self,
            vm: vm.to_string(),
            leased: false,
        };
        if !self.lease(vm)? {
            return Ok(None);
        }
        guard.leased = true;
        Ok(Some(guard))
    }

    /// Takes the lease on `vm`'s saga for this replica for one lease period
    /// ([`Store::lease_take`]); `false` when another replica holds it.
    fn lease(&self, vm: &str) -> Result<bool, ApiError> {
        let now = unix_ms();
        self.store
            .lease_take(vm, &self.replica, now + lease_ms(self.saga_lease), now)
            .map_err(store_err)
    }

    /// Keeps this replica's sagas going, in a thread of its own: every third of the
    /// lease it renews the leases it holds, and takes over each create, start, stop or
    /// delete whose replica stopped renewing its lease (it died): a start boots the VM
    /// again from `launch`; a create's pre-encryption, a stop and a delete are done
    /// again; each in a thread of its own.
    pub fn keep_sagas(self: &std::sync::Arc<Self>) {
        let c = self.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(c.saga_lease / 3);
                let now = unix_ms();
                // Only the sagas this process runs: a lease left behind (by an
                // earlier life of this replica, or a resume not yet begun) runs out.
                let held: Vec<String> = c
                    .booting
                    .lock()
                    .map(|b| b.iter().cloned().collect())
                    .unwrap_or_default();
                if let Err(e) = c
                    .store
                    .lease_renew(&c.replica, &held, now + lease_ms(c.saga_lease))
                {
                    tracing::warn!("renewing saga leases: {e}");
                    continue;
                }
                let orphaned = match c.store.orphaned_sagas(now) {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!("looking for orphaned sagas: {e}");
                        continue;
                    }
                };
                for row in orphaned {
                    let c = c.clone();
                    std::thread::spawn(move || match c.take_over(&row) {
                        Ok(()) => {
                            tracing::info!(vm = %row.id, "took over an orphaned {}", row.state)
                        }
                        Err(e) if e.status == 409 => {}
                        Err(e) => {
                            tracing::warn!(vm = %row.id, "an orphaned {}: {}", row.state, e.message);
                        }
                    });
                }
            }
        });
    }

    /// Takes over the saga of `row` (`creating`, `starting`, `stopping` or
    /// `deleting`) that another replica left; 409 when another replica took it first.
    fn take_over(&self, row: &VmRow) -> Result<(), ApiError> {
        let why = "the replica running it stopped renewing its lease";
        match row.state.as_str() {
            // Its disk's pre-encryption, done again (from the beginning, or nothing
            // when it was done).
            "creating" => self.finish_creating(&row.id),
            "starting" => self.boot_with(
                row,
                &["starting"],
                Some(event(
                    "resume",
                    "ok",
                    0,
                    format!("its start was taken over: {why}"),
                )),
            ),
            "stopping" | "deleting" => {
                let Some(_saga) = self.take_saga(&row.id)? else {
                    return Err(busy(row));
                };
                // As it is now that the saga is ours.
                let Some(now) = self.store.vm_by_id(&row.id).map_err(store_err)? else {
                    return Ok(());
                };
                match now.state.as_str() {
                    "stopping" => {
                        self.finish_stop(&now, &format!("its stop was taken over ({why}): "))
                    }
                    "deleting" => self.finish_delete(&now),
                    _ => Err(busy(&now)),
                }
            }
            _ => Ok(()),
        }
    }

    /// The store (tests and consistency checks).
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn is_operator(&self, bearer: &str) -> bool {
        let h = sha256(bearer.as_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(&h, &self.operator_sha256).is_ok()
    }

    /// Whether `bearer` is any known credential (the edge's check before a body).
    pub fn authenticated(&self, bearer: Option<&str>) -> bool {
        let Some(b) = bearer else { return false };
        self.is_operator(b)
            || self
                .store
                .credential(&sha256(b.as_bytes()))
                .is_ok_and(|c| c.is_some())
    }

    /// Admits `bearer` for the operation `id` of the contract: 401 for no or an
    /// unknown credential, 403 for one whose role may not.
    pub fn authorize(&self, bearer: Option<&str>, id: &str) -> Result<Caller, ApiError> {
        let op: &Operation =
            control_api::operation(id).ok_or_else(|| ApiError::internal("operation"))?;
        let unauthorized = || {
            ApiError::new(
                401,
                "unauthorized",
                "a valid credential is required (Authorization: Bearer ...)",
            )
        };
        let bearer = bearer.ok_or_else(unauthorized)?;
        if self.is_operator(bearer) {
            return match op.access {
                Access::Operator | Access::Read => Ok(Caller::Operator),
                _ => Err(ApiError::new(
                    403,
                    "forbidden",
                    format!(
                        "the operator's credential may not {}; use a tenant credential",
                        op.what
                    ),
                )),
            };
        }
        let (tenant, role) = self
            .store
            .credential(&sha256(bearer.as_bytes()))
            .map_err(store_err)?
            .ok_or_else(unauthorized)?;
        let role = Role::from_name(&role).ok_or_else(|| ApiError::internal("role"))?;
        if !role.admits(op.access) {
            return Err(ApiError::new(
                403,
                "forbidden",
                format!("the {} role may not {}", role.name(), op.what),
            ));
        }
        Ok(Caller::Tenant { tenant, role })
    }

    /// Every size.
    pub fn sizes(&self) -> api::SizeList {
        api::SizeList {
            value: catalog::sizes::ALL.iter().map(api_size).collect(),
        }
    }

    /// Every region with its SNP capacity.
    pub fn regions(&self) -> Result<api::RegionList, ApiError> {
        let hosts = self.store.hosts().map_err(store_err)?;
        let regions = self.store.regions().map_err(store_err)?;
        Ok(api::RegionList {
            value: regions
                .into_iter()
                .map(|name| {
                    let here: Vec<_> = hosts.iter().filter(|h| h.region == name).collect();
                    let snp: Vec<_> = here.iter().filter(|h| h.snp_enabled).collect();
                    api::Region {
                        snp_available: !snp.is_empty(),
                        hosts: u32::try_from(here.len()).unwrap_or(u32::MAX),
                        free_v_cpus: snp
                            .iter()
                            .map(|h| u64::try_from(h.vcpus - h.used_vcpus).unwrap_or(0))
                            .sum(),
                        name,
                    }
                })
                .collect(),
        })
    }

    /// The image catalog with each entry's artifact.
    pub fn images(&self) -> Result<api::ImageList, ApiError> {
        let artifacts = self.store.images().map_err(store_err)?;
        Ok(api::ImageList {
            value: catalog::images::ALL
                .iter()
                .map(|e| api_image(e, artifacts.iter().find(|a| a.id == e.id)))
                .collect(),
        })
    }

    /// A price quote.
    pub fn quote(&self, req: &api::PriceRequest) -> Result<api::PriceQuote, ApiError> {
        let size = catalog::sizes::find(&req.vm_size).ok_or_else(|| {
            ApiError::bad(
                codes::UNKNOWN_SIZE,
                format!(
                    "'{}' is not a confidential VM size (`cvm size list`)",
                    req.vm_size
                ),
            )
        })?;
        let region = req
            .location
            .clone()
            .unwrap_or_else(|| self.default_region.clone());
        self.known_region(&region)?;
        let os = match req.image.as_deref() {
            None => catalog::OsType::Linux,
            Some(i) => {
                catalog::images::find(i)
                    .ok_or_else(|| {
                        ApiError::bad(
                            codes::UNKNOWN_IMAGE,
                            format!("'{i}' is not in the image catalog"),
                        )
                    })?
                    .os
            }
        };
        let encrypted = match req.security_encryption_type.as_deref() {
            None => false,
            Some(t) => {
                Encryption::from_name(t).ok_or_else(|| {
                    ApiError::bad(
                        codes::ENCRYPTION_TYPE,
                        format!("'{t}' is neither VMGuestStateOnly nor DiskWithVMGuestState"),
                    )
                })? == Encryption::DiskWithGuestState
            }
        };
        let gib = req.os_disk_size_gb.unwrap_or(validate::DEFAULT_OS_DISK_GIB);
        if !(1..=validate::MAX_OS_DISK_GIB).contains(&gib) {
            return Err(ApiError::bad(
                codes::INVALID_PARAMETER,
                "the OS disk size must be 1 to 4095 GiB",
            ));
        }
        Ok(quote_of(&self.prices, size, &region, os, encrypted, gib))
    }

    fn known_region(&self, region: &str) -> Result<(), ApiError> {
        let regions = self.store.regions().map_err(store_err)?;
        if regions.iter().any(|r| r == region) {
            return Ok(());
        }
        Err(ApiError::bad(
            codes::UNKNOWN_REGION,
            format!(
                "The region '{region}' is not offered; the regions are {} (`cvm region list`).",
                regions.join(", ")
            ),
        )
        .with_detail(json!({ "target": "location" })))
    }

    /// Creates the caller's VM `name`: validation (every refusal reported), the image
    /// artifact, the region, then placement and the VM's row in one transaction.
    /// An identical request for an existing VM returns it; a different one is refused.
    /// With a pre-encryption service, a `DiskWithVMGuestState` VM is `creating`: the
    /// caller then runs [`Control::finish_creating`] (the server does, in the
    /// background).
    pub fn create_vm(
        &self,
        caller: &Caller,
        name: &str,
        req: &api::CreateVmRequest,
    ) -> Result<api::Vm, ApiError> {
        let tenant = caller.tenant()?;
        check_name(name, "VM")?;
        let started = Instant::now();
        let spec = validate::validate(req, &self.default_region).map_err(|r| refused(&r))?;
        self.known_region(&spec.region)?;
        let artifacts = self.store.images().map_err(store_err)?;
        if !artifacts.iter().any(|a| a.id == spec.image.id) {
            let how = if spec.image.buildable {
                format!(
                    "`cvm image build {}` or `cvm image import {} FILE`",
                    spec.image.id, spec.image.id
                )
            } else {
                format!("`cvm image import {} FILE`", spec.image.id)
            };
            return Err(ApiError::bad(
                codes::IMAGE_NOT_AVAILABLE,
                format!("The image '{}' is in the catalog but has no disk artifact on this platform; an operator provides one with {how}.", spec.image.id),
            )
            .with_detail(json!({ "target": "image" })));
        }
        // With a pre-encryption service, the disk is encrypted before the VM is
        // `stopped`; a customer key that could never open it is refused now.
        let pre_encrypt = spec.encryption == Encryption::DiskWithGuestState
            && self.pre_encryption.get().is_some();
        // (An identical request for an existing VM returns it whatever became of the key.)
        if let (KeyManagement::Customer(k), Some(service)) = (&spec.key, self.pre_encryption.get())
            && self.store.vm(tenant, name).map_err(store_err)?.is_none()
            && let Err(why) = service.check_customer_key(k)
        {
            return Err(ApiError::bad(codes::boot::CUSTOMER_KEY_UNUSABLE, why)
                .with_detail(json!({ "target": "osDisk.customerKey" })));
        }
        let first_state = if pre_encrypt {
            api::VmState::Creating
        } else {
            api::VmState::Stopped
        };
        let validated_ms = elapsed_ms(started);
        let request = serde_json::to_string(req).map_err(|e| ApiError::logged("json", e))?;
        let id = {
            let mut raw = [0u8; 16];
            aws_lc_rs::rand::fill(&mut raw).map_err(|_| ApiError::internal("random"))?;
            hex::encode(raw)
        };
        let created = time::OffsetDateTime::now_utc().unix_timestamp();
        let price = quote_of(
            &self.prices,
            spec.size,
            &spec.region,
            spec.image.os,
            spec.encryption == Encryption::DiskWithGuestState,
            spec.os_disk_gib,
        );
        let vm = |host: Option<String>| api::Vm {
            name: name.to_string(),
            id: id.clone(),
            location: spec.region.clone(),
            vm_size: spec.size.name.to_string(),
            image: spec.image.id.to_string(),
            os_disk_size_gb: spec.os_disk_gib,
            state: first_state,
            last_failure: None,
            host,
            security: security_of(&spec),
            price: price.clone(),
            created,
        };
        let row = VmRow {
            id: id.clone(),
            tenant: tenant.to_string(),
            name: name.to_string(),
            request,
            body: String::new(),
            region: spec.region.clone(),
            vcpus: i64::from(spec.size.vcpus),
            memory_gib: i64::from(spec.size.memory_gib),
            state: first_state.name().to_string(),
            host: None,
            failure: None,
            created,
        };
        let want = Placement {
            region: &spec.region,
            vcpus: i64::from(spec.size.vcpus),
            memory_gib: i64::from(spec.size.memory_gib),
            whole_host: spec.size.isolated,
        };
        let at = now_ms();
        let place_start = Instant::now();
        // Called inside the placing transaction, once the host is known.
        let made = |r: &Reserved| {
            let place_ms = elapsed_ms(place_start);
            let body = serde_json::to_string(&vm(Some(r.host.clone()))).map_err(|e| {
                StoreError::Corrupt {
                    what: "the new VM's body".into(),
                    why: e.to_string(),
                }
            })?;
            Ok((
                body,
                create_events(&spec, at, validated_ms, r, place_ms, pre_encrypt),
            ))
        };
        // A disk to pre-encrypt: the create's saga is this replica's from the start
        // (another takes it over if this one dies before the disk is made).
        if pre_encrypt {
            self.lease(&id)?;
        }
        let outcome = self
            .store
            .create_vm(&row, &want, &made)
            .map_err(store_err)?;
        if pre_encrypt && !matches!(outcome, Created::New(_)) {
            let _ = self.store.lease_release(&id, &self.replica);
        }
        match outcome {
            Created::New(row) | Created::Existing(row) => parse_vm(&row),
            Created::Conflict(_) => Err(ApiError::new(
                409,
                codes::CONFLICT,
                format!("a VM named '{name}' exists with another configuration; delete it first or choose another name"),
            )),
            Created::OverQuota { max_vcpus, used_vcpus } => Err(ApiError::new(
                409,
                codes::QUOTA_EXCEEDED,
                format!(
                    "Operation could not be completed as it results in exceeding the tenant's vCPU quota: its VMs hold {used_vcpus} of {max_vcpus} vCPUs and a {} needs {}. Delete a VM or ask the operator for a larger quota.",
                    spec.size.name, spec.size.vcpus
                ),
            )),
            Created::NotPlaced(PlaceOutcome::NoSnpHost) => Err(ApiError::bad(
                codes::NO_SNP_CAPACITY,
                format!("The region '{}' has no host with AMD SEV-SNP enabled; confidential VMs cannot run there (`cvm region list` shows the regions that have).", spec.region),
            )
            .with_detail(json!({ "target": "location" }))),
            Created::NotPlaced(PlaceOutcome::Full) => Err(ApiError::new(
                409,
                codes::ALLOCATION_FAILED,
                format!("Allocation failed: no SNP host in '{}' has room for a {} ({} vCPUs, {} GiB). Try another size or region.", spec.region, spec.size.name, spec.size.vcpus, spec.size.memory_gib),
            )),
            Created::NotPlaced(PlaceOutcome::Placed { .. }) => Err(ApiError::internal("placement")),
        }
    }

    /// The caller's VMs.
    pub fn list_vms(&self, caller: &Caller) -> Result<api::VmList, ApiError> {
        let rows = self.store.vms(caller.tenant()?).map_err(store_err)?;
        Ok(api::VmList {
            value: rows.iter().map(parse_vm).collect::<Result<_, _>>()?,
        })
    }

    fn vm_row(&self, caller: &Caller, name: &str) -> Result<VmRow, ApiError> {
        self.store
            .vm(caller.tenant()?, name)
            .map_err(store_err)?
            .ok_or_else(|| not_found("VM", name))
    }

    /// The caller's VM `name`.
    pub fn get_vm(&self, caller: &Caller, name: &str) -> Result<api::Vm, ApiError> {
        parse_vm(&self.vm_row(caller, name)?)
    }

    /// Deletes the caller's VM `name` (stopping it first), giving its host's capacity
    /// back and its files on the host removed.
    pub fn delete_vm(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        let row = self.vm_row(caller, name)?;
        if let Some(host) = row.host.as_deref()
            && self.has_agent(host)?
        {
            // Under a lease (another replica finishes the delete if this one dies). A
            // VM `creating` keeps its create's lease: its pre-encryption, which holds
            // it, ends once the VM is `deleting` (awaited below).
            let _saga = if row.state == "creating" {
                None
            } else {
                Some(self.take_saga(&row.id)?.ok_or_else(|| busy(&row))?)
            };
            // `deleting` first: a start that begins meanwhile finds the VM busy, and
            // a delete never removes the files of a VM being booted.
            self.store
                .transition(
                    &row.id,
                    &["creating", "stopped", "failed", "running", "deleting"],
                    api::VmState::Deleting.name(),
                    row.failure.as_deref(),
                    &body_as(api::VmState::Deleting, None),
                    &[event("delete", "ok", 0, format!("deleting on {host}"))],
                )
                .map_err(store_err)?
                .ok_or_else(|| busy(&row))?;
            // A pre-encryption of its disk in progress ends first (it then finds the
            // VM `deleting` and records nothing); its files and key go below.
            self.await_pre_encryption(&row)?;
            return self.finish_delete(&row);
        }
        match self
            .store
            .delete_vm(caller.tenant()?, name)
            .map_err(store_err)?
        {
            true => Ok(()),
            false => Err(not_found("VM", name)),
        }
    }

    /// Lets the VMs' host agents pre-encrypt their OS disks (`cvm host run` serves
    /// it): what a replica without a pre-encryption service of its own uses. Nothing
    /// when one was set already.
    pub fn pre_encrypt_through_agents(&self) {
        let _ = self.pre_encryption.set(self.remote_agents.clone());
    }

    /// Lets `service` pre-encrypt the OS disks of this control plane's VMs (once):
    /// a `DiskWithVMGuestState` VM is then `creating` until its disk is encrypted.
    /// Without it such VMs are created with the step marked `not_enforced`.
    pub fn set_pre_encryption(&self, service: std::sync::Arc<dyn PreEncryption>) {
        let _ = self.pre_encryption.set(service);
    }

    /// Pre-encrypts the OS disk of the VM `vm_id` if it is `creating` (a create
    /// answers at once; its caller runs this in the background, and so does a
    /// restart for a VM whose pre-encryption was interrupted): `stopped` when done,
    /// `failed` with the reason otherwise. Nothing while this process pre-encrypts
    /// that VM already.
    pub fn finish_creating(&self, vm_id: &str) -> Result<(), ApiError> {
        let Some(service) = self.pre_encryption.get() else {
            return Ok(());
        };
        // Under the create's lease (another replica may have taken it over).
        let Some(saga) = self.take_saga(vm_id)? else {
            return Err(ApiError::new(
                409,
                codes::CONFLICT,
                format!("the create of VM {vm_id} is run by another replica or request"),
            ));
        };
        let guard = {
            let mut busy = self
                .pre_encrypting
                .lock()
                .map_err(|_| ApiError::internal("lock"))?;
            if !busy.insert(vm_id.to_string()) {
                return Ok(());
            }
            PreEncrypting {
                set: &self.pre_encrypting,
                id: vm_id.to_string(),
            }
        };
        let result = (|| {
            let Some(row) = self.store.vm_by_id(vm_id).map_err(store_err)? else {
                return Ok(false);
            };
            if row.state != "creating" {
                return Ok(false);
            }
            let started = Instant::now();
            let outcome = self
                .boot_spec(&row)
                .map_err(|e| BootFailure {
                    step: "disk_pre_encryption".into(),
                    code: codes::boot::PRE_ENCRYPTION_FAILED,
                    reason: e.message,
                })
                .and_then(|spec| service.pre_encrypt(&spec));
            let ms = elapsed_ms(started);
            let (to, failure, e) = match outcome {
                Ok(done) => (api::VmState::Stopped, None, pre_encrypted_event(ms, &done)),
                Err(f) => (
                    api::VmState::Failed,
                    Some(recorded_failure(&f)),
                    event("disk_pre_encryption", "failed", ms, f.reason),
                ),
            };
            let (failure, failure_json) = failure.unzip();
            let moved = self
                .store
                .transition(
                    &row.id,
                    &["creating"],
                    to.name(),
                    failure_json.as_deref(),
                    &body_as(to, failure),
                    &[e],
                )
                .map_err(store_err)?;
            Ok(moved.is_none())
        })();
        drop(guard);
        drop(saga);
        // Deleted meanwhile: the delete may have stopped waiting; finish it (twice is
        // harmless: the row goes once).
        if result?
            && let Some(row) = self.store.vm_by_id(vm_id).map_err(store_err)?
            && row.state == "deleting"
        {
            self.finish_delete(&row)?;
        }
        Ok(())
    }

    /// Waits (at most [`PRE_ENCRYPTION_WAIT`]) until this process no longer
    /// pre-encrypts `row`'s disk.
    fn await_pre_encryption(&self, row: &VmRow) -> Result<(), ApiError> {
        let until = Instant::now() + PRE_ENCRYPTION_WAIT;
        while self
            .pre_encrypting
            .lock()
            .map_err(|_| ApiError::internal("lock"))?
            .contains(&row.id)
        {
            if Instant::now() > until {
                return Err(ApiError::new(
                    409,
                    codes::CONFLICT,
                    format!(
                        "the VM '{}' is deleting, and its OS disk's pre-encryption is still running; delete it again in a while",
                        row.name
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// Ends the delete of a `deleting` VM that a restart interrupted: its processes
    /// stop, its files and keys go, then its row.
    fn finish_delete(&self, row: &VmRow) -> Result<(), ApiError> {
        if let Some(host) = row.host.as_deref()
            && self.has_agent(host)?
        {
            // An agent that cannot be reached leaves the VM `deleting`: a delete
            // again finishes it once the agent is back.
            let agent = self.agent()?;
            agent.stop(host, &row.id).map_err(agent_err)?;
            agent.forget(host, &row.id).map_err(agent_err)?;
        }
        self.store.delete_deleting_vm(&row.id).map_err(store_err)?;
        Ok(())
    }

    /// Lets `agent` run the VMs of this control plane's hosts (once).
    pub fn set_agent(&self, agent: std::sync::Arc<dyn HostAgent>) {
        let _ = self.agent.set(agent);
    }

    /// The in-process agent (`cvm up`'s) or, without one, the hosts' registered
    /// agents.
    fn agent(&self) -> Result<&std::sync::Arc<dyn HostAgent>, ApiError> {
        Ok(self.agent.get().unwrap_or(&self.remote))
    }

    /// Whether `host` has an agent: the in-process one, or one registered.
    fn has_agent(&self, host: &str) -> Result<bool, ApiError> {
        Ok(self.agent.get().is_some() || self.store.agent(host).map_err(store_err)?.is_some())
    }

    /// Refuses (409) to start a VM whose host has no agent: no in-process one, and
    /// none registered.
    fn require_agent(&self, row: &VmRow) -> Result<(), ApiError> {
        if self.agent.get().is_some() {
            return Ok(());
        }
        let host = row.host.as_deref().unwrap_or_default();
        match self.store.agent(host).map_err(store_err)? {
            Some(_) => Ok(()),
            None => Err(ApiError::new(
                409,
                codes::HOST_AGENT_UNAVAILABLE,
                format!(
                    "the VM's host {host} has no agent: it is started once the host runs `cvm host run` (or the platform runs as `cvm up`)"
                ),
            )),
        }
    }

    /// Records where `host`'s agent listens ([`crate::remote`]). An agent registers at
    /// each start: the host's VMs recorded `running` whose processes did not survive
    /// (the agent was killed, its machine restarted) are marked `starting` and
    /// returned, to be booted again with [`Control::resume`].
    pub fn register_host_agent(
        &self,
        host: &str,
        req: &api::RegisterAgentRequest,
    ) -> Result<(api::Host, Vec<VmRow>), ApiError> {
        check_name(host, "host")?;
        let url = req.url.trim_end_matches('/');
        // Parsed as the HTTP client will: scheme, a host without user information, a
        // port, no query; plain HTTP only to a loopback address.
        let allowed = url.len() <= 256
            && axum::http::Uri::try_from(url).is_ok_and(|u| {
                let host = u
                    .host()
                    .unwrap_or_default()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let loopback = host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                let clean = u.authority().is_some_and(|a| !a.as_str().contains('@'))
                    && u.query().is_none()
                    && matches!(u.path(), "" | "/");
                clean
                    && match u.scheme_str() {
                        Some("https") => !host.is_empty(),
                        Some("http") => loopback,
                        _ => false,
                    }
            });
        if !allowed {
            return Err(ApiError::bad(
                codes::INVALID_PARAMETER,
                "url is the agent's base URL: https://..., or http:// on loopback only (at most 256 characters)",
            ));
        }
        if req.credential.len() < 32 || req.credential.len() > 512 {
            return Err(ApiError::bad(
                codes::INVALID_PARAMETER,
                "credential is the agent's bearer credential: 32 to 512 characters",
            ));
        }
        let endpoint = crate::store::AgentEndpoint {
            url: url.to_string(),
            credential: Zeroizing::new(req.credential.clone()),
        };
        if !self.store.put_agent(host, &endpoint).map_err(store_err)? {
            return Err(not_found("host", host));
        }
        let mut again = Vec::new();
        for row in self.store.all_vms().map_err(store_err)? {
            if row.host.as_deref() == Some(host)
                && row.state == "running"
                && !self.remote.is_running(host, &row.id)
                && let Some(r) = self.mark_resuming(&row, "its host's agent started again")?
            {
                again.push(r);
            }
        }
        let h = self
            .store
            .host(host)
            .map_err(store_err)?
            .ok_or_else(|| ApiError::internal("a host registered its agent and vanished"))?;
        Ok((self.api_host_row(h)?, again))
    }

    /// `row` (running or starting) marked `starting` with a `resume` event saying
    /// `why`; `None` when another request changed it first.
    fn mark_resuming(&self, row: &VmRow, why: &str) -> Result<Option<VmRow>, ApiError> {
        // The saga becomes this replica's (renewed until it boots the VM): a start
        // another live replica runs is left to it, and if this one dies before it
        // boots the VM, another takes it over.
        if !self.lease(&row.id)? {
            return Ok(None);
        }
        let note = event(
            "resume",
            "ok",
            0,
            format!("the VM was {} when {why}; booting it again", row.state),
        );
        self.store
            .transition(
                &row.id,
                &["running", "starting"],
                "starting",
                None,
                &body_as(api::VmState::Starting, None),
                &[note],
            )
            .map_err(store_err)
            .inspect(|moved| {
                if moved.is_none() {
                    let _ = self.store.lease_release(&row.id, &self.replica);
                }
            })
    }

    /// What the host agent needs to boot `row`, from its creating request.
    fn boot_spec(&self, row: &VmRow) -> Result<BootSpec, ApiError> {
        let req: api::CreateVmRequest = serde_json::from_str(&row.request).map_err(|e| {
            store_err(StoreError::Corrupt {
                what: format!("vm {} request", row.id),
                why: e.to_string(),
            })
        })?;
        let spec = validate::validate(&req, &self.default_region).map_err(|r| refused(&r))?;
        let image = self
            .store
            .images()
            .map_err(store_err)?
            .into_iter()
            .find(|i| i.id == spec.image.id)
            .ok_or_else(|| {
                ApiError::bad(
                    codes::IMAGE_NOT_AVAILABLE,
                    format!(
                        "The image '{}' has no disk artifact on this platform any more; an operator imports one again.",
                        spec.image.id
                    ),
                )
            })?;
        let events = self.store.events(&row.id).map_err(store_err)?;
        let host = row
            .host
            .clone()
            .ok_or_else(|| ApiError::internal("unplaced VM"))?;
        let backend = self
            .store
            .host(&host)
            .map_err(store_err)?
            .map_or_else(|| "emulated".to_string(), |h| h.backend);
        Ok(BootSpec {
            tenant: row.tenant.clone(),
            vm_id: row.id.clone(),
            host,
            backend,
            vcpus: spec.size.vcpus,
            memory_mib: spec.size.memory_gib.saturating_mul(1024),
            secure_boot: spec.secure_boot,
            secure_boot_template: spec.image.secure_boot_template.to_string(),
            image: PathBuf::from(image.path),
            encryption: spec.encryption.name().to_string(),
            customer_key: match &spec.key {
                KeyManagement::Customer(k) => Some(k.clone()),
                KeyManagement::Platform => None,
            },
            attestation_policy: spec.attestation_policy,
            vmgs_created: events.iter().any(|e| e.step == "vmgs" && e.outcome == "ok"),
            disk_pin: events
                .iter()
                .rev()
                .filter(|e| e.step == "disk_pre_encryption" && e.outcome == "ok")
                .find_map(|e| pin_of(&e.detail)),
            disk_bound: events
                .iter()
                .any(|e| e.step == "disk_unlock" && e.outcome == "ok"),
        })
    }

    /// Starts the caller's VM `name`: the attested boot on its host, each step
    /// recorded as it ends; `running`, or `failed` with the step and reason. A running
    /// VM is returned as it is.
    pub fn start_vm(&self, caller: &Caller, name: &str) -> Result<api::Vm, ApiError> {
        let row = self.vm_row(caller, name)?;
        self.require_agent(&row)?;
        let agent = self.agent()?;
        if row.state == "running"
            && row
                .host
                .as_deref()
                .is_some_and(|h| agent.is_running(h, &row.id))
        {
            return parse_vm(&row);
        }
        if !matches!(row.state.as_str(), "stopped" | "failed" | "running") {
            return Err(busy(&row));
        }
        self.boot(&row, &["stopped", "failed", "running"])?;
        self.get_vm(caller, name)
    }

    /// Runs the boot saga of `row` from one of the states `from`.
    fn boot(&self, row: &VmRow, from: &[&str]) -> Result<(), ApiError> {
        self.boot_with(row, from, None)
    }

    /// [`Control::boot`], recording `note` first once the saga is this replica's.
    fn boot_with(
        &self,
        row: &VmRow,
        from: &[&str],
        note: Option<EventRow>,
    ) -> Result<(), ApiError> {
        let agent = self.agent()?;
        // One replica runs a VM's start saga at a time, under a lease it renews.
        let Some(_saga) = self.take_saga(&row.id)? else {
            return Err(busy(row));
        };
        // The row as it is now that the saga is ours (another replica may have
        // finished it meanwhile).
        let row = &match self.store.vm_by_id(&row.id).map_err(store_err)? {
            Some(r) if from.contains(&r.state.as_str()) => r,
            Some(r) => return Err(busy(&r)),
            None => return Err(not_found("VM", &row.name)),
        };
        if let Some(e) = note {
            self.store.append_events(&row.id, &[e]).map_err(store_err)?;
        }
        let spec = match self.boot_spec(row) {
            Ok(spec) => spec,
            Err(e) => {
                // A VM already `starting` (resumed after a restart) must not stay so.
                if row.state == "starting" {
                    self.fail_start(row, "start", e.code, &e.message)?;
                }
                return Err(e);
            }
        };
        let started = Instant::now();
        let begin = event(
            "start",
            "ok",
            0,
            format!("start requested on {}", spec.host),
        );
        let Some(_) = self
            .store
            .transition(
                &row.id,
                from,
                "starting",
                None,
                &body_as(api::VmState::Starting, None),
                &[begin],
            )
            .map_err(store_err)?
        else {
            let now = self.store.vm_by_id(&row.id).map_err(store_err)?;
            return Err(now.map_or_else(|| not_found("VM", &row.name), |r| busy(&r)));
        };
        let store = &self.store;
        let mut record = |s: StepReport| {
            // The control plane's own records are not the agent's to write.
            if s.step == "disk_pre_encryption" {
                return;
            }
            let e = event(&s.step, &s.outcome, s.duration_ms, s.detail);
            if let Err(err) = store.append_events(&row.id, &[e]) {
                tracing::warn!(vm = %row.id, "recording a boot step: {err}");
            }
        };
        // A disk whose pre-encryption failed at create is encrypted now; one that
        // was encrypted once is never made again (a missing disk is refused by the
        // host agent, not replaced by a fresh one).
        let mut spec = spec;
        let outcome = match self.pre_encryption.get() {
            Some(service)
                if spec.encryption == Encryption::DiskWithGuestState.name()
                    && spec.disk_pin.is_none() =>
            {
                let t = Instant::now();
                service.pre_encrypt(&spec).and_then(|done| {
                    // The pin must be on record before the disk is used.
                    let e = pre_encrypted_event(elapsed_ms(t), &done);
                    self.store
                        .append_events(&row.id, &[e])
                        .map_err(|err| BootFailure {
                            step: "disk_pre_encryption".into(),
                            code: codes::boot::PRE_ENCRYPTION_FAILED,
                            reason: format!("recording the disk's pin: {err}"),
                        })?;
                    spec.disk_pin = Some(done.pin);
                    Ok(())
                })
            }
            _ => Ok(()),
        }
        .and_then(|()| agent.start(&spec, &mut record));
        // The agent stops what it started when its boot fails (HostAgent::start's
        // contract); an agent whose answer broke off may not have heard how it ended,
        // so it is asked to stop the VM once more (nothing when it does not run).
        if let Err(f) = &outcome
            && f.code == codes::boot::HOST_AGENT
        {
            let _ = agent.stop(&spec.host, &row.id);
        }
        let total = elapsed_ms(started);
        let (to, failure, last) = match &outcome {
            Ok(()) => (
                api::VmState::Running,
                None,
                event(
                    "running",
                    "ok",
                    total,
                    format!("attested boot done in {total} ms"),
                ),
            ),
            Err(f) => (
                api::VmState::Failed,
                Some(recorded_failure(f)),
                event(
                    "failed",
                    "failed",
                    total,
                    format!("{}: {}", f.step, f.reason),
                ),
            ),
        };
        let (failure, failure_json) = failure.unzip();
        let moved = self
            .store
            .transition(
                &row.id,
                &["starting"],
                to.name(),
                failure_json.as_deref(),
                &body_as(to, failure),
                &[last],
            )
            .map_err(store_err)?;
        if moved.is_none() && outcome.is_ok() {
            // Nothing may move a VM out of `starting` but this boot; if its row is gone
            // or moved anyway, what the boot started must not run on unrecorded.
            agent.stop(&spec.host, &row.id).map_err(agent_err)?;
        }
        Ok(())
    }

    /// Ends a `starting` VM `failed` at `step` with `code` and `reason`.
    fn fail_start(
        &self,
        row: &VmRow,
        step: &str,
        code: &str,
        reason: &str,
    ) -> Result<(), ApiError> {
        let f = api::Failure {
            step: step.to_string(),
            code: code.to_string(),
            reason: reason.to_string(),
            at: time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        let json = serde_json::to_string(&f).map_err(|e| ApiError::logged("json", e))?;
        self.store
            .transition(
                &row.id,
                &["starting"],
                api::VmState::Failed.name(),
                Some(&json),
                &body_as(api::VmState::Failed, Some(f)),
                &[event("failed", "failed", 0, format!("{step}: {reason}"))],
            )
            .map_err(store_err)?;
        Ok(())
    }

    /// Stops the caller's VM `name`: its processes on the host end; `stopped`.
    pub fn stop_vm(&self, caller: &Caller, name: &str) -> Result<api::Vm, ApiError> {
        let row = self.vm_row(caller, name)?;
        self.agent()?;
        match row.state.as_str() {
            "stopped" => return parse_vm(&row),
            "running" | "failed" => {}
            _ => return Err(busy(&row)),
        }
        // One replica stops a VM at a time, under a lease (another takes the stop
        // over if this one dies).
        let Some(_saga) = self.take_saga(&row.id)? else {
            return Err(busy(&row));
        };
        let row = self
            .store
            .transition(
                &row.id,
                &["running", "failed"],
                "stopping",
                row.failure.as_deref(),
                &body_as(api::VmState::Stopping, None),
                &[],
            )
            .map_err(store_err)?
            .ok_or_else(|| busy(&row))?;
        self.finish_stop(&row, "")?;
        self.get_vm(caller, name)
    }

    /// Stops the `stopping` VM `row` on its host and records it `stopped` (or
    /// `failed`, with the agent's reason), `note` first in its event.
    fn finish_stop(&self, row: &VmRow, note: &str) -> Result<(), ApiError> {
        let agent = self.agent()?;
        let host = row
            .host
            .clone()
            .ok_or_else(|| ApiError::internal("unplaced VM"))?;
        let started = Instant::now();
        let stopped = agent.stop(&host, &row.id);
        let ms = elapsed_ms(started);
        let (to, e) = match &stopped {
            Ok(()) => (
                api::VmState::Stopped,
                event("stop", "ok", ms, format!("{note}stopped on {host}")),
            ),
            Err(f) => (
                api::VmState::Failed,
                event("stop", "failed", ms, format!("{note}{f}")),
            ),
        };
        self.store
            .transition(
                &row.id,
                &["stopping"],
                to.name(),
                None,
                &body_as(to, None),
                &[e],
            )
            .map_err(store_err)?;
        stopped.map_err(agent_err)
    }

    /// Stops (if running) and starts the caller's VM `name`.
    pub fn restart_vm(&self, caller: &Caller, name: &str) -> Result<api::Vm, ApiError> {
        self.require_agent(&self.vm_row(caller, name)?)?;
        self.stop_vm(caller, name)?;
        let row = self.vm_row(caller, name)?;
        self.boot(&row, &["stopped"])?;
        self.get_vm(caller, name)
    }

    /// A fresh attestation token of the caller's running VM `name`, its evidence
    /// binding `nonce` (hex, at most 64 bytes) when given.
    pub fn attest_vm(
        &self,
        caller: &Caller,
        name: &str,
        req: &api::AttestVmRequest,
    ) -> Result<api::AttestVmResponse, ApiError> {
        let nonce = match &req.nonce {
            Some(n) => hex::decode(n)
                .ok()
                .filter(|b| !b.is_empty() && b.len() <= 64)
                .ok_or_else(|| {
                    ApiError::bad("bad_request", "nonce is 1 to 64 bytes as hex digits")
                })?,
            None => {
                let mut b = [0u8; 32];
                aws_lc_rs::rand::fill(&mut b).map_err(|_| ApiError::internal("random"))?;
                b.to_vec()
            }
        };
        let row = self.vm_row(caller, name)?;
        let agent = self.agent()?;
        if row.state != "running" {
            return Err(ApiError::new(
                409,
                codes::CONFLICT,
                format!(
                    "the VM '{}' is {}; only a running VM attests",
                    row.name, row.state
                ),
            ));
        }
        let spec = self.boot_spec(&row)?;
        let token = agent.attest(&spec, &nonce).map_err(agent_err)?;
        Ok(api::AttestVmResponse {
            token,
            nonce: hex::encode(&nonce),
        })
    }

    /// After a restart of the control plane and its host agent, before it serves:
    /// every VM that was `running` or `starting` (its processes ended with the old
    /// agent) is marked `starting` again, so no answer shows it running before it is;
    /// one left `stopping` is `stopped`; one left `creating` (its disk's
    /// pre-encryption interrupted) or `deleting` stays so. Returns the VMs to boot,
    /// pre-encrypt or delete with [`Control::resume`].
    pub fn interrupted(&self) -> Result<Vec<VmRow>, ApiError> {
        let agent = self.agent()?;
        let mut again = Vec::new();
        for row in self.store.all_vms().map_err(store_err)? {
            let Some(host) = row.host.as_deref() else {
                continue;
            };
            match row.state.as_str() {
                "running" if agent.is_running(host, &row.id) => {}
                "running" | "starting" => {
                    if let Some(r) = self.mark_resuming(&row, "the platform stopped")? {
                        again.push(r);
                    }
                }
                // Its pre-encryption was interrupted: done again by `resume`.
                "creating" if self.pre_encryption.get().is_some() => again.push(row),
                // Its delete was interrupted: finished by `resume`.
                "deleting" => again.push(row),
                "stopping" => {
                    // An agent that cannot be reached (a host agent of its own,
                    // down) does not keep the platform from starting: the VM is
                    // `failed` with the reason, and a stop or start settles it.
                    let (to, e) = match agent.stop(host, &row.id) {
                        Ok(()) => (
                            api::VmState::Stopped,
                            event(
                                "stop",
                                "ok",
                                0,
                                "stopped after a restart of the platform".into(),
                            ),
                        ),
                        Err(f) => (
                            api::VmState::Failed,
                            event(
                                "stop",
                                "failed",
                                0,
                                format!("after a restart of the platform: {f}"),
                            ),
                        ),
                    };
                    self.store
                        .transition(
                            &row.id,
                            &["stopping"],
                            to.name(),
                            None,
                            &body_as(to, None),
                            &[e],
                        )
                        .map_err(store_err)?;
                }
                _ => {}
            }
        }
        Ok(again)
    }

    /// Boots (or, `creating` ones, pre-encrypts; `deleting` ones, deletes) the VMs
    /// [`Control::interrupted`] returned, one after another; returns how many ended as
    /// asked.
    pub fn resume(&self, vms: &[VmRow]) -> usize {
        vms.iter()
            .filter(|row| {
                if row.state == "deleting" {
                    self.finish_delete(row).is_ok()
                } else if row.state == "creating" {
                    self.finish_creating(&row.id).is_ok()
                        && self
                            .store
                            .vm_by_id(&row.id)
                            .is_ok_and(|r| r.is_some_and(|r| r.state == "stopped"))
                } else {
                    self.boot(row, &["starting"]).is_ok()
                }
            })
            .count()
    }

    /// The end of the caller's VM's guest console (a VM on a `qemu` host), with the
    /// boot stage it shows.
    pub fn vm_console(&self, caller: &Caller, name: &str) -> Result<api::VmConsole, ApiError> {
        let row = self.vm_row(caller, name)?;
        let host = row.host.as_deref().unwrap_or_default();
        let no_console = || {
            ApiError::new(
                409,
                codes::NO_CONSOLE,
                format!(
                    "the VM '{}' has no console: its host {host} runs no guest (the emulated backend checks the boot chain without one; a qemu host runs the guest), or it never booted",
                    row.name
                ),
            )
        };
        if self.agent.get().is_none() && self.store.agent(host).map_err(store_err)?.is_none() {
            return Err(no_console());
        }
        let c = self
            .agent()?
            .console(host, &row.id)
            .map_err(agent_err)?
            .ok_or_else(no_console)?;
        Ok(api::VmConsole {
            text: c.text,
            truncated: c.truncated,
            offset: c.offset,
            stage: c.stage,
        })
    }

    /// The caller's VM's events.
    pub fn vm_events(&self, caller: &Caller, name: &str) -> Result<api::VmEvents, ApiError> {
        let row = self.vm_row(caller, name)?;
        let events = self.store.events(&row.id).map_err(store_err)?;
        Ok(api::VmEvents {
            value: events
                .into_iter()
                .map(|e| api::VmEvent {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    step: e.step,
                    outcome: e.outcome,
                    duration_ms: e.duration_ms,
                    detail: e.detail,
                })
                .collect(),
        })
    }

    /// An operation confidential VMs do not support (image capture, live migration):
    /// refused by name, after the VM is found (so another tenant's VM stays unseen).
    pub fn unsupported_operation(
        &self,
        caller: &Caller,
        name: &str,
        feature: &'static str,
    ) -> Result<(), ApiError> {
        self.vm_row(caller, name)?;
        Err(ApiError::bad(
            codes::UNSUPPORTED_FEATURE,
            format!("Confidential VMs do not support {feature}."),
        )
        .with_detail(json!({ "feature": feature })))
    }

    /// A new credential for the caller's tenant.
    pub fn create_credential(
        &self,
        caller: &Caller,
        req: &api::CreateCredentialRequest,
    ) -> Result<api::NewCredential, ApiError> {
        let tenant = caller.tenant()?;
        let role = Role::from_name(&req.role).ok_or_else(|| {
            ApiError::bad(
                "bad_request",
                "role is administrator, contributor or reader",
            )
        })?;
        let token = random_token()?;
        let hash = sha256(token.as_bytes());
        self.store
            .add_credential(tenant, &hash, role.name())
            .map_err(store_err)?;
        Ok(api::NewCredential {
            tenant: tenant.to_string(),
            role: role.name().to_string(),
            id: credential_id(&hash),
            credential: token.to_string(),
        })
    }

    /// Creates a tenant with its quota and its first (administrator) credential.
    pub fn create_tenant(
        &self,
        name: &str,
        req: &api::CreateTenantRequest,
    ) -> Result<api::NewCredential, ApiError> {
        check_name(name, "tenant")?;
        let max_vcpus = req.max_v_cpus.unwrap_or(DEFAULT_TENANT_VCPUS);
        if !(1..=MAX_TENANT_VCPUS).contains(&max_vcpus) {
            return Err(ApiError::bad(
                codes::INVALID_PARAMETER,
                format!("maxVCpus is 1 to {MAX_TENANT_VCPUS}"),
            ));
        }
        let token = random_token()?;
        let hash = sha256(token.as_bytes());
        let role = Role::Administrator.name();
        if !self
            .store
            .create_tenant(name, i64::from(max_vcpus), &hash, role)
            .map_err(store_err)?
        {
            return Err(ApiError::new(
                409,
                codes::CONFLICT,
                format!("the tenant '{name}' exists"),
            ));
        }
        Ok(api::NewCredential {
            tenant: name.to_string(),
            role: role.to_string(),
            id: credential_id(&hash),
            credential: token.to_string(),
        })
    }

    /// Every host.
    pub fn hosts(&self) -> Result<api::HostList, ApiError> {
        Ok(api::HostList {
            value: self
                .store
                .hosts()
                .map_err(store_err)?
                .into_iter()
                .map(|h| self.api_host_row(h))
                .collect::<Result<_, _>>()?,
        })
    }

    /// `h` with its agent's URL, if one registered.
    fn api_host_row(&self, h: HostRow) -> Result<api::Host, ApiError> {
        let mut host = api_host(&h);
        host.agent = self.store.agent(&h.name).map_err(store_err)?.map(|e| e.url);
        Ok(host)
    }

    /// Registers the host `name` (or changes what it offers).
    pub fn register_host(
        &self,
        name: &str,
        req: &api::RegisterHostRequest,
    ) -> Result<api::Host, ApiError> {
        check_name(name, "host")?;
        self.known_region(&req.region)?;
        if !matches!(req.backend.as_str(), "emulated" | "qemu" | "hardware") {
            return Err(ApiError::bad(
                codes::INVALID_PARAMETER,
                "backend is emulated, qemu or hardware",
            ));
        }
        if req.v_cpus == 0
            || req.memory_gib == 0
            || req.max_vms == 0
            || req.v_cpus > 4096
            || req.memory_gib > 1 << 20
            || req.max_vms > 4096
        {
            return Err(ApiError::bad(
                codes::INVALID_PARAMETER,
                "vCpus (1-4096), memoryGiB (1-1048576) and maxVms (1-4096) must be positive and bounded",
            ));
        }
        let row = HostRow {
            name: name.to_string(),
            region: req.region.clone(),
            vcpus: i64::from(req.v_cpus),
            memory_gib: i64::from(req.memory_gib),
            max_vms: i64::from(req.max_vms),
            snp_enabled: req.snp_enabled,
            backend: req.backend.clone(),
            used_vcpus: 0,
            used_memory_gib: 0,
            vms: 0,
            generation: 0,
        };
        if self.store.put_host(&row).map_err(store_err)? == PutHost::HoldsVms {
            return Err(ApiError::new(
                409,
                codes::CONFLICT,
                format!(
                    "the host '{name}' holds VMs: its region, vCPUs, memory, SEV-SNP setting and backend cannot change under them, nor its VM cap drop below them"
                ),
            ));
        }
        let host = self
            .store
            .host(name)
            .map_err(store_err)?
            .ok_or_else(|| ApiError::internal("host"))?;
        Ok(api_host(&host))
    }

    /// Imports a disk artifact for the catalog image `id` from `path` on this machine
    /// (see [`crate::artifact`]).
    pub fn import_image(
        &self,
        id: &str,
        req: &api::ImportImageRequest,
    ) -> Result<api::Image, ApiError> {
        let entry = catalog::images::ALL
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "not_found",
                    format!("'{id}' is not in the image catalog"),
                )
            })?;
        let dir = self.state_dir.join("images");
        let row = crate::artifact::import(entry, Path::new(&req.path), &dir)?;
        let previous = self.store.put_image(&row).map_err(store_err)?;
        // The artifact it replaced (read in the same transaction), kept by this
        // machine, is no longer referenced.
        if let Some(prev) = previous
            && prev != row.path
            && Path::new(&prev).starts_with(&dir)
        {
            let _ = std::fs::remove_file(&prev);
        }
        Ok(api_image(entry, Some(&row)))
    }
}

/// A VM that is between states.
/// A failed step as the VM's `lastFailure` records it, and as JSON.
fn recorded_failure(f: &BootFailure) -> (api::Failure, String) {
    let failure = api::Failure {
        step: f.step.clone(),
        code: f.code.to_string(),
        reason: f.reason.clone(),
        at: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let json = serde_json::to_string(&failure).unwrap_or_default();
    (failure, json)
}

/// A VM this process pre-encrypts, until dropped (a panic included).
struct PreEncrypting<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    id: String,
}

impl Drop for PreEncrypting<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.id);
        }
    }
}

/// How long a delete waits for a pre-encryption in progress to end (well inside a
/// request's 30 s).
const PRE_ENCRYPTION_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The words before a pre-encryption's pin in its event.
const PIN_PREFIX: &str = "; volume key pin ";

/// The event of a finished pre-encryption: what it did, then its pin, which the
/// VM's starts read back ([`pin_of`]).
fn pre_encrypted_event(ms: i64, done: &PreEncrypted) -> EventRow {
    event(
        "disk_pre_encryption",
        "ok",
        ms,
        format!("{}{PIN_PREFIX}{}", done.detail, done.pin),
    )
}

/// The pin a pre-encryption's event records.
fn pin_of(detail: &str) -> Option<String> {
    detail
        .rsplit_once(PIN_PREFIX)
        .map(|(_, pin)| pin.to_string())
        .filter(|p| {
            !p.is_empty()
                && p.split(',')
                    .all(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        })
}

/// A saga this process runs: marked in `booting` (so its lease is renewed), and
/// leased to this replica. When it ends the mark goes and the lease is let run out:
/// inert once the VM is settled (`running`, `stopped`, `failed`), and taken over by
/// the next replica that looks when the saga ended on an error that left the VM
/// `starting`, `stopping`, `deleting` or `creating`.
struct SagaGuard<'a> {
    control: &'a Control,
    vm: String,
    leased: bool,
}

impl Drop for SagaGuard<'_> {
    fn drop(&mut self) {
        if self.leased
            && let Err(e) = self
                .control
                .store
                .lease_expire(&self.vm, &self.control.replica)
        {
            tracing::warn!(vm = %self.vm, "ending a saga lease: {e}");
        }
        if let Ok(mut b) = self.control.booting.lock() {
            b.remove(&self.vm);
        }
    }
}

/// Now, Unix milliseconds.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lease_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

fn busy(row: &VmRow) -> ApiError {
    ApiError::new(
        409,
        codes::CONFLICT,
        format!(
            "the VM '{}' is {}; try again when it is not",
            row.name, row.state
        ),
    )
}

/// A host agent's failure outside a boot (stop, attest, forget).
fn agent_err(f: BootFailure) -> ApiError {
    let status = if f.code == codes::boot::ATTESTATION_DENIED {
        409
    } else {
        502
    };
    ApiError::new(status, f.code, format!("{}: {}", f.step, f.reason))
}

/// An event now.
fn event(step: &str, outcome: &str, duration_ms: i64, detail: String) -> EventRow {
    EventRow {
        seq: 0,
        at_ms: now_ms(),
        step: step.to_string(),
        outcome: outcome.to_string(),
        duration_ms,
        detail,
    }
}

/// Rewrites a stored VM body's state and last failure (kept when `failure` is none
/// and the state is not `running`).
fn body_as(
    state: api::VmState,
    failure: Option<api::Failure>,
) -> impl Fn(&VmRow) -> Result<String, StoreError> {
    move |row: &VmRow| {
        let corrupt = |e: serde_json::Error| StoreError::Corrupt {
            what: format!("vm {}", row.id),
            why: e.to_string(),
        };
        let mut vm: api::Vm = serde_json::from_str(&row.body).map_err(corrupt)?;
        vm.state = state;
        if failure.is_some() || state == api::VmState::Running {
            vm.last_failure = failure.clone();
        }
        serde_json::to_string(&vm).map_err(corrupt)
    }
}

fn security_of(spec: &VmSpec) -> api::VmSecurity {
    let (key_management, customer_key) = match &spec.key {
        KeyManagement::Platform => ("platform", None),
        KeyManagement::Customer(k) => ("customer", Some(k.clone())),
    };
    api::VmSecurity {
        security_type: "ConfidentialVM".to_string(),
        secure_boot_enabled: spec.secure_boot,
        v_tpm_enabled: true,
        security_encryption_type: spec.encryption.name().to_string(),
        key_management: key_management.to_string(),
        customer_key,
        secure_boot_template: spec.image.secure_boot_template.to_string(),
        attestation_policy: spec.attestation_policy.clone(),
    }
}

/// The events a create records: validation and placement, then each step of the
/// attested boot this release does not perform yet, marked `not_enforced`.
fn create_events(
    spec: &VmSpec,
    at: i64,
    validated_ms: i64,
    r: &Reserved,
    place_ms: i64,
    pre_encrypt: bool,
) -> Vec<EventRow> {
    let mut out = Vec::new();
    let mut push = |step: &str, outcome: &str, ms: i64, detail: String| {
        let seq = i64::try_from(out.len()).unwrap_or(0) + 1;
        out.push(EventRow {
            seq,
            at_ms: at,
            step: step.to_string(),
            outcome: outcome.to_string(),
            duration_ms: ms,
            detail,
        });
    };
    push(
        "validate",
        "ok",
        validated_ms,
        format!(
            "{} in {}, image {}, {}, Secure Boot {}",
            spec.size.name,
            spec.region,
            spec.image.id,
            spec.encryption.name(),
            if spec.secure_boot { "on" } else { "off" }
        ),
    );
    push(
        "place",
        "ok",
        place_ms,
        format!(
            "placed on {} in {} (host generation {}; {} vCPUs, {} GiB reserved{})",
            r.host,
            spec.region,
            r.generation,
            r.vcpus,
            r.memory_gib,
            if spec.size.isolated {
                ": the whole host"
            } else {
                ""
            }
        ),
    );
    if pre_encrypt {
        if let KeyManagement::Customer(k) = &spec.key {
            push(
                "customer_key",
                "ok",
                0,
                format!(
                    "the customer key '{k}' is an exportable RSA key with a release policy in the platform's key vault"
                ),
            );
        }
        return out;
    }
    if let KeyManagement::Customer(k) = &spec.key {
        push(
            "customer_key",
            "not_enforced",
            0,
            format!(
                "the customer key '{k}' is recorded; it is checked where a pre-encryption service runs (`cvm up`)"
            ),
        );
    }
    if spec.encryption == Encryption::DiskWithGuestState {
        push(
            "disk_pre_encryption",
            "not_enforced",
            0,
            "the OS disk is not pre-encrypted: no pre-encryption service serves this control plane (`cvm up` runs one)".to_string(),
        );
    }
    out
}
