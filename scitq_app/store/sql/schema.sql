-- The current schema, for fresh databases (`scitq db init`). Every change here
-- comes with a numbered migration; tests prove both paths give the same schema.

CREATE TABLE batch (
    id {id},
    name TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL DEFAULT 'running',
    priority INTEGER NOT NULL DEFAULT 0,
    created {real} NOT NULL,
    modified {real} NOT NULL
);

CREATE TABLE worker (
    id {id},
    name TEXT NOT NULL UNIQUE,
    hostname TEXT,
    status TEXT NOT NULL,
    setting TEXT NOT NULL DEFAULT 'running',
    batch_id {bigint} REFERENCES batch (id) ON DELETE SET NULL,
    concurrency INTEGER NOT NULL DEFAULT 1,
    prefetch INTEGER NOT NULL DEFAULT 0,
    cpu {real},
    mem {real},
    gpu INTEGER,
    permanent INTEGER NOT NULL DEFAULT 1,
    provider TEXT,
    region TEXT,
    flavor TEXT,
    address TEXT,
    version TEXT,
    last_seen {real},
    stats TEXT,
    created {real} NOT NULL,
    modified {real} NOT NULL
);

CREATE TABLE task (
    id {id},
    batch_id {bigint} NOT NULL REFERENCES batch (id),
    name TEXT,
    command TEXT NOT NULL,
    shell TEXT NOT NULL DEFAULT 'none',
    container TEXT,
    container_options TEXT,
    inputs TEXT NOT NULL DEFAULT '[]',
    resources TEXT NOT NULL DEFAULT '[]',
    output TEXT,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    cpu {real},
    mem {real},
    gpu INTEGER,
    disk {real},
    max_retries INTEGER NOT NULL DEFAULT 0,
    retries_used INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    download_timeout INTEGER,
    run_timeout INTEGER,
    use_cache INTEGER NOT NULL DEFAULT 0,
    current_execution_id {bigint},
    status_changed {real} NOT NULL,
    created {real} NOT NULL,
    modified {real} NOT NULL,
    submit_key TEXT
);

CREATE INDEX task_pending ON task (priority DESC, id) WHERE status = 'pending';

CREATE INDEX task_batch_status ON task (batch_id, status, id);

CREATE INDEX task_batch_pending ON task (batch_id, priority DESC, id) WHERE status = 'pending';

CREATE INDEX task_status ON task (status, id);

CREATE INDEX task_batch ON task (batch_id, id);

CREATE INDEX task_name ON task (name);

CREATE INDEX task_succeeded_at ON task (status_changed) WHERE status = 'succeeded';

CREATE INDEX task_submit_key ON task (submit_key) WHERE submit_key IS NOT NULL;

-- Exact task counts by batch and status, O(1) to read: see triggers_sqlite.sql and triggers_postgres.sql.
CREATE TABLE task_count (
    batch_id {bigint} NOT NULL,
    status TEXT NOT NULL,
    n {bigint} NOT NULL,
    PRIMARY KEY (batch_id, status)
);

CREATE TABLE task_count_delta (
    id {id},
    batch_id {bigint} NOT NULL,
    status TEXT NOT NULL,
    n {bigint} NOT NULL
);

{task_count_triggers}

CREATE TABLE task_dependency (
    task_id {bigint} NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    required_id {bigint} NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, required_id)
);

CREATE INDEX task_dependency_required ON task_dependency (required_id);

CREATE TABLE execution (
    id {id},
    task_id {bigint} NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    worker_id {bigint} REFERENCES worker (id) ON DELETE SET NULL,
    status TEXT NOT NULL,
    failure_class TEXT,
    return_code INTEGER,
    lease_expires {real},
    deadline {real},
    assigned {real},
    started {real},
    finished {real},
    command TEXT NOT NULL,
    shell TEXT NOT NULL,
    container TEXT,
    container_options TEXT,
    inputs TEXT NOT NULL,
    resources TEXT NOT NULL,
    output TEXT,
    run_timeout INTEGER,
    download_timeout INTEGER,
    output_files TEXT NOT NULL DEFAULT '[]',
    stdout_size {bigint} NOT NULL DEFAULT 0,
    stderr_size {bigint} NOT NULL DEFAULT 0,
    stdout_done INTEGER NOT NULL DEFAULT 0,
    stderr_done INTEGER NOT NULL DEFAULT 0,
    peak_mem {bigint},
    cpu_time {real},
    message TEXT,
    created {real} NOT NULL,
    modified {real} NOT NULL,
    claim_request TEXT
);

CREATE INDEX execution_task ON execution (task_id, id);

CREATE INDEX execution_claim_request ON execution (worker_id, claim_request) WHERE claim_request IS NOT NULL;

CREATE INDEX execution_worker_active ON execution (worker_id)
    WHERE status IN ('assigned', 'running', 'uploading');

CREATE INDEX execution_deadline ON execution (deadline) WHERE status = 'running';

CREATE INDEX execution_lease_active ON execution (lease_expires)
    WHERE status IN ('assigned', 'running', 'uploading');

CREATE TABLE output_chunk (
    execution_id {bigint} NOT NULL REFERENCES execution (id) ON DELETE CASCADE,
    stream TEXT NOT NULL,
    pos {bigint} NOT NULL,
    size INTEGER NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (execution_id, stream, pos)
);

CREATE TABLE signal (
    id {id},
    worker_id {bigint} NOT NULL REFERENCES worker (id) ON DELETE CASCADE,
    execution_id {bigint} REFERENCES execution (id) ON DELETE CASCADE,
    action TEXT NOT NULL,
    created {real} NOT NULL
);

CREATE INDEX signal_worker ON signal (worker_id, id);

CREATE TABLE api_token (
    id {id},
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    worker_id {bigint} REFERENCES worker (id) ON DELETE CASCADE,
    created {real} NOT NULL,
    last_used {real},
    revoked {real},
    uses_left INTEGER,
    expires {real},
    pinned_batch TEXT,
    pinned_name TEXT
);

CREATE TABLE event (
    id {id},
    at {real} NOT NULL,
    actor TEXT,
    kind TEXT NOT NULL,
    target TEXT,
    detail TEXT
);

CREATE INDEX event_target ON event (target, id);

CREATE TABLE dispatcher_lock (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires {real} NOT NULL
);

-- An idempotency key is the token's own (scope), bound to the request it answered (digest).
CREATE TABLE submission (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    created {real} NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX submission_created ON submission (created);

-- One row, bumped by every revocation: each server process polls it to drop its token cache.
CREATE TABLE token_epoch (
    id INTEGER PRIMARY KEY,
    epoch {bigint} NOT NULL
);

-- Jobs: background operations on hosts, their logs; the SSH host keys scitq trusts.
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

-- Recruitment: recruiters per batch and rank; the machines providers created for scitq.
CREATE TABLE recruiter (
    id {id},
    batch_id {bigint} NOT NULL REFERENCES batch (id) ON DELETE CASCADE,
    rank INTEGER NOT NULL,
    provider TEXT NOT NULL,
    flavor TEXT NOT NULL,
    region TEXT,
    tasks_per_worker INTEGER NOT NULL,
    minimum_tasks INTEGER NOT NULL,
    maximum_workers INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    prefetch INTEGER NOT NULL,
    created {real} NOT NULL,
    modified {real} NOT NULL,
    UNIQUE (batch_id, rank)
);

CREATE TABLE machine (
    id {id},
    name TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    region TEXT NOT NULL,
    flavor TEXT NOT NULL,
    price {real} NOT NULL,
    status TEXT NOT NULL,
    idem_key TEXT NOT NULL UNIQUE,
    instance_id TEXT,
    address TEXT,
    recruiter_id {bigint} REFERENCES recruiter (id) ON DELETE SET NULL,
    batch_id {bigint} REFERENCES batch (id) ON DELETE SET NULL,
    concurrency INTEGER NOT NULL DEFAULT 1,
    prefetch INTEGER NOT NULL DEFAULT 0,
    worker_id {bigint} REFERENCES worker (id) ON DELETE SET NULL,
    message TEXT,
    created {real} NOT NULL,
    modified {real} NOT NULL,
    destroyed {real}
);

CREATE INDEX machine_active ON machine (status) WHERE status NOT IN ('destroyed', 'failed');
