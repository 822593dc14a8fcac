-- Vaults, their credentials, keys and key versions (material sealed), service
-- secrets, and the audit log (its append-only triggers come with its links, 0003).
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
CREATE TABLE secrets (name TEXT PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE vaults (name TEXT PRIMARY KEY, created INTEGER NOT NULL);
CREATE TABLE credentials (
  sha256 BLOB PRIMARY KEY,
  vault TEXT NOT NULL REFERENCES vaults(name),
  role TEXT NOT NULL,
  created INTEGER NOT NULL
);
CREATE TABLE keys (
  vault TEXT NOT NULL REFERENCES vaults(name),
  name TEXT NOT NULL,
  deleted INTEGER NOT NULL DEFAULT 0,
  deleted_at INTEGER,
  PRIMARY KEY (vault, name)
);
CREATE TABLE key_versions (
  vault TEXT NOT NULL,
  name TEXT NOT NULL,
  version TEXT NOT NULL,
  kty TEXT NOT NULL,
  public_jwk TEXT NOT NULL,
  sealed BLOB NOT NULL,
  exportable INTEGER NOT NULL,
  enabled INTEGER NOT NULL,
  nbf INTEGER,
  exp INTEGER,
  tags TEXT NOT NULL,
  release_policy TEXT,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  PRIMARY KEY (vault, name, version),
  FOREIGN KEY (vault, name) REFERENCES keys(vault, name)
);
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  ts INTEGER NOT NULL, vault TEXT NOT NULL, caller TEXT NOT NULL, op TEXT NOT NULL,
  key TEXT NOT NULL, version TEXT NOT NULL, outcome TEXT NOT NULL, code TEXT NOT NULL,
  jti TEXT NOT NULL, issuer TEXT NOT NULL
);
