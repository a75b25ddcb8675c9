-- SQLite-only queries. Writes run inside BEGIN IMMEDIATE, so plain SELECTs
-- already hold the write lock where PostgreSQL needs FOR UPDATE.

-- name: schema_has_versions
SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'schema_migration'

-- name: schema_table_count
SELECT COUNT(*) AS n FROM sqlite_master
WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'schema_migration'

-- name: schema_columns
SELECT m.name AS tbl, p.name AS col, p.type AS type, p."notnull" AS "notnull", p.dflt_value AS dflt
FROM sqlite_master m JOIN pragma_table_info(m.name) p
WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'

-- name: schema_indexes
SELECT tbl_name AS tbl, sql AS definition FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL

-- name: task_lock
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id WHERE t.id = :id

-- name: task_lock_by_execution
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id
WHERE t.id = (SELECT task_id FROM execution WHERE id = :id)

-- name: execution_lock
SELECT e.*, w.name AS worker_name FROM execution e LEFT JOIN worker w ON w.id = e.worker_id
WHERE e.id = :id

-- name: tasks_lock
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id
WHERE t.id IN {{ints :ids}} ORDER BY t.id

-- name: executions_lock
SELECT e.*, w.name AS worker_name FROM execution e LEFT JOIN worker w ON w.id = e.worker_id
WHERE e.id IN {{ints :ids}} ORDER BY e.id

-- name: executions_lock_ids
SELECT id FROM execution WHERE id IN {{ints :ids}} ORDER BY id

-- name: workers_lock_ids
SELECT id FROM worker WHERE id IN {{ints :ids}} ORDER BY id

-- fragment: pending_in_claim_order
-- The pending tasks' partial index, named: left to itself SQLite may sort a batch's pending tasks.
SELECT t.id FROM task t INDEXED BY task_pending
WHERE {{include claimable}}
ORDER BY t.priority DESC, t.id

-- fragment: batch_pending_in_claim_order
-- A worker of one batch: that batch's pending tasks only (named, as above).
SELECT t.id FROM task t INDEXED BY task_batch_pending
WHERE {{include claimable}} AND t.batch_id = :batch_id
ORDER BY t.priority DESC, t.id

-- name: claim_pick
{{include pending_in_claim_order}}
LIMIT :n

-- name: claim_pick_batch
{{include batch_pending_in_claim_order}}
LIMIT :n

-- fragment: claim_waiting
-- As the shared text, its indexes named (see pending_in_claim_order).
CASE WHEN x.batch_id IS NULL
     THEN EXISTS (SELECT 1 FROM task t INDEXED BY task_pending WHERE {{include claimable using x}}
                  ORDER BY t.priority DESC, t.id LIMIT 1)
     ELSE EXISTS (SELECT 1 FROM task t INDEXED BY task_batch_pending
                  WHERE {{include claimable using x}} AND t.batch_id = x.batch_id
                  ORDER BY t.priority DESC, t.id LIMIT 1)
END

-- name: release_after
-- As the shared text, with the recent successes read first through their index, named: SQLite
-- otherwise reads every succeeded task.
UPDATE task SET status = 'pending', status_changed = :now, modified = :now
WHERE status = 'waiting'
  AND id IN (SELECT d.task_id FROM task r INDEXED BY task_succeeded_at CROSS JOIN task_dependency d
             WHERE d.required_id = r.id AND r.status = 'succeeded' AND r.status_changed >= :since)
  AND NOT EXISTS (SELECT 1 FROM task_dependency d JOIN task r ON r.id = d.required_id
                  WHERE d.task_id = task.id AND r.status <> 'succeeded')

-- name: leases_expired
SELECT e.id, e.task_id FROM execution e
WHERE e.status IN ('assigned', 'running', 'uploading') AND e.lease_expires < :now
ORDER BY e.id LIMIT 500

-- name: task_counts_fold
-- SQLite's triggers count in place (one writer at a time): no delta is ever written.
DELETE FROM task_count_delta

-- name: sequence_value
SELECT MAX(v) AS v FROM (SELECT seq AS v FROM sqlite_sequence WHERE name = :table
                         UNION ALL SELECT 0)

-- name: job_lock
SELECT id, kind, target, status, step, progress, message, actor, log_lines, created, modified, finished
FROM job WHERE id = :id

-- name: task_count_insert_trigger_drop
-- a large insert of tasks counts them itself (SqliteTx.insert_tasks), in the same transaction
DROP TRIGGER task_count_insert

-- name: task_count_add
INSERT INTO task_count (batch_id, status, n) VALUES (:batch_id, :status, :n)
ON CONFLICT (batch_id, status) DO UPDATE SET n = n + excluded.n

-- name: heartbeat_reply
-- A heartbeat's reply in one statement: the worker's settings, which of the executions it says it
-- holds are still its current ones, and its pending signals (as JSON arrays of [id, execution, action]).
SELECT w.concurrency, w.prefetch, w.setting, b.name AS batch,
    (SELECT json_group_array(e.id)
     {{include worker_current_executions}}
    ) AS current,
    (SELECT json_group_array(json_array(s.id, s.execution_id, s.action)) FROM signal s WHERE s.worker_id = w.id
    ) AS signals
FROM worker w LEFT JOIN batch b ON b.id = w.batch_id WHERE w.id = :id
