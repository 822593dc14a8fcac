//! The store on both engines: its schema is the checked-in one, and placement never
//! over-fills a host, with several writers on one database (replicas).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use control::store::{
    Created, EventRow, HostRow, PlaceOutcome, Placement, PutHost, Reserved, Store, VmRow,
};
use sqldb::{Conn, Location};

fn check_schema(engine: &str, location: &Location) {
    drop(Store::open(location).unwrap());
    let dump = sqldb::schema::dump(&mut Conn::open(location).unwrap()).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(format!("{engine}.txt"));
    if let Err(e) = sqldb::schema::matches_checked_in(&dump, &path) {
        panic!("{e}");
    }
}

/// PostgreSQL, unless the run said to skip it (`OPENCVM_SKIP_POSTGRES=1`).
fn postgres() -> Option<sqldb::scratch::ScratchDb> {
    sqldb::scratch::postgres()
}

#[test]
fn the_schema_is_the_checked_in_one_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    check_schema("sqlite", &Location::sqlite(&dir.path().join("c.db")));
    if let Some(pg) = postgres() {
        check_schema("postgres", &pg.location);
    }
}

fn host(name: &str, vcpus: i64, mem: i64, max: i64, snp: bool) -> HostRow {
    HostRow {
        name: name.into(),
        region: "eastus".into(),
        vcpus,
        memory_gib: mem,
        max_vms: max,
        snp_enabled: snp,
        backend: "emulated".into(),
        used_vcpus: 0,
        used_memory_gib: 0,
        vms: 0,
        generation: 0,
    }
}

fn vm(tenant: &str, name: &str) -> VmRow {
    VmRow {
        id: format!("{tenant}-{name}"),
        tenant: tenant.into(),
        name: name.into(),
        request: "{}".into(),
        body: String::new(),
        region: "eastus".into(),
        vcpus: 0,
        memory_gib: 0,
        state: "stopped".into(),
        host: None,
        failure: None,
        created: 1,
    }
}

fn made(r: &Reserved) -> Result<(String, Vec<EventRow>), control::store::StoreError> {
    let (host, generation) = (&r.host, r.generation);
    let e = EventRow {
        seq: 1,
        at_ms: 1,
        step: "place".into(),
        outcome: "ok".into(),
        duration_ms: 0,
        detail: format!("{host} {generation}"),
    };
    Ok((format!("{{\"host\":\"{host}\"}}"), vec![e]))
}

const DC2: Placement<'static> = Placement {
    region: "eastus",
    vcpus: 2,
    memory_gib: 8,
    whole_host: false,
};

/// Every host's counters equal the sum of what its VMs hold, and stay within what
/// it offers; every VM is on a host.
fn consistent(store: &Store) {
    let vms = store.all_vms().unwrap();
    for h in store.hosts().unwrap() {
        let mine: Vec<_> = vms
            .iter()
            .filter(|v| v.host.as_deref() == Some(&h.name))
            .collect();
        assert_eq!(h.vms, mine.len() as i64, "{}", h.name);
        assert_eq!(
            h.used_vcpus,
            mine.iter().map(|v| v.vcpus).sum::<i64>(),
            "{}",
            h.name
        );
        assert_eq!(
            h.used_memory_gib,
            mine.iter().map(|v| v.memory_gib).sum::<i64>()
        );
        assert!(h.used_vcpus <= h.vcpus && h.used_memory_gib <= h.memory_gib && h.vms <= h.max_vms);
    }
    assert!(vms.iter().all(|v| v.host.is_some()));
    for (tenant, max, used) in store.tenants().unwrap() {
        let sum: i64 = vms
            .iter()
            .filter(|v| v.tenant == tenant)
            .map(|v| v.vcpus)
            .sum();
        assert_eq!(used, sum, "{tenant}'s counter");
        assert!(used <= max);
    }
}

fn placement_scenario(location: &Location) {
    let store = Store::open(location).unwrap();
    store
        .ensure_regions(&["eastus".into(), "westus".into()])
        .unwrap();
    store
        .create_tenant("t", 100_000, b"hash-t", "administrator")
        .unwrap();
    // No SNP host at all yet: the region cannot take confidential VMs.
    store.put_host(&host("off", 64, 256, 32, false)).unwrap();
    assert_eq!(
        store.create_vm(&vm("t", "a"), &DC2, &made).unwrap(),
        Created::NotPlaced(PlaceOutcome::NoSnpHost)
    );
    // h1 takes 3 (its VM cap), h2 takes 3 (6 vCPUs).
    store.put_host(&host("h1", 8, 32, 3, true)).unwrap();
    store.put_host(&host("h2", 6, 64, 32, true)).unwrap();
    // Two replicas, four writers each, 25 creates per writer.
    let replicas = [Arc::new(store), Arc::new(Store::open(location).unwrap())];
    let mut threads = Vec::new();
    for w in 0..8 {
        let s = replicas[w % 2].clone();
        threads.push(std::thread::spawn(move || {
            let mut placed = 0;
            for i in 0..25 {
                match s
                    .create_vm(&vm("t", &format!("w{w}-{i}")), &DC2, &made)
                    .unwrap()
                {
                    Created::New(row) => {
                        assert!(row.host.is_some());
                        placed += 1;
                    }
                    Created::NotPlaced(PlaceOutcome::Full) => {}
                    other => panic!("{other:?}"),
                }
            }
            placed
        }));
    }
    let placed: i32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(placed, 6, "exactly the capacity is placed");
    let store = &replicas[0];
    consistent(store);
    // The same request again returns the VM; another request under its name is a
    // conflict; neither takes capacity.
    let first = store.all_vms().unwrap().remove(0);
    let mut again = vm("t", &first.name);
    again.id = "other-id".into();
    assert!(
        matches!(store.create_vm(&again, &DC2, &made).unwrap(), Created::Existing(r) if r.id == first.id)
    );
    again.request = "{\"different\":1}".into();
    assert!(matches!(
        store.create_vm(&again, &DC2, &made).unwrap(),
        Created::Conflict(_)
    ));
    consistent(store);
    // A host cannot shrink below what its VMs hold (the CHECK), and is unchanged.
    let before = store.host(first.host.as_deref().unwrap()).unwrap().unwrap();
    let mut shrink = before.clone();
    shrink.vcpus = 1;
    assert_eq!(store.put_host(&shrink).unwrap(), PutHost::HoldsVms);
    let mut grow = before.clone();
    grow.vcpus += 64;
    assert_eq!(
        store.put_host(&grow).unwrap(),
        PutHost::HoldsVms,
        "not under its VMs either"
    );
    let mut fewer = before.clone();
    fewer.max_vms = before.vms - 1;
    assert_eq!(store.put_host(&fewer).unwrap(), PutHost::HoldsVms);
    let mut more = before.clone();
    more.max_vms += 1;
    assert_eq!(
        store.put_host(&more).unwrap(),
        PutHost::Done,
        "the VM cap may grow"
    );
    assert_eq!(store.put_host(&before).unwrap(), PutHost::Done);
    let before = store.host(&before.name).unwrap().unwrap();
    assert_eq!(store.host(&before.name).unwrap().unwrap(), before);
    // Deleting gives the capacity back, and the next create takes it.
    assert!(store.delete_vm("t", &first.name).unwrap());
    assert!(!store.delete_vm("t", &first.name).unwrap());
    assert!(store.events(&first.id).unwrap().is_empty());
    assert!(matches!(
        store.create_vm(&vm("t", "after"), &DC2, &made).unwrap(),
        Created::New(_)
    ));
    consistent(store);
    // An isolated size takes a whole empty host, all of it.
    store.put_host(&host("big", 112, 768, 32, true)).unwrap();
    let iso = Placement {
        region: "eastus",
        vcpus: 96,
        memory_gib: 672,
        whole_host: true,
    };
    let Created::New(row) = store.create_vm(&vm("t", "iso"), &iso, &made).unwrap() else {
        panic!()
    };
    assert_eq!(
        (row.host.as_deref(), row.vcpus, row.memory_gib),
        (Some("big"), 112, 768)
    );
    assert_eq!(
        store.create_vm(&vm("t", "small"), &DC2, &made).unwrap(),
        Created::NotPlaced(PlaceOutcome::Full),
        "nothing fits beside an isolated VM"
    );
    assert_eq!(store.events(&row.id).unwrap()[0].detail, "big 1");
    consistent(store);
    // A tenant's quota counts what its VMs hold; over it, nothing is placed (the
    // placement is rolled back), and the host is as it was.
    store.delete_vm("t", "iso").unwrap();
    store
        .create_tenant("q", 4, b"hash-q", "administrator")
        .unwrap();
    let hosts_before = store.hosts().unwrap();
    for n in ["q1", "q2"] {
        assert!(matches!(
            store.create_vm(&vm("q", n), &DC2, &made).unwrap(),
            Created::New(_)
        ));
    }
    assert_eq!(
        store.create_vm(&vm("q", "q3"), &DC2, &made).unwrap(),
        Created::OverQuota {
            max_vcpus: 4,
            used_vcpus: 4
        }
    );
    assert_eq!(
        store.create_vm(&vm("q", "q4"), &iso, &made).unwrap(),
        Created::OverQuota {
            max_vcpus: 4,
            used_vcpus: 4
        }
    );
    // An isolated VM fits a quota of 100 by its size (96) but holds its whole host
    // (112): placed, then rolled back, and the host is untouched.
    store
        .create_tenant("r", 100, b"hash-r", "administrator")
        .unwrap();
    let big_before = store.host("big").unwrap().unwrap();
    store.delete_vm("q", "q1").unwrap();
    store.delete_vm("q", "q2").unwrap();
    let big_empty = store.host("big").unwrap().unwrap();
    assert_eq!(big_empty.vms, 0, "{big_before:?}");
    assert_eq!(
        store.create_vm(&vm("r", "r1"), &iso, &made).unwrap(),
        Created::OverQuota {
            max_vcpus: 100,
            used_vcpus: 0
        }
    );
    assert_eq!(
        store.host("big").unwrap().unwrap(),
        big_empty,
        "the placement was rolled back"
    );
    assert!(store.vm("r", "r1").unwrap().is_none());
    for n in ["q1", "q2"] {
        assert!(matches!(
            store.create_vm(&vm("q", n), &DC2, &made).unwrap(),
            Created::New(_)
        ));
    }
    let used = |hs: &[HostRow]| hs.iter().map(|h| h.used_vcpus).sum::<i64>();
    assert_eq!(used(&store.hosts().unwrap()), used(&hosts_before) + 4);
    assert!(store.vm("q", "q3").unwrap().is_none());
    consistent(store);
}

#[test]
fn placement_never_overfills_a_host_with_concurrent_replicas_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    placement_scenario(&Location::sqlite(&dir.path().join("c.db")));
}

#[test]
fn placement_never_overfills_a_host_with_concurrent_replicas_on_postgres() {
    let Some(pg) = postgres() else { return };
    placement_scenario(&pg.location);
}

fn lease_scenario(location: &Location) {
    let store = Store::open(location).unwrap();
    store.ensure_regions(&["eastus".into()]).unwrap();
    store
        .create_tenant("t", 100_000, b"hash-t", "administrator")
        .unwrap();
    store.put_host(&host("h1", 64, 256, 32, true)).unwrap();
    let Created::New(row) = store.create_vm(&vm("t", "l"), &DC2, &made).unwrap() else {
        panic!("not placed");
    };
    let id = row.id.as_str();
    let body = |_: &VmRow| Ok(String::new());
    // Replica a takes the start's lease; b cannot while it lasts, a can again.
    assert!(store.lease_take(id, "a", 2_000, 1_000).unwrap());
    assert!(!store.lease_take(id, "b", 2_500, 1_500).unwrap());
    assert!(store.lease_take(id, "a", 3_000, 1_500).unwrap());
    store
        .transition(id, &["stopped"], "starting", None, &body, &[])
        .unwrap()
        .unwrap();
    // While a renews, nothing is orphaned; once a stops renewing and its lease runs
    // out, the start is orphaned and b takes it (once: a cannot take it back).
    let held = [id.to_string()];
    assert_eq!(store.lease_renew("a", &held, 5_000).unwrap(), 1);
    // Renewals name the sagas the replica runs: others' leases are not touched.
    assert_eq!(
        store
            .lease_renew("a", &["other".to_string()], 6_000)
            .unwrap(),
        0
    );
    assert!(store.orphaned_sagas(4_999).unwrap().is_empty());
    let orphaned = store.orphaned_sagas(5_001).unwrap();
    assert_eq!(
        orphaned.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [id]
    );
    assert!(store.lease_take(id, "b", 9_000, 5_001).unwrap());
    assert!(!store.lease_take(id, "a", 9_500, 5_002).unwrap());
    assert!(store.orphaned_sagas(8_999).unwrap().is_empty());
    // a's renewals no longer touch it; b gives it up when its saga ends.
    assert_eq!(store.lease_renew("a", &held, 20_000).unwrap(), 0);
    store.lease_release(id, "a").unwrap();
    assert!(store.orphaned_sagas(8_999).unwrap().is_empty());
    // A saga that ended without its lease (given up) is nobody's to take over; nor
    // is the saga of a VM that reached a settled state under an expired lease.
    store.lease_release(id, "b").unwrap();
    assert!(store.orphaned_sagas(i64::MAX).unwrap().is_empty());
    assert!(store.lease_take(id, "a", 10_000, 9_000).unwrap());
    store
        .transition(id, &["starting"], "running", None, &body, &[])
        .unwrap()
        .unwrap();
    assert!(store.orphaned_sagas(i64::MAX).unwrap().is_empty());
    // Stops and deletes are sagas too; a saga that ended on an error lets its lease
    // run out at once, and is then taken over.
    store
        .transition(id, &["running"], "stopping", None, &body, &[])
        .unwrap()
        .unwrap();
    assert_eq!(store.orphaned_sagas(10_001).unwrap().len(), 1);
    assert!(store.lease_take(id, "b", 30_000, 10_001).unwrap());
    assert!(store.orphaned_sagas(20_000).unwrap().is_empty());
    store.lease_expire(id, "b").unwrap();
    assert_eq!(store.orphaned_sagas(20_000).unwrap().len(), 1);
}

#[test]
fn start_sagas_are_leased_to_one_replica_at_a_time_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    lease_scenario(&Location::sqlite(&dir.path().join("c.db")));
    if let Some(pg) = postgres() {
        lease_scenario(&pg.location);
    }
}
