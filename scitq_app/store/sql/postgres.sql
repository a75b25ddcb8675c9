-- PostgreSQL-only queries: row locks, SKIP LOCKED claims, catalog reads and
-- the JSON forms of bulk inserts (one statement for thousands of rows).

-- name: schema_has_versions
SELECT COUNT(*) AS n FROM information_schema.tables
WHERE table_schema = current_schema() AND table_name = 'schema_migration'

-- name: schema_table_count
SELECT COUNT(*) AS n FROM information_schema.tables
WHERE table_schema = current_schema() AND table_name <> 'schema_migration'

-- name: schema_columns
SELECT table_name AS tbl, column_name AS col, data_type AS type,
       CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END AS "notnull", column_default AS dflt
FROM information_schema.columns WHERE table_schema = current_schema()

-- name: schema_indexes
SELECT tablename AS tbl, indexdef AS definition FROM pg_indexes WHERE schemaname = current_schema()

-- name: schema_lock
-- A transaction-scoped advisory lock: two processes initialising one empty database
-- take turns, and the second finds the schema (and the admin token) the first made.
SELECT pg_advisory_xact_lock(5358192731) AS locked

-- name: token_admins_lock
SELECT id FROM api_token WHERE role = 'admin' AND revoked IS NULL ORDER BY id FOR UPDATE

-- Row locks. One order everywhere (see LOCK ORDER in store/tasks.py): batch, then tasks,
-- then executions, then workers, each set in ascending id. NO KEY UPDATE, not UPDATE: we never
-- change ids, and it leaves the KEY SHARE locks of foreign-key checks (a signal or an output
-- chunk inserted for an execution) free to proceed instead of queueing behind us.

-- name: task_lock
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id WHERE t.id = :id FOR NO KEY UPDATE OF t

-- name: task_lock_by_execution
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id
WHERE t.id = (SELECT task_id FROM execution WHERE id = :id) FOR NO KEY UPDATE OF t

-- name: tasks_lock
-- ORDER BY before the lock: PostgreSQL locks the rows in this order.
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id
WHERE t.id IN {{ints :ids}} ORDER BY t.id FOR NO KEY UPDATE OF t

-- name: execution_lock
SELECT e.*, w.name AS worker_name FROM execution e LEFT JOIN worker w ON w.id = e.worker_id
WHERE e.id = :id FOR NO KEY UPDATE OF e

-- name: executions_lock
SELECT e.*, w.name AS worker_name FROM execution e LEFT JOIN worker w ON w.id = e.worker_id
WHERE e.id IN {{ints :ids}} ORDER BY e.id FOR NO KEY UPDATE OF e

-- name: executions_lock_ids
SELECT id FROM execution WHERE id IN {{ints :ids}} ORDER BY id FOR NO KEY UPDATE

-- name: workers_lock_ids
SELECT id FROM worker WHERE id IN {{ints :ids}} ORDER BY id FOR NO KEY UPDATE

-- fragment: claim_room_locked
-- One row: how many tasks the worker :id may take (claim_room, at most :n), read after worker_seen
-- locked its row (a statement of its own: its snapshot counts what a claim that held the lock before
-- gave it); none if its batch or resources changed since the prospect they come from.
SELECT COALESCE(MAX(GREATEST(0, LEAST(CAST(:n AS INTEGER), {{include claim_room using x}}))), 0) AS n
FROM ({{include worker_and_retry}}) x
WHERE x.batch_id IS NOT DISTINCT FROM CAST(:batch_id AS BIGINT)
  AND x.cpu IS NOT DISTINCT FROM CAST(:cpu AS DOUBLE PRECISION)
  AND x.mem IS NOT DISTINCT FROM CAST(:mem AS DOUBLE PRECISION)
  AND x.gpu IS NOT DISTINCT FROM CAST(:gpu AS INTEGER)

-- fragment: claim_picked
-- The tasks `picked` marked, their executions created and linked, and returned.
numbered AS MATERIALIZED (
    SELECT id, nextval(pg_get_serial_sequence('execution', 'id')) AS eid FROM picked),
marked AS (
    UPDATE task SET status = 'assigned', attempts = attempts + 1, current_execution_id = numbered.eid,
        status_changed = CAST(:now AS DOUBLE PRECISION), modified = CAST(:now AS DOUBLE PRECISION)
    FROM numbered WHERE task.id = numbered.id
    RETURNING task.*, numbered.eid),
inserted AS (
    INSERT INTO execution (id, task_id, attempt, worker_id, status, lease_expires, assigned, command, shell,
                           container, container_options, inputs, resources, output, run_timeout, download_timeout,
                           created, modified, claim_request)
    SELECT m.eid, m.id, m.attempts, CAST(:id AS BIGINT), 'assigned', CAST(:lease_expires AS DOUBLE PRECISION),
           CAST(:now AS DOUBLE PRECISION), m.command, m.shell, m.container, m.container_options, m.inputs,
           m.resources, m.output, m.run_timeout, m.download_timeout, CAST(:now AS DOUBLE PRECISION),
           CAST(:now AS DOUBLE PRECISION), CAST(:request_id AS TEXT)
    FROM marked m
    RETURNING *)
SELECT i.*, m.name AS task_name, b.name AS batch, m.cpu AS cpu_request, w.name AS worker_name
FROM inserted i JOIN marked m ON m.id = i.task_id JOIN batch b ON b.id = m.batch_id
LEFT JOIN worker w ON w.id = i.worker_id
ORDER BY m.priority DESC, m.id

-- name: claim_all
-- A claim of a worker of no batch, whole, in one statement (protocol.claim): its room under the
-- worker's lock, the pick (SKIP LOCKED: claims of other workers take other tasks), the marks,
-- the executions.
WITH room AS ({{include claim_room_locked}}),
picked AS (
    SELECT t.id FROM task t
    WHERE {{include claimable}}
    ORDER BY t.priority DESC, t.id
    LIMIT (SELECT n FROM room)
    FOR UPDATE OF t SKIP LOCKED),
{{include claim_picked}}

-- name: claim_all_batch
-- claim_all for a worker of one batch: that batch's pending tasks only (task_batch_pending).
WITH room AS ({{include claim_room_locked}}),
picked AS (
    SELECT t.id FROM task t
    WHERE {{include claimable}} AND t.batch_id = CAST(:batch_id AS BIGINT)
    ORDER BY t.priority DESC, t.id
    LIMIT (SELECT n FROM room)
    FOR UPDATE OF t SKIP LOCKED),
{{include claim_picked}}

-- name: leases_expired
SELECT e.id, e.task_id FROM execution e JOIN task t ON t.id = e.task_id
WHERE e.status IN ('assigned', 'running', 'uploading') AND e.lease_expires < :now
ORDER BY e.id LIMIT 500
FOR NO KEY UPDATE OF t SKIP LOCKED

-- name: task_counts_fold
-- The deltas committed so far, added into task_count and removed, in one statement: a count
-- read in any snapshot sees each change once (in a delta or in task_count).
WITH moved AS (DELETE FROM task_count_delta RETURNING batch_id, status, n)
INSERT INTO task_count (batch_id, status, n) SELECT batch_id, status, SUM(n) FROM moved GROUP BY batch_id, status
ON CONFLICT (batch_id, status) DO UPDATE SET n = task_count.n + EXCLUDED.n

-- name: reserve_ids
-- one text value, not a row per id: 4x less time for 5,000 ids (the driver reads rows in Python)
SELECT string_agg(nextval(s.name)::text, ',') AS ids
FROM (SELECT pg_get_serial_sequence(:table, 'id') AS name) s, generate_series(1, :n)

-- name: claimable_notify
-- the payload: the announcing process (PostgresBackend.origin), whose listener ignores its own
SELECT pg_notify('scitq_claimable', CAST(:origin AS TEXT))

-- name: claimable_listen
LISTEN scitq_claimable

-- name: listen_poll
SELECT 1

-- name: task_copy
-- A large insert's rows, in COPY's text format: the columns of task_insert, in its order.
COPY task (id, batch_id, name, command, shell, container, container_options, inputs, resources, output,
           status, priority, cpu, mem, gpu, disk, max_retries, download_timeout, run_timeout, use_cache,
           status_changed, created, modified, submit_key) FROM STDIN

-- name: task_insert_json
INSERT INTO task (id, batch_id, name, command, shell, container, container_options, inputs, resources, output,
                  status, priority, cpu, mem, gpu, disk, max_retries, download_timeout, run_timeout, use_cache,
                  status_changed, created, modified, submit_key)
SELECT r.id, r.batch_id, r.name, r.command, r.shell, r.container, r.container_options, r.inputs, r.resources,
       r.output, r.status, r.priority, r.cpu, r.mem, r.gpu, r.disk, r.max_retries, r.download_timeout,
       r.run_timeout, r.use_cache, r.now, r.now, r.now, r.submit_key
FROM json_to_recordset(CAST(:rows AS json)) AS r(
    id BIGINT, batch_id BIGINT, name TEXT, command TEXT, shell TEXT, container TEXT, container_options TEXT,
    inputs TEXT, resources TEXT, output TEXT, status TEXT, priority INTEGER, cpu DOUBLE PRECISION,
    mem DOUBLE PRECISION, gpu INTEGER, disk DOUBLE PRECISION, max_retries INTEGER, download_timeout INTEGER,
    run_timeout INTEGER, use_cache INTEGER, now DOUBLE PRECISION, submit_key TEXT)

-- name: dependency_insert_json
INSERT INTO task_dependency (task_id, required_id)
SELECT r.task_id, r.required_id FROM json_to_recordset(CAST(:rows AS json)) AS r(task_id BIGINT, required_id BIGINT)

-- name: worker_heartbeat_json
UPDATE worker SET last_seen = r.now, stats = r.stats,
    status = CASE WHEN worker.status IN ('starting', 'offline', 'lost') THEN worker.setting ELSE worker.status END
FROM json_to_recordset(CAST(:rows AS json)) AS r(id BIGINT, stats TEXT, now DOUBLE PRECISION)
WHERE worker.id = r.id

-- name: signal_ack_one_json
DELETE FROM signal USING json_to_recordset(CAST(:rows AS json)) AS r(worker_id BIGINT, id BIGINT)
WHERE signal.id = r.id AND signal.worker_id = r.worker_id

-- name: lease_renew_one_json
UPDATE execution SET lease_expires = r.lease_expires
FROM json_to_recordset(CAST(:rows AS json)) AS r(id BIGINT, worker_id BIGINT, lease_expires DOUBLE PRECISION)
WHERE execution.id = r.id AND execution.worker_id = r.worker_id
  AND execution.status IN ('assigned', 'running', 'uploading')

-- name: token_touch_json
UPDATE api_token SET last_used = r.now
FROM json_to_recordset(CAST(:rows AS json)) AS r(id BIGINT, now DOUBLE PRECISION)
WHERE api_token.id = r.id

-- name: job_lock
SELECT id, kind, target, status, step, progress, message, actor, log_lines, created, modified, finished
FROM job WHERE id = :id FOR UPDATE

-- name: job_log_insert_json
INSERT INTO job_log (job_id, seq, at, line)
SELECT r.job_id, r.seq, r.at, r.line
FROM json_to_recordset(CAST(:rows AS json)) AS r(job_id BIGINT, seq BIGINT, at DOUBLE PRECISION, line TEXT)

-- name: heartbeat_reply
-- A heartbeat's reply in one round trip (the driver's cost is per round trip): the worker's
-- settings, which of the executions it says it holds are still its current ones, and its
-- pending signals (as JSON arrays of [id, execution, action]).
SELECT w.concurrency, w.prefetch, w.setting, b.name AS batch,
    (SELECT CAST(COALESCE(json_agg(e.id), '[]') AS text)
     {{include worker_current_executions}}
    ) AS current,
    (SELECT CAST(COALESCE(json_agg(json_build_array(s.id, s.execution_id, s.action)), '[]') AS text)
     FROM signal s WHERE s.worker_id = w.id
    ) AS signals
FROM worker w LEFT JOIN batch b ON b.id = w.batch_id WHERE w.id = :id
