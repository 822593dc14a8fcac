-- Vault kinds (tenant and platform vaults in separate namespaces), regions with
-- versioned root keys, and the root each key version is sealed under.
ALTER TABLE vaults ADD COLUMN kind TEXT NOT NULL DEFAULT 'customer';
CREATE TABLE regions (
  name TEXT PRIMARY KEY,
  vault TEXT NOT NULL UNIQUE REFERENCES vaults(name),
  created INTEGER NOT NULL
);
CREATE TABLE region_roots (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  region TEXT NOT NULL REFERENCES regions(name),
  version INTEGER NOT NULL,
  sealed BLOB NOT NULL,
  created INTEGER NOT NULL,
  UNIQUE (region, version)
);
ALTER TABLE key_versions ADD COLUMN root_id INTEGER REFERENCES region_roots(id);
CREATE INDEX key_versions_root ON key_versions(root_id);
UPDATE meta SET value = '2' WHERE key = 'schema';
