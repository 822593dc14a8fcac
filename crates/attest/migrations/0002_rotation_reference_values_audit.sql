-- Signing keys retire and can be revoked; reference values; the tamper-evident audit
-- log (made append-only by the migration's code). Keys present before keep signing
-- until the next rotation, which retires them.
ALTER TABLE signing_keys ADD COLUMN retire_after INTEGER;
ALTER TABLE signing_keys ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;
CREATE TABLE reference_values (
  region TEXT NOT NULL,
  measurement TEXT NOT NULL,
  component TEXT NOT NULL,
  source TEXT NOT NULL,
  created INTEGER NOT NULL,
  PRIMARY KEY (region, measurement)
);
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, provider TEXT NOT NULL, caller TEXT NOT NULL,
  op TEXT NOT NULL, subject TEXT NOT NULL, outcome TEXT NOT NULL, code TEXT NOT NULL,
  prev BLOB, link BLOB
);
CREATE TABLE audit_checkpoints (
  seq INTEGER PRIMARY KEY, link BLOB NOT NULL, ts INTEGER NOT NULL, signature TEXT NOT NULL
);
UPDATE meta SET value = '2' WHERE key = 'schema';
