-- 0008: recruitment. A recruiter asks, for its batch and in rank order, for workers of a flavor
-- (by name or by a filter) from a provider; a machine is one a provider was asked to create for
-- scitq: its idempotency key (tagged on the machine), the provider's id for it, its worker once
-- provisioned, and its price per hour (what `spend` multiplies).
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
