-- Client idempotency keys: per tenant (the operator's under ''), the request they
-- were first used for and its answer (status 0 while it runs, by the request that
-- holds `owner`), kept a day.
CREATE TABLE idempotency (
  tenant TEXT NOT NULL,
  key TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  status INTEGER NOT NULL,
  body TEXT NOT NULL,
  created INTEGER NOT NULL,
  owner TEXT NOT NULL,
  PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_created ON idempotency(created);
