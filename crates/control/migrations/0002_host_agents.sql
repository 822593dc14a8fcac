-- Where each host's agent (`cvm host run`) listens and the credential the control
-- plane calls it with; an agent that starts again replaces its row.
CREATE TABLE host_agents (
  host TEXT PRIMARY KEY REFERENCES hosts(name),
  url TEXT NOT NULL,
  credential TEXT NOT NULL,
  registered INTEGER NOT NULL
);
