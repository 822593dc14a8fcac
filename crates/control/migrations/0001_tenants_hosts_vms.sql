-- Tenants and their credentials, the operator's secrets, regions, hosts with their
-- capacity (the CHECK keeps a host from ever holding more than it offers, whatever
-- the code above it does), imported image artifacts, VMs and their events.
CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE tenants (
  name TEXT PRIMARY KEY,
  max_vcpus INTEGER NOT NULL,
  used_vcpus INTEGER NOT NULL DEFAULT 0,
  created INTEGER NOT NULL,
  CHECK (used_vcpus >= 0)
);
CREATE TABLE credentials (
  sha256 BLOB PRIMARY KEY,
  tenant TEXT NOT NULL REFERENCES tenants(name),
  role TEXT NOT NULL,
  created INTEGER NOT NULL
);
CREATE TABLE regions (name TEXT PRIMARY KEY, created INTEGER NOT NULL);
CREATE TABLE hosts (
  name TEXT PRIMARY KEY,
  region TEXT NOT NULL REFERENCES regions(name),
  vcpus INTEGER NOT NULL,
  memory_gib INTEGER NOT NULL,
  max_vms INTEGER NOT NULL,
  snp_enabled INTEGER NOT NULL,
  backend TEXT NOT NULL,
  used_vcpus INTEGER NOT NULL DEFAULT 0,
  used_memory_gib INTEGER NOT NULL DEFAULT 0,
  vms INTEGER NOT NULL DEFAULT 0,
  generation INTEGER NOT NULL DEFAULT 0,
  CHECK (used_vcpus >= 0 AND used_memory_gib >= 0 AND vms >= 0),
  CHECK (used_vcpus <= vcpus AND used_memory_gib <= memory_gib AND vms <= max_vms)
);
CREATE INDEX hosts_region ON hosts(region);
CREATE TABLE images (
  id TEXT PRIMARY KEY,
  sha256 TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  boot_loader_digest TEXT NOT NULL,
  path TEXT NOT NULL,
  imported INTEGER NOT NULL
);
CREATE TABLE vms (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL REFERENCES tenants(name),
  name TEXT NOT NULL,
  request TEXT NOT NULL,
  body TEXT NOT NULL,
  region TEXT NOT NULL,
  vcpus INTEGER NOT NULL,
  memory_gib INTEGER NOT NULL,
  state TEXT NOT NULL,
  host TEXT REFERENCES hosts(name),
  failure TEXT,
  created INTEGER NOT NULL,
  UNIQUE (tenant, name)
);
CREATE INDEX vms_host ON vms(host);
CREATE TABLE vm_events (
  vm TEXT NOT NULL REFERENCES vms(id),
  seq INTEGER NOT NULL,
  at_ms INTEGER NOT NULL,
  step TEXT NOT NULL,
  outcome TEXT NOT NULL,
  duration_ms INTEGER NOT NULL,
  detail TEXT NOT NULL,
  PRIMARY KEY (vm, seq)
);
