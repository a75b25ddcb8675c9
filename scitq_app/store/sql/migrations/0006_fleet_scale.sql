-- 0006: fleet scale. A claim's request id, so that a retried claim (its reply lost) gets the
-- executions the first try created instead of new ones.
ALTER TABLE execution ADD COLUMN claim_request TEXT;

CREATE INDEX execution_claim_request ON execution (worker_id, claim_request) WHERE claim_request IS NOT NULL;

-- A batch's tasks in id order: its listing pages cost their rows.
CREATE INDEX task_batch ON task (batch_id, id);

-- The dispatcher's deadline check reads only running executions.
CREATE INDEX execution_deadline ON execution (deadline) WHERE status = 'running';

-- Dependency release follows completions: the dispatcher looks only at tasks that succeeded lately.
CREATE INDEX task_succeeded_at ON task (status_changed) WHERE status = 'succeeded';

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

INSERT INTO task_count (batch_id, status, n) SELECT batch_id, status, COUNT(*) FROM task GROUP BY batch_id, status;

{task_count_triggers}

-- Idempotency keys expire ([server] submission_retention), oldest first.
CREATE INDEX submission_created ON submission (created);
