-- 0007: jobs, the background operations on hosts (provision; deploy, destroy and reconcile to
-- come), each with its current step, progress and a log of numbered lines; and the SSH host keys
-- scitq trusts, first seen (trust on first use) or pinned by a provider, keyed by address:port or
-- by a provider's machine id.
CREATE TABLE job (
    id {id},
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT,
    step TEXT,
    progress {real} NOT NULL DEFAULT 0,
    message TEXT,
    actor TEXT,
    log_lines {bigint} NOT NULL DEFAULT 0,
    created {real} NOT NULL,
    modified {real} NOT NULL,
    finished {real}
);

CREATE INDEX job_status ON job (status, id);

CREATE TABLE job_log (
    job_id {bigint} NOT NULL REFERENCES job (id) ON DELETE CASCADE,
    seq {bigint} NOT NULL,
    at {real} NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE host_key (
    host TEXT PRIMARY KEY,
    key_type TEXT NOT NULL,
    key_data TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created {real} NOT NULL
);
