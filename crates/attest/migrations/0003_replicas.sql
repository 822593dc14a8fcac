-- What replicas on one database share: service secrets (sealed under the master key;
-- the nonce key), the nonces used by any of them, and a generation number that every
-- change of providers, keys, policies or reference values raises, so each replica
-- knows when to reload what it keeps in memory.
CREATE TABLE secrets (name TEXT PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE used_nonces (
  provider TEXT NOT NULL,
  nonce BLOB NOT NULL,
  expires INTEGER NOT NULL,
  PRIMARY KEY (provider, nonce)
);
CREATE INDEX used_nonces_expiry ON used_nonces(provider, expires);
CREATE TABLE generation (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO generation VALUES (1, 0);
UPDATE meta SET value = '3' WHERE key = 'schema';
