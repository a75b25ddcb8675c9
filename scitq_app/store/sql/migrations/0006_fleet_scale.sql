-- 0006: fleet scale. A claim's request id, so that a retried claim (its reply lost) gets the
-- executions the first try created instead of new ones.
ALTER TABLE execution ADD COLUMN claim_request TEXT;

CREATE INDEX execution_claim_request ON execution (worker_id, claim_request) WHERE claim_request IS NOT NULL;

-- Dependency release follows completions: the dispatcher looks only at tasks that succeeded lately.
CREATE INDEX task_succeeded_at ON task (status_changed) WHERE status = 'succeeded';
