//! The control plane's store, on SQLite or PostgreSQL (`sqldb`): one schema, one code
//! path. Every change is one write transaction, which on both engines holds the
//! database's one writer lock, so replicas sharing a PostgreSQL database see each
//! other's commits and never interleave.
//!
//! Placement is a conditional write: one `UPDATE hosts ... WHERE <the host still has
//! room> RETURNING` that re-checks capacity in the same statement that takes it, and a
//! `CHECK` constraint on `hosts` that makes an over-full host unrepresentable.

use std::sync::Mutex;

use sqldb::migrate::Migration;
use sqldb::{Conn, Location, Queries, Row, Tx, args};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database.
    #[error(transparent)]
    Database(#[from] sqldb::Error),
    /// A stored row could not be read back (it was written by another release?).
    #[error("stored {what} is unreadable: {why}")]
    Corrupt {
        /// Which row.
        what: String,
        /// Why.
        why: String,
    },
    /// A lock holder panicked.
    #[error("the store's connection lock is poisoned")]
    Poisoned,
}

/// The schema's numbered migrations, applied to both engines.
pub const MIGRATIONS: [Migration<'static>; 4] = [
    Migration {
        version: 1,
        name: "tenants, hosts, vms",
        sql: include_str!("../migrations/0001_tenants_hosts_vms.sql"),
        postgres: None,
    },
    Migration {
        version: 2,
        name: "host agents",
        sql: include_str!("../migrations/0002_host_agents.sql"),
        postgres: None,
    },
    Migration {
        version: 3,
        name: "idempotency keys",
        sql: include_str!("../migrations/0003_idempotency.sql"),
        postgres: None,
    },
    Migration {
        version: 4,
        name: "saga leases",
        sql: include_str!("../migrations/0004_saga_leases.sql"),
        postgres: None,
    },
];

/// How long an idempotency key is remembered, seconds.
pub const IDEMPOTENCY_TTL: i64 = 24 * 3600;

/// How long a request holding an idempotency key may run before a retry takes the
/// key over (its process was killed, say), seconds: well past the request deadline.
pub const IDEMPOTENCY_ABANDONED: i64 = 120;

/// What a request with an idempotency key does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Idempotent {
    /// The key is new (or its earlier request was abandoned): run the request, then
    /// record its answer ([`Store::idempotency_finish`] with `owner`).
    Run {
        /// This run's hold on the key: only its answer is recorded (an abandoned
        /// run that finishes late records nothing).
        owner: String,
    },
    /// The key's request ran: answer what it answered.
    Replay {
        /// Its status.
        status: u16,
        /// Its JSON body.
        body: String,
    },
    /// The key's request is still running.
    InProgress,
    /// The key was used for another request.
    Reused,
}

/// Where a host's agent listens, and the credential it accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentEndpoint {
    /// Its base URL.
    pub url: String,
    /// The bearer credential it accepts.
    pub credential: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for AgentEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentEndpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A host row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRow {
    /// Name.
    pub name: String,
    /// Region.
    pub region: String,
    /// vCPUs offered.
    pub vcpus: i64,
    /// Memory offered, GiB.
    pub memory_gib: i64,
    /// Most VMs.
    pub max_vms: i64,
    /// SEV-SNP enabled.
    pub snp_enabled: bool,
    /// `emulated` or `hardware`.
    pub backend: String,
    /// vCPUs held.
    pub used_vcpus: i64,
    /// Memory held, GiB.
    pub used_memory_gib: i64,
    /// VMs placed.
    pub vms: i64,
    /// Bumped by every change of what it holds.
    pub generation: i64,
}

const HOST_COLUMNS: &str = "name, region, vcpus, memory_gib, max_vms, snp_enabled, backend, \
     used_vcpus, used_memory_gib, vms, generation";

fn host_row(r: &Row) -> Result<HostRow, sqldb::Error> {
    Ok(HostRow {
        name: r.get(0)?,
        region: r.get(1)?,
        vcpus: r.get(2)?,
        memory_gib: r.get(3)?,
        max_vms: r.get(4)?,
        snp_enabled: r.get(5)?,
        backend: r.get(6)?,
        used_vcpus: r.get(7)?,
        used_memory_gib: r.get(8)?,
        vms: r.get(9)?,
        generation: r.get(10)?,
    })
}

/// A VM row. `body` is the VM's API representation (JSON) as of its last change;
/// `request` the canonical JSON of the request that created it (an identical PUT is
/// answered with the VM, a different one refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmRow {
    /// Platform-unique id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Name in the tenant.
    pub name: String,
    /// The creating request, canonical JSON.
    pub request: String,
    /// The API body, JSON.
    pub body: String,
    /// Region.
    pub region: String,
    /// vCPUs it holds on its host.
    pub vcpus: i64,
    /// Memory it holds, GiB.
    pub memory_gib: i64,
    /// Lifecycle state's name.
    pub state: String,
    /// Its host.
    pub host: Option<String>,
    /// The last failure, JSON.
    pub failure: Option<String>,
    /// Created, Unix seconds.
    pub created: i64,
}

const VM_COLUMNS: &str =
    "id, tenant, name, request, body, region, vcpus, memory_gib, state, host, failure, created";

fn vm_row(r: &Row) -> Result<VmRow, sqldb::Error> {
    Ok(VmRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        name: r.get(2)?,
        request: r.get(3)?,
        body: r.get(4)?,
        region: r.get(5)?,
        vcpus: r.get(6)?,
        memory_gib: r.get(7)?,
        state: r.get(8)?,
        host: r.get(9)?,
        failure: r.get(10)?,
        created: r.get(11)?,
    })
}

/// An event row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    /// Order within the VM.
    pub seq: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The step.
    pub step: String,
    /// `ok`, `failed`, `not_enforced`.
    pub outcome: String,
    /// Duration.
    pub duration_ms: i64,
    /// Detail.
    pub detail: String,
}

/// An imported image artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRow {
    /// Catalog id.
    pub id: String,
    /// SHA-256 of the disk, hex.
    pub sha256: String,
    /// Size.
    pub bytes: i64,
    /// The boot loader's Authenticode SHA-256, hex.
    pub boot_loader_digest: String,
    /// Where the platform keeps it.
    pub path: String,
    /// Imported, Unix seconds.
    pub imported: i64,
}

/// What [`Store::put_host`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutHost {
    /// Registered or updated.
    Done,
    /// Refused: the host holds VMs and the change would move, shrink or alter it
    /// under them.
    HoldsVms,
}

/// What a placement asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement<'a> {
    /// The region.
    pub region: &'a str,
    /// vCPUs.
    pub vcpus: i64,
    /// Memory, GiB.
    pub memory_gib: i64,
    /// A whole host (isolated sizes): only an empty host, all of it.
    pub whole_host: bool,
}

/// Why a VM could not be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlaceOutcome {
    /// On this host; the VM row holds what it took.
    Placed {
        /// The host.
        host: String,
        /// Its generation after the placement.
        generation: i64,
    },
    /// The region has no host with SNP enabled.
    NoSnpHost,
    /// Every SNP host of the region is too full.
    Full,
}

/// What [`Store::create_vm`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// A new VM, placed.
    New(VmRow),
    /// The tenant already has a VM of this name from the same request.
    Existing(VmRow),
    /// The tenant has a VM of this name from another request.
    Conflict(VmRow),
    /// Not created: it could not be placed.
    NotPlaced(PlaceOutcome),
    /// Not created: the tenant's VMs would hold more vCPUs than its quota.
    OverQuota {
        /// The quota.
        max_vcpus: i64,
        /// What its VMs hold now.
        used_vcpus: i64,
    },
}

/// Given a placed VM's host and the host's generation, its stored body and first
/// events.
pub type MadeFn<'a> = dyn Fn(&Reserved) -> Result<(String, Vec<EventRow>), StoreError> + 'a;

/// What a placement took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    /// The host.
    pub host: String,
    /// The host's generation after the placement.
    pub generation: i64,
    /// vCPUs taken (an isolated VM: the whole host's).
    pub vcpus: i64,
    /// Memory taken, GiB.
    pub memory_gib: i64,
}

/// The store.
pub struct Store {
    conn: Mutex<Conn>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("control::Store")
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Store {
    /// Opens (creating if needed) the database at `location` and brings its schema up
    /// to date.
    pub fn open(location: &Location) -> Result<Store, StoreError> {
        let mut conn = Conn::open(location)?;
        sqldb::migrate::apply(
            &mut conn,
            "control",
            &MIGRATIONS,
            &|_| Ok(0),
            &mut |_, _| Ok(()),
            unix_now(),
        )?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let mut tx = if write { conn.write()? } else { conn.read()? };
        let out = f(&mut tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// [`Store::with`] for a write that may decide, after its statements, not to keep
    /// them: `f` returns the outcome and whether to commit (otherwise it rolls back).
    fn write_or_roll_back<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let mut tx = conn.write()?;
        let (out, keep) = f(&mut tx)?;
        if keep {
            tx.commit()?;
        }
        Ok(out)
    }

    /// The secret named `name`.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(false, |tx| {
            Ok(tx
                .query_opt("SELECT value FROM secrets WHERE name = ?1", args![name])?
                .map(|r| r.get(0))
                .transpose()?)
        })
    }

    /// The secret named `name`, or, if there is none, `value` stored under it (a
    /// replica that stored first wins; its value is returned).
    pub fn secret_or_insert(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.with(true, |tx| {
            tx.execute(
                "INSERT INTO secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                args![name, value],
            )?;
            Ok(tx
                .query_one("SELECT value FROM secrets WHERE name = ?1", args![name])?
                .get(0)?)
        })
    }

    /// Adds `names` to the regions (those present stay).
    pub fn ensure_regions(&self, names: &[String]) -> Result<(), StoreError> {
        let now = unix_now();
        self.with(true, |tx| {
            for n in names {
                tx.execute(
                    "INSERT INTO regions (name, created) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                    args![n.as_str(), now],
                )?;
            }
            Ok(())
        })
    }

    /// Every region, by name.
    pub fn regions(&self) -> Result<Vec<String>, StoreError> {
        self.with(false, |tx| {
            Ok(
                tx.query_map("SELECT name FROM regions ORDER BY name", args![], |r| {
                    r.get(0)
                })?,
            )
        })
    }

    /// Creates a tenant with its first credential (hash and role); false if the tenant
    /// exists.
    pub fn create_tenant(
        &self,
        name: &str,
        max_vcpus: i64,
        sha256: &[u8],
        role: &str,
    ) -> Result<bool, StoreError> {
        let now = unix_now();
        self.with(true, |tx| {
            let n = tx.execute(
                "INSERT INTO tenants (name, max_vcpus, created) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                args![name, max_vcpus, now],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO credentials (sha256, tenant, role, created) VALUES (?1, ?2, ?3, ?4)",
                args![sha256, name, role, now],
            )?;
            Ok(true)
        })
    }

    /// Every tenant's quota and what its VMs hold: `(name, max_vcpus, used_vcpus)`.
    pub fn tenants(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        self.with(false, |tx| {
            Ok(tx.query_map(
                "SELECT name, max_vcpus, used_vcpus FROM tenants ORDER BY name",
                args![],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?)
        })
    }

    /// Adds a credential to a tenant.
    pub fn add_credential(
        &self,
        tenant: &str,
        sha256: &[u8],
        role: &str,
    ) -> Result<(), StoreError> {
        let now = unix_now();
        self.with(true, |tx| {
            tx.execute(
                "INSERT INTO credentials (sha256, tenant, role, created) VALUES (?1, ?2, ?3, ?4)",
                args![sha256, tenant, role, now],
            )?;
            Ok(())
        })
    }

    /// The tenant and role of the credential whose SHA-256 is `sha256`.
    pub fn credential(&self, sha256: &[u8]) -> Result<Option<(String, String)>, StoreError> {
        self.with(false, |tx| {
            let row = tx.query_opt(
                "SELECT tenant, role FROM credentials WHERE sha256 = ?1",
                args![sha256],
            )?;
            Ok(match row {
                Some(r) => Some((r.get(0)?, r.get(1)?)),
                None => None,
            })
        })
    }

    /// Registers a host, or updates what an existing one offers. A host that holds
    /// VMs keeps its region, capacity, SEV-SNP setting and backend (an isolated VM
    /// holds all of it; moving or growing it under its VMs would misplace them); only
    /// its VM cap may change, and not below its VMs.
    pub fn put_host(&self, h: &HostRow) -> Result<PutHost, StoreError> {
        self.write_or_roll_back(|tx| {
            let changed = tx.execute(
                "INSERT INTO hosts (name, region, vcpus, memory_gib, max_vms, snp_enabled, backend)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET region = excluded.region,
                   vcpus = excluded.vcpus, memory_gib = excluded.memory_gib,
                   max_vms = excluded.max_vms, snp_enabled = excluded.snp_enabled,
                   backend = excluded.backend, generation = hosts.generation + 1
                 WHERE hosts.vms = 0
                   OR (hosts.region = excluded.region AND hosts.vcpus = excluded.vcpus
                       AND hosts.memory_gib = excluded.memory_gib
                       AND hosts.snp_enabled = excluded.snp_enabled
                       AND hosts.backend = excluded.backend
                       AND excluded.max_vms >= hosts.vms)",
                args![
                    h.name.as_str(),
                    h.region.as_str(),
                    h.vcpus,
                    h.memory_gib,
                    h.max_vms,
                    h.snp_enabled,
                    h.backend.as_str()
                ],
            )?;
            Ok(match changed {
                0 => (PutHost::HoldsVms, false),
                _ => (PutHost::Done, true),
            })
        })
    }

    /// Takes the idempotency key `key` of `tenant` for the request `fingerprint`
    /// (keys older than [`IDEMPOTENCY_TTL`] are forgotten first).
    pub fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<Idempotent, StoreError> {
        let now = unix_now();
        let mut b = [0u8; 16];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| StoreError::Corrupt {
            what: "idempotency key".into(),
            why: "no randomness for its owner".into(),
        })?;
        let owner = hex::encode(b);
        self.with(true, |tx| {
            tx.execute(
                "DELETE FROM idempotency WHERE created < ?1",
                args![now - IDEMPOTENCY_TTL],
            )?;
            let inserted = tx.execute(
                "INSERT INTO idempotency (tenant, key, fingerprint, status, body, created, owner)
                 VALUES (?1, ?2, ?3, 0, '', ?4, ?5) ON CONFLICT (tenant, key) DO NOTHING",
                args![tenant, key, fingerprint, now, owner.as_str()],
            )?;
            if inserted == 1 {
                return Ok(Idempotent::Run { owner });
            }
            let r = tx.query_one(
                "SELECT fingerprint, status, body, created FROM idempotency
                 WHERE tenant = ?1 AND key = ?2",
                args![tenant, key],
            )?;
            let (fp, status, body, created): (String, i64, String, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            if fp != fingerprint {
                return Ok(Idempotent::Reused);
            }
            if status != 0 {
                return Ok(Idempotent::Replay {
                    status: u16::try_from(status).unwrap_or(500),
                    body,
                });
            }
            if created >= now - IDEMPOTENCY_ABANDONED {
                return Ok(Idempotent::InProgress);
            }
            // Abandoned (its process died mid-request): this retry takes it over,
            // unless another retry did so first.
            let taken = tx.execute(
                "UPDATE idempotency SET created = ?3, owner = ?5
                 WHERE tenant = ?1 AND key = ?2 AND status = 0 AND created = ?4",
                args![tenant, key, now, created, owner.as_str()],
            )?;
            Ok(if taken == 1 {
                Idempotent::Run { owner }
            } else {
                Idempotent::InProgress
            })
        })
    }

    /// Records the answer of the request holding `tenant`'s key `key` as `owner`
    /// ([`Idempotent::Run`]); `None`: the answer is not to be replayed (a server-side
    /// failure), so the key is released and a retry runs the request again. A run
    /// whose key was taken over records nothing.
    pub fn idempotency_finish(
        &self,
        tenant: &str,
        key: &str,
        owner: &str,
        answer: Option<(u16, &str)>,
    ) -> Result<(), StoreError> {
        self.with(true, |tx| {
            match answer {
                Some((status, body)) => tx.execute(
                    "UPDATE idempotency SET status = ?3, body = ?4
                     WHERE tenant = ?1 AND key = ?2 AND owner = ?5 AND status = 0",
                    args![tenant, key, i64::from(status), body, owner],
                )?,
                None => tx.execute(
                    "DELETE FROM idempotency
                     WHERE tenant = ?1 AND key = ?2 AND owner = ?3 AND status = 0",
                    args![tenant, key, owner],
                )?,
            };
            Ok(())
        })
    }

    /// Takes the lease on `vm`'s saga for the replica `owner` until `until_ms` (Unix
    /// ms): when nobody holds it, `owner` already does, or its holder's lease ran out
    /// before `now_ms`. `false`: another replica holds it.
    pub fn lease_take(
        &self,
        vm: &str,
        owner: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.with(true, |tx| {
            let n = tx.execute(
                "INSERT INTO saga_leases (vm, owner, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (vm) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms
                 WHERE saga_leases.owner = excluded.owner OR saga_leases.until_ms < ?4",
                args![vm, owner, until_ms, now_ms],
            )?;
            Ok(n == 1)
        })
    }

    /// Extends `owner`'s leases on the VMs `vms` (the sagas it runs) to `until_ms`;
    /// how many it holds of them. Its other leases are left to run out.
    pub fn lease_renew(
        &self,
        owner: &str,
        vms: &[String],
        until_ms: i64,
    ) -> Result<u64, StoreError> {
        self.with(true, |tx| {
            let mut n = 0;
            for vm in vms {
                n += tx.execute(
                    "UPDATE saga_leases SET until_ms = ?3 WHERE vm = ?2 AND owner = ?1",
                    args![owner, vm.as_str(), until_ms],
                )?;
            }
            Ok(n)
        })
    }

    /// Lets `owner`'s lease on `vm` run out now: a saga that ended without settling
    /// the VM (an error) is taken over by the next replica that looks.
    pub fn lease_expire(&self, vm: &str, owner: &str) -> Result<(), StoreError> {
        self.with(true, |tx| {
            tx.execute(
                "UPDATE saga_leases SET until_ms = 0 WHERE vm = ?1 AND owner = ?2",
                args![vm, owner],
            )?;
            Ok(())
        })
    }

    /// Gives up `owner`'s lease on `vm` (its saga ended).
    pub fn lease_release(&self, vm: &str, owner: &str) -> Result<(), StoreError> {
        self.with(true, |tx| {
            tx.execute(
                "DELETE FROM saga_leases WHERE vm = ?1 AND owner = ?2",
                args![vm, owner],
            )?;
            Ok(())
        })
    }

    /// The VMs whose create (its disk's pre-encryption), start, stop or delete saga
    /// nobody runs any more: `creating`, `starting`, `stopping` or `deleting` under a
    /// lease that ran out before `now_ms` (its replica died mid-saga). A VM in such a state with no lease at all is not listed: its
    /// saga ended without reaching the next state (an error recorded in its events),
    /// and a request again, not a takeover, settles it.
    pub fn orphaned_sagas(&self, now_ms: i64) -> Result<Vec<VmRow>, StoreError> {
        let cols: Vec<String> = VM_COLUMNS
            .split(',')
            .map(|c| format!("vms.{}", c.trim()))
            .collect();
        self.with(false, |tx| {
            Ok(tx.query_map(
                &format!(
                    "SELECT {} FROM vms JOIN saga_leases ON saga_leases.vm = vms.id
                     WHERE vms.state IN ('creating', 'starting', 'stopping', 'deleting')
                       AND saga_leases.until_ms < ?1
                     ORDER BY vms.id",
                    cols.join(", ")
                ),
                args![now_ms],
                vm_row,
            )?)
        })
    }

    /// Records where `host`'s agent listens (replacing an earlier registration).
    /// `false`: no such host.
    pub fn put_agent(&self, host: &str, agent: &AgentEndpoint) -> Result<bool, StoreError> {
        let now = unix_now();
        self.with(true, |tx| {
            if tx
                .query_opt("SELECT name FROM hosts WHERE name = ?1", args![host])?
                .is_none()
            {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO host_agents (host, url, credential, registered) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (host) DO UPDATE SET url = excluded.url,
                   credential = excluded.credential, registered = excluded.registered",
                args![host, agent.url.as_str(), agent.credential.as_str(), now],
            )?;
            Ok(true)
        })
    }

    /// Where `host`'s agent listens, if one registered.
    pub fn agent(&self, host: &str) -> Result<Option<AgentEndpoint>, StoreError> {
        self.with(false, |tx| {
            Ok(tx
                .query_opt(
                    "SELECT url, credential FROM host_agents WHERE host = ?1",
                    args![host],
                )?
                .map(|r| -> Result<AgentEndpoint, sqldb::Error> {
                    Ok(AgentEndpoint {
                        url: r.get(0)?,
                        credential: zeroize::Zeroizing::new(r.get(1)?),
                    })
                })
                .transpose()?)
        })
    }

    /// Every host, by name.
    pub fn hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        self.with(false, |tx| {
            Ok(tx.query_map(
                &format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY name"),
                args![],
                host_row,
            )?)
        })
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Result<Option<HostRow>, StoreError> {
        self.with(false, |tx| {
            Ok(tx
                .query_opt(
                    &format!("SELECT {HOST_COLUMNS} FROM hosts WHERE name = ?1"),
                    args![name],
                )?
                .map(|r| host_row(&r))
                .transpose()?)
        })
    }

    /// Creates the VM `vm` and places it, in one transaction: the VM exists placed on
    /// a host, or not at all. Once the host is known (its name and generation after
    /// the placement), `made` gives the VM's stored body and its first events.
    pub fn create_vm(
        &self,
        vm: &VmRow,
        want: &Placement<'_>,
        made: &MadeFn<'_>,
    ) -> Result<Created, StoreError> {
        self.write_or_roll_back(|tx| {
            if let Some(r) = tx.query_opt(
                &format!("SELECT {VM_COLUMNS} FROM vms WHERE tenant = ?1 AND name = ?2"),
                args![vm.tenant.as_str(), vm.name.as_str()],
            )? {
                let existing = vm_row(&r)?;
                let same = existing.request == vm.request;
                return Ok((
                    if same {
                        Created::Existing(existing)
                    } else {
                        Created::Conflict(existing)
                    },
                    false,
                ));
            }
            // Over the quota with the size's own vCPUs: refused before placing.
            let (max_vcpus, used_vcpus) = quota(tx, &vm.tenant)?;
            if used_vcpus + want.vcpus > max_vcpus {
                return Ok((
                    Created::OverQuota {
                        max_vcpus,
                        used_vcpus,
                    },
                    false,
                ));
            }
            let placed = place(tx, want)?;
            let PlaceOutcome::Placed { host, generation } = &placed else {
                return Ok((Created::NotPlaced(placed), false));
            };
            let (vcpus, memory) = match want.whole_host {
                true => {
                    let r = tx.query_one(
                        "SELECT vcpus, memory_gib FROM hosts WHERE name = ?1",
                        args![host.as_str()],
                    )?;
                    (r.get::<i64>(0)?, r.get::<i64>(1)?)
                }
                false => (want.vcpus, want.memory_gib),
            };
            // The tenant's quota, counted in what its VMs hold (an isolated VM holds
            // its whole host), checked in the transaction that placed: concurrent
            // creates of one tenant cannot pass it together. Over it, the placement
            // is rolled back.
            let taken = tx.execute(
                "UPDATE tenants SET used_vcpus = used_vcpus + ?2
                 WHERE name = ?1 AND used_vcpus + ?2 <= max_vcpus",
                args![vm.tenant.as_str(), vcpus],
            )?;
            if taken == 0 {
                let (max_vcpus, used_vcpus) = quota(tx, &vm.tenant)?;
                return Ok((
                    Created::OverQuota {
                        max_vcpus,
                        used_vcpus,
                    },
                    false,
                ));
            }
            let mut row = vm.clone();
            row.host = Some(host.clone());
            row.vcpus = vcpus;
            row.memory_gib = memory;
            let (body, events) = made(&Reserved {
                host: host.clone(),
                generation: *generation,
                vcpus,
                memory_gib: memory,
            })?;
            row.body = body;
            tx.execute(
                &format!(
                    "INSERT INTO vms ({VM_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                ),
                args![
                    row.id.as_str(),
                    row.tenant.as_str(),
                    row.name.as_str(),
                    row.request.as_str(),
                    row.body.as_str(),
                    row.region.as_str(),
                    row.vcpus,
                    row.memory_gib,
                    row.state.as_str(),
                    row.host.clone(),
                    row.failure.clone(),
                    row.created
                ],
            )?;
            for e in &events {
                insert_event(tx, &row.id, e)?;
            }
            Ok((Created::New(row), true))
        })
    }

    /// The tenant's VM named `name`.
    pub fn vm(&self, tenant: &str, name: &str) -> Result<Option<VmRow>, StoreError> {
        self.with(false, |tx| {
            Ok(tx
                .query_opt(
                    &format!("SELECT {VM_COLUMNS} FROM vms WHERE tenant = ?1 AND name = ?2"),
                    args![tenant, name],
                )?
                .map(|r| vm_row(&r))
                .transpose()?)
        })
    }

    /// The tenant's VMs, by name.
    pub fn vms(&self, tenant: &str) -> Result<Vec<VmRow>, StoreError> {
        self.with(false, |tx| {
            Ok(tx.query_map(
                &format!("SELECT {VM_COLUMNS} FROM vms WHERE tenant = ?1 ORDER BY name"),
                args![tenant],
                vm_row,
            )?)
        })
    }

    /// Every VM of the platform (consistency checks).
    pub fn all_vms(&self) -> Result<Vec<VmRow>, StoreError> {
        self.with(false, |tx| {
            Ok(tx.query_map(
                &format!("SELECT {VM_COLUMNS} FROM vms ORDER BY id"),
                args![],
                vm_row,
            )?)
        })
    }

    /// Deletes the tenant's VM `name` and gives its host back what it held, in one
    /// transaction; false if there is none.
    pub fn delete_vm(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        self.delete_where("tenant = ?1 AND name = ?2", tenant, name)
    }

    /// Deletes the VM `id` if it is `deleting` (not a VM created under its name
    /// since), as [`Store::delete_vm`] does; false if there is none.
    pub fn delete_deleting_vm(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_where("id = ?1 AND state = ?2", id, "deleting")
    }

    fn delete_where(&self, filter: &str, a: &str, b: &str) -> Result<bool, StoreError> {
        self.with(true, |tx| {
            let Some(r) = tx.query_opt(
                &format!("SELECT {VM_COLUMNS} FROM vms WHERE {filter}"),
                args![a, b],
            )?
            else {
                return Ok(false);
            };
            let vm = vm_row(&r)?;
            if let Some(host) = &vm.host {
                tx.execute(
                    "UPDATE hosts SET used_vcpus = used_vcpus - ?2,
                       used_memory_gib = used_memory_gib - ?3, vms = vms - 1,
                       generation = generation + 1
                     WHERE name = ?1",
                    args![host.as_str(), vm.vcpus, vm.memory_gib],
                )?;
            }
            tx.execute(
                "UPDATE tenants SET used_vcpus = used_vcpus - ?2 WHERE name = ?1",
                args![vm.tenant.as_str(), vm.vcpus],
            )?;
            tx.execute("DELETE FROM vm_events WHERE vm = ?1", args![vm.id.as_str()])?;
            tx.execute(
                "DELETE FROM saga_leases WHERE vm = ?1",
                args![vm.id.as_str()],
            )?;
            tx.execute("DELETE FROM vms WHERE id = ?1", args![vm.id.as_str()])?;
            Ok(true)
        })
    }

    /// Moves the VM `id` to state `to` if its state is one of `from`, in one
    /// transaction: the state column, the last failure (`failure`, JSON, or none), the
    /// API body (`body` rewrites the stored one) and `events` appended after the
    /// existing ones. Returns the updated row, or `None` (nothing changed) when the VM
    /// is gone or in another state.
    pub fn transition(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        failure: Option<&str>,
        body: &dyn Fn(&VmRow) -> Result<String, StoreError>,
        events: &[EventRow],
    ) -> Result<Option<VmRow>, StoreError> {
        self.with(true, |tx| {
            let Some(r) = tx.query_opt(
                &format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"),
                args![id],
            )?
            else {
                return Ok(None);
            };
            let mut vm = vm_row(&r)?;
            if !from.contains(&vm.state.as_str()) {
                return Ok(None);
            }
            let was = std::mem::replace(&mut vm.state, to.to_string());
            vm.failure = failure.map(str::to_string);
            vm.body = body(&vm)?;
            let n = tx.execute(
                "UPDATE vms SET state = ?2, failure = ?3, body = ?4 WHERE id = ?1 AND state = ?5",
                args![id, to, failure, vm.body.as_str(), was.as_str()],
            )?;
            if n != 1 {
                return Ok(None);
            }
            append(tx, id, events)?;
            Ok(Some(vm))
        })
    }

    /// Appends `events` (their `seq` is assigned) to the VM `id`'s events.
    pub fn append_events(&self, id: &str, events: &[EventRow]) -> Result<(), StoreError> {
        self.with(true, |tx| append(tx, id, events))
    }

    /// The VM with platform id `id`.
    pub fn vm_by_id(&self, id: &str) -> Result<Option<VmRow>, StoreError> {
        self.with(false, |tx| {
            tx.query_opt(
                &format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"),
                args![id],
            )?
            .map(|r| vm_row(&r).map_err(StoreError::from))
            .transpose()
        })
    }

    /// The VM's events, in order.
    pub fn events(&self, vm_id: &str) -> Result<Vec<EventRow>, StoreError> {
        self.with(false, |tx| {
            Ok(tx.query_map(
                "SELECT seq, at_ms, step, outcome, duration_ms, detail FROM vm_events
                 WHERE vm = ?1 ORDER BY seq",
                args![vm_id],
                |r| {
                    Ok(EventRow {
                        seq: r.get(0)?,
                        at_ms: r.get(1)?,
                        step: r.get(2)?,
                        outcome: r.get(3)?,
                        duration_ms: r.get(4)?,
                        detail: r.get(5)?,
                    })
                },
            )?)
        })
    }

    /// Records an imported artifact (replacing an earlier one of the same image).
    /// Returns the path of the artifact it replaced, read in the same transaction.
    pub fn put_image(&self, i: &ImageRow) -> Result<Option<String>, StoreError> {
        self.with(true, |tx| {
            let previous: Option<String> = tx
                .query_opt(
                    "SELECT path FROM images WHERE id = ?1",
                    args![i.id.as_str()],
                )?
                .map(|r| r.get(0))
                .transpose()?;
            tx.execute(
                "INSERT INTO images (id, sha256, bytes, boot_loader_digest, path, imported)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET sha256 = excluded.sha256,
                   bytes = excluded.bytes, boot_loader_digest = excluded.boot_loader_digest,
                   path = excluded.path, imported = excluded.imported",
                args![
                    i.id.as_str(),
                    i.sha256.as_str(),
                    i.bytes,
                    i.boot_loader_digest.as_str(),
                    i.path.as_str(),
                    i.imported
                ],
            )?;
            Ok(previous)
        })
    }

    /// Every imported artifact.
    pub fn images(&self) -> Result<Vec<ImageRow>, StoreError> {
        self.with(false, |tx| {
            Ok(tx.query_map(
                "SELECT id, sha256, bytes, boot_loader_digest, path, imported FROM images ORDER BY id",
                args![],
                |r| {
                    Ok(ImageRow {
                        id: r.get(0)?,
                        sha256: r.get(1)?,
                        bytes: r.get(2)?,
                        boot_loader_digest: r.get(3)?,
                        path: r.get(4)?,
                        imported: r.get(5)?,
                    })
                },
            )?)
        })
    }
}

/// A tenant's vCPU quota and what its VMs hold (the counter every create and delete
/// keeps in its transaction).
fn quota(tx: &mut Tx<'_>, tenant: &str) -> Result<(i64, i64), StoreError> {
    let r = tx.query_one(
        "SELECT max_vcpus, used_vcpus FROM tenants WHERE name = ?1",
        args![tenant],
    )?;
    Ok((r.get(0)?, r.get(1)?))
}

/// Appends `events` after the VM's last event, numbering them.
fn append(tx: &mut Tx<'_>, vm: &str, events: &[EventRow]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let last: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(seq), 0) FROM vm_events WHERE vm = ?1",
            args![vm],
        )?
        .get(0)?;
    for (i, e) in events.iter().enumerate() {
        let mut e = e.clone();
        e.seq = last + 1 + i64::try_from(i).unwrap_or(0);
        insert_event(tx, vm, &e)?;
    }
    Ok(())
}

fn insert_event(tx: &mut Tx<'_>, vm: &str, e: &EventRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO vm_events (vm, seq, at_ms, step, outcome, duration_ms, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![
            vm,
            e.seq,
            e.at_ms,
            e.step.as_str(),
            e.outcome.as_str(),
            e.duration_ms,
            e.detail.as_str()
        ],
    )?;
    Ok(())
}

/// Takes room for `want` on the best-fitting SNP host of its region (the one with the
/// fewest free vCPUs that still fit, so large holes stay for large VMs) in one
/// conditional statement. The writer lock every write transaction holds already keeps
/// other writers out; the `WHERE` that picks the host is evaluated again on the row it
/// updates, and the table's `CHECK` refuses an over-full host, as two more safeguards
/// that do not depend on the lock.
fn place(tx: &mut Tx<'_>, want: &Placement<'_>) -> Result<PlaceOutcome, StoreError> {
    let snp_hosts = tx
        .query_one(
            "SELECT COUNT(*) FROM hosts WHERE region = ?1 AND snp_enabled = 1",
            args![want.region],
        )?
        .get::<i64>(0)?;
    if snp_hosts == 0 {
        return Ok(PlaceOutcome::NoSnpHost);
    }
    let fits = if want.whole_host {
        "snp_enabled = 1 AND vms = 0 AND vms < max_vms AND vcpus >= ?2 AND memory_gib >= ?3"
    } else {
        "snp_enabled = 1 AND vms < max_vms AND used_vcpus + ?2 <= vcpus \
         AND used_memory_gib + ?3 <= memory_gib"
    };
    let take = if want.whole_host {
        "used_vcpus = vcpus, used_memory_gib = memory_gib"
    } else {
        "used_vcpus = used_vcpus + ?2, used_memory_gib = used_memory_gib + ?3"
    };
    let sql = format!(
        "UPDATE hosts SET {take}, vms = vms + 1, generation = generation + 1
         WHERE name = (SELECT name FROM hosts WHERE region = ?1 AND {fits}
                       ORDER BY vcpus - used_vcpus, name LIMIT 1)
           AND {fits}
         RETURNING name, generation"
    );
    let row = tx.query_opt(&sql, args![want.region, want.vcpus, want.memory_gib])?;
    Ok(match row {
        Some(r) => PlaceOutcome::Placed {
            host: r.get(0)?,
            generation: r.get(1)?,
        },
        None => PlaceOutcome::Full,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn age(store: &Store, seconds: i64) {
        store
            .with(true, |tx| {
                tx.execute(
                    "UPDATE idempotency SET created = created - ?1",
                    args![seconds],
                )?;
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn idempotency_keys_replay_wait_are_taken_over_when_abandoned_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::sqlite(&dir.path().join("c.db"))).unwrap();
        let begin = |t: &str, k: &str, fp: &str| store.idempotency_begin(t, k, fp).unwrap();
        let run = |i: Idempotent| match i {
            Idempotent::Run { owner } => owner,
            other => panic!("{other:?}"),
        };
        let first = run(begin("t", "k", "a"));
        assert_eq!(begin("t", "k", "a"), Idempotent::InProgress);
        assert_eq!(begin("t", "k", "b"), Idempotent::Reused);
        run(begin("u", "k", "b")); // keys are per tenant
        // Its request's process died: a retry takes the key over, once.
        age(&store, IDEMPOTENCY_ABANDONED + 1);
        let second = run(begin("t", "k", "a"));
        assert_ne!(first, second);
        assert_eq!(begin("t", "k", "a"), Idempotent::InProgress);
        // The abandoned run finishing late records nothing, not even a release.
        store
            .idempotency_finish("t", "k", &first, Some((200, r#"{"late":1}"#)))
            .unwrap();
        store.idempotency_finish("t", "k", &first, None).unwrap();
        assert_eq!(begin("t", "k", "a"), Idempotent::InProgress);
        store
            .idempotency_finish("t", "k", &second, Some((200, r#"{"x":1}"#)))
            .unwrap();
        assert_eq!(
            begin("t", "k", "a"),
            Idempotent::Replay {
                status: 200,
                body: r#"{"x":1}"#.into()
            }
        );
        // A server-side failure is not kept: the retry runs again.
        let o = run(begin("t", "k2", "a"));
        store.idempotency_finish("t", "k2", &o, None).unwrap();
        run(begin("t", "k2", "a"));
        // A finished answer is never dropped by a late failure record.
        store.idempotency_finish("t", "k", &second, None).unwrap();
        assert!(matches!(begin("t", "k", "a"), Idempotent::Replay { .. }));
        // After a day every key is forgotten.
        age(&store, IDEMPOTENCY_TTL + 1);
        run(begin("t", "k", "b"));
    }
}
