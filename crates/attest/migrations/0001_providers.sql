-- Providers (tenants), their token-signing keys (sealed) and policy versions.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
CREATE TABLE providers (
  name TEXT PRIMARY KEY,
  admin_sha256 BLOB NOT NULL,
  settings TEXT NOT NULL
);
CREATE TABLE signing_keys (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  provider TEXT NOT NULL REFERENCES providers(name),
  alg TEXT NOT NULL,
  sealed_pkcs8 BLOB NOT NULL,
  cert_der BLOB NOT NULL,
  created INTEGER NOT NULL
);
CREATE TABLE policies (
  provider TEXT NOT NULL REFERENCES providers(name),
  kind TEXT NOT NULL,
  version INTEGER NOT NULL,
  text TEXT NOT NULL,
  created INTEGER NOT NULL,
  PRIMARY KEY (provider, kind, version)
);
