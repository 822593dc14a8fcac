-- Who runs a VM's saga (create, start, stop, delete): the replica `owner` while
-- `until_ms` (Unix ms) lies ahead, which it renews as it works. A VM `creating`,
-- `starting`, `stopping` or `deleting` whose lease ran out (its replica died) is
-- taken over by another replica; one row per VM.
CREATE TABLE saga_leases (
  vm TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  until_ms BIGINT NOT NULL
);
