-- The audit log's links and signed checkpoints. Entries written before are linked by
-- the migration's code, in order (they were not protected before), which then makes
-- both tables append-only.
ALTER TABLE audit ADD COLUMN prev BLOB;
ALTER TABLE audit ADD COLUMN link BLOB;
CREATE TABLE audit_checkpoints (
  seq INTEGER PRIMARY KEY, link BLOB NOT NULL, ts INTEGER NOT NULL, signature TEXT NOT NULL
);
UPDATE meta SET value = '3' WHERE key = 'schema';
