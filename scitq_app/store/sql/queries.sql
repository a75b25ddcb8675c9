-- Named queries shared by SQLite and PostgreSQL (see queries.py).
-- Parameters outside a column comparison are CAST so PostgreSQL can type them.

-- name: schema_version
SELECT MAX(version) AS v FROM schema_migration

-- name: schema_record
INSERT INTO schema_migration (version, name, applied) VALUES (:version, :name, :now)

-- ---------------------------------------------------------------- events

-- name: event_insert
INSERT INTO event (at, actor, kind, target, detail) VALUES (:now, :actor, :kind, :target, :detail)

-- name: event_list
SELECT * FROM event WHERE id > :after ORDER BY id LIMIT :limit

-- name: event_list_target
-- Its own query, not an "IS NULL OR" filter: SQLite then uses index event_target.
SELECT * FROM event WHERE target = :target AND id > :after ORDER BY id LIMIT :limit

-- name: events_prune
-- The oldest events first, a few at a time: events are appended in time order, so the first n by
-- id are the oldest, and when they are not old enough none is (the query reads n rows, not all).
DELETE FROM event WHERE id IN (SELECT id FROM event ORDER BY id LIMIT :n) AND at < :before

-- ---------------------------------------------------------------- batches

-- name: batch_id_by_name
SELECT id FROM batch WHERE name = :name

-- name: batch_by_name
SELECT * FROM batch WHERE name = :name

-- name: batch_insert
INSERT INTO batch (name, status, priority, created, modified) VALUES (:name, :status, :priority, :now, :now)

-- name: batch_insert_missing
INSERT INTO batch (name, status, priority, created, modified) VALUES (:name, :status, :priority, :now, :now)
ON CONFLICT (name) DO NOTHING

-- name: batch_list
-- workers: live workers pinned to the batch, and unpinned live workers while they run one of
-- its tasks (a gone worker never counts; a pinned one counts for its batch only, also while it
-- ends tasks of a batch it was moved from). Pinned workers are read from their own table: a
-- fleet of them costs no look at their executions (5,000 workers running 10,000 tasks: the
-- executions' tasks, read for each, made this 100 ms of PostgreSQL per call).
SELECT b.*, COALESCE(live.n, 0) AS workers
FROM batch b
LEFT JOIN (
    SELECT pairs.batch_id, COUNT(DISTINCT pairs.worker_id) AS n
    FROM (SELECT w.batch_id, w.id AS worker_id FROM worker w
          WHERE w.batch_id IS NOT NULL AND w.status IN ('starting', 'running', 'paused', 'draining')
          UNION
          SELECT t.batch_id, e.worker_id FROM worker w
          JOIN execution e ON e.worker_id = w.id
          JOIN task t ON t.id = e.task_id
          WHERE w.batch_id IS NULL AND w.status IN ('starting', 'running', 'paused', 'draining')
            AND e.status IN ('assigned', 'running', 'uploading')) pairs
    GROUP BY pairs.batch_id
) live ON live.batch_id = b.id
WHERE CAST(:name AS TEXT) IS NULL OR b.name = :name ORDER BY b.name

-- name: batch_counts
-- Maintained counts (triggers_*.sql): a few rows per batch, whatever the number of tasks.
SELECT c.batch_id, c.status, SUM(c.n) AS n FROM (
    SELECT batch_id, status, n FROM task_count UNION ALL SELECT batch_id, status, n FROM task_count_delta) c
WHERE CAST(:name AS TEXT) IS NULL OR c.batch_id = (SELECT id FROM batch WHERE name = :name)
GROUP BY c.batch_id, c.status

-- name: batch_set_priority
UPDATE batch SET priority = :priority, modified = :now WHERE name = :name

-- name: batch_set_status
UPDATE batch SET status = :status, modified = :now WHERE id = :id

-- name: batch_executing_tasks
-- Candidates only (read without locks): each is locked and looked at again before it changes.
SELECT t.id FROM task t JOIN execution e ON e.id = t.current_execution_id
WHERE t.batch_id = :batch_id AND e.status IN ('assigned', 'running', 'uploading')
  AND t.status NOT IN ('succeeded', 'failed', 'canceled')
ORDER BY t.id

-- name: batch_paused_tasks
-- Candidates only, as above.
SELECT id FROM task WHERE batch_id = :batch_id AND status = 'paused' ORDER BY id

-- name: batch_active_count
SELECT COUNT(*) AS n FROM task t JOIN execution e ON e.id = t.current_execution_id
WHERE t.batch_id = :batch_id AND e.status IN ('assigned', 'running', 'uploading')

-- name: batch_outside_dependents
SELECT DISTINCT d.task_id FROM task_dependency d
JOIN task r ON r.id = d.required_id JOIN task t ON t.id = d.task_id
WHERE r.batch_id = :batch_id AND t.batch_id <> :batch_id AND t.status NOT IN ('succeeded', 'failed', 'canceled')
ORDER BY d.task_id LIMIT 100

-- name: batch_delete_tasks
DELETE FROM task WHERE batch_id = :batch_id

-- name: batch_unset_workers
UPDATE worker SET batch_id = NULL, modified = :now WHERE batch_id = :batch_id

-- name: batch_delete
DELETE FROM batch WHERE id = :id

-- ---------------------------------------------------------------- tasks

-- name: task_insert
INSERT INTO task (id, batch_id, name, command, shell, container, container_options, inputs, resources, output,
                  status, priority, cpu, mem, gpu, disk, max_retries, download_timeout, run_timeout, use_cache,
                  status_changed, created, modified, submit_key)
VALUES (:id, :batch_id, :name, :command, :shell, :container, :container_options, :inputs, :resources, :output,
        :status, :priority, :cpu, :mem, :gpu, :disk, :max_retries, :download_timeout, :run_timeout, :use_cache,
        :now, :now, :now, :submit_key)

-- name: dependency_insert
INSERT INTO task_dependency (task_id, required_id) VALUES (:task_id, :required_id)

-- name: submission_insert
INSERT INTO submission (scope, key, digest, created) VALUES (:scope, :key, :digest, :now) ON CONFLICT DO NOTHING

-- name: submission_digest
SELECT digest FROM submission WHERE scope = :scope AND key = :key

-- name: submissions_expired
SELECT scope, key FROM submission WHERE created < :before ORDER BY created LIMIT :n

-- name: submission_forget
-- A key past its retention: its tasks stop answering to it, so the key reused creates new tasks.
DELETE FROM submission WHERE scope = :scope AND key = :key

-- name: task_forget_key
UPDATE task SET submit_key = NULL WHERE submit_key = :submit_key

-- name: task_ids_by_key
SELECT id FROM task WHERE submit_key = :key ORDER BY id

-- name: task_status_by_ids
SELECT id, status FROM task WHERE id IN {{ints :ids}}

-- name: dependency_list
SELECT d.task_id, d.required_id, r.status AS required_status
FROM task_dependency d JOIN task r ON r.id = d.required_id
WHERE d.task_id IN {{ints :ids}}

-- name: task_get
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id WHERE t.id = :id

-- fragment: task_list_filters
  AND t.id > :after
  AND (CAST(:batch_id AS BIGINT) IS NULL OR t.batch_id = :batch_id)
  AND (CAST(:statuses AS TEXT) IS NULL OR t.status IN {{strs :statuses}})
  AND (CAST(:name AS TEXT) IS NULL OR t.name = :name)
  AND (CAST(:ids AS TEXT) IS NULL OR t.id IN {{ints :ids}})
ORDER BY t.id
LIMIT :limit

-- Listings: one query per leading filter (the most selective one given), written as a plain
-- predicate an index serves; "x IS NULL OR" filters only refine it (SQLite never picks an
-- index for those, and walks the table in id order instead).

-- name: task_list
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id
WHERE 1 = 1 {{include task_list_filters}}

-- name: task_list_by_ids
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id
WHERE t.id IN {{ints :ids}} {{include task_list_filters}}

-- name: task_list_by_name
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id
WHERE t.name = :name {{include task_list_filters}}

-- name: task_list_by_one_status
-- One status: index task_status (status, id) gives the rows in id order, a page costs its rows.
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id
WHERE t.status = :status {{include task_list_filters}}

-- name: task_list_by_batch
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id
WHERE t.batch_id = :batch_id {{include task_list_filters}}

-- name: task_list_by_batch_one_status
-- A batch's tasks of one status: index task_batch_status (batch_id, status, id) gives them in id
-- order (through task_status, a batch with none of them read all the tasks of that status).
SELECT t.*, b.name AS batch FROM task t JOIN batch b ON b.id = t.batch_id
WHERE t.batch_id = :batch_id AND t.status = :status AND t.id > :after
ORDER BY t.id
LIMIT :limit

-- name: task_counts
-- Maintained counts (triggers_*.sql): a few rows per batch, whatever the number of tasks.
SELECT c.status, SUM(c.n) AS n FROM (
    SELECT batch_id, status, n FROM task_count UNION ALL SELECT batch_id, status, n FROM task_count_delta) c
WHERE CAST(:batch_id AS BIGINT) IS NULL OR c.batch_id = :batch_id
GROUP BY c.status

-- name: task_counts_drop_zero
DELETE FROM task_count WHERE n = 0

-- name: task_set_status
UPDATE task SET status = :status, status_changed = :now, modified = :now, retries_used = :retries_used
WHERE id = :id

-- name: task_unmet_count
SELECT COUNT(*) AS n FROM task_dependency d JOIN task r ON r.id = d.required_id
WHERE d.task_id = :id AND r.status <> 'succeeded'

-- name: task_update
UPDATE task SET batch_id = :batch_id, name = :name, command = :command, shell = :shell, container = :container,
    container_options = :container_options, inputs = :inputs, resources = :resources, output = :output,
    priority = :priority, cpu = :cpu, mem = :mem, gpu = :gpu, disk = :disk, max_retries = :max_retries,
    download_timeout = :download_timeout, run_timeout = :run_timeout, use_cache = :use_cache, modified = :now
WHERE id = :id

-- name: task_dependents
SELECT task_id FROM task_dependency WHERE required_id = :id

-- name: task_unfinished_dependents
SELECT d.task_id FROM task_dependency d JOIN task t ON t.id = d.task_id
WHERE d.required_id = :id AND t.status NOT IN ('succeeded', 'failed', 'canceled')
ORDER BY d.task_id

-- name: task_delete
DELETE FROM task WHERE id = :id

-- name: release_waiting
UPDATE task SET status = 'pending', status_changed = :now, modified = :now
WHERE status = 'waiting'
  AND (CAST(:ids AS TEXT) IS NULL OR id IN {{ints :ids}})
  AND NOT EXISTS (SELECT 1 FROM task_dependency d JOIN task r ON r.id = d.required_id
                  WHERE d.task_id = task.id AND r.status <> 'succeeded')

-- name: release_after
-- Waiting tasks that a requirement succeeding since :since may have released: the repair of a
-- release two concurrent completions both missed (each saw the other unfinished), driven by
-- the completions themselves (index task_succeeded_at), never by a sweep of all waiting tasks.
UPDATE task SET status = 'pending', status_changed = :now, modified = :now
WHERE status = 'waiting'
  AND id IN (SELECT d.task_id FROM task r JOIN task_dependency d ON d.required_id = r.id
             WHERE r.status = 'succeeded' AND r.status_changed >= :since)
  AND NOT EXISTS (SELECT 1 FROM task_dependency d JOIN task r ON r.id = d.required_id
                  WHERE d.task_id = task.id AND r.status <> 'succeeded')

-- ---------------------------------------------------------------- executions

-- name: execution_get
SELECT e.*, w.name AS worker_name, t.current_execution_id AS current_id
FROM execution e JOIN task t ON t.id = e.task_id LEFT JOIN worker w ON w.id = e.worker_id
WHERE e.id = :id

-- name: executions_task_ids
SELECT DISTINCT task_id FROM execution WHERE id IN {{ints :ids}}

-- name: execution_list
SELECT e.*, w.name AS worker_name FROM execution e LEFT JOIN worker w ON w.id = e.worker_id
WHERE e.task_id = :task_id ORDER BY e.id DESC

-- name: execution_phase
UPDATE execution SET status = :status, started = COALESCE(started, :now), deadline = :deadline, modified = :now
WHERE id = :id

-- name: execution_end
UPDATE execution SET status = :status, failure_class = :failure_class, return_code = :return_code,
    output_files = :output_files, peak_mem = :peak_mem, cpu_time = :cpu_time, message = :message,
    started = COALESCE(started, :now), finished = :now, lease_expires = NULL, modified = :now
WHERE id = :id

-- fragment: worker_current_executions
-- Of the executions worker w says it holds, those still current: joined on task.id, the primary
-- key (current_execution_id has no index). In each dialect file, heartbeat_reply includes it.
FROM execution e JOIN task t ON t.id = e.task_id AND t.current_execution_id = e.id
WHERE e.id IN {{ints :ids}} AND e.worker_id = w.id AND e.status IN ('assigned', 'running', 'uploading')

-- name: lease_renew_one
UPDATE execution SET lease_expires = :lease_expires
WHERE id = :id AND worker_id = :worker_id AND status IN ('assigned', 'running', 'uploading')

-- name: deadlines_passed
SELECT id, task_id FROM execution
WHERE status = 'running' AND deadline IS NOT NULL AND deadline < :now
ORDER BY id LIMIT 500

-- ---------------------------------------------------------------- output

-- name: output_insert
INSERT INTO output_chunk (execution_id, stream, pos, size, data) VALUES (:execution_id, :stream_name, :pos, :size, :data)
ON CONFLICT DO NOTHING

-- name: output_size_stdout
-- never backwards: two deliveries of one stream may commit in either order
UPDATE execution SET stdout_size = CASE WHEN stdout_size > :size THEN stdout_size ELSE :size END,
    stdout_done = CASE WHEN stdout_done = 1 THEN 1 ELSE :done END
WHERE id = :id

-- name: output_size_stderr
-- never backwards: two deliveries of one stream may commit in either order
UPDATE execution SET stderr_size = CASE WHEN stderr_size > :size THEN stderr_size ELSE :size END,
    stderr_done = CASE WHEN stderr_done = 1 THEN 1 ELSE :done END
WHERE id = :id

-- name: output_trim
DELETE FROM output_chunk
WHERE execution_id = :execution_id AND stream = :stream_name AND pos >= :head AND pos + size <= :cut

-- name: output_across_cut
SELECT pos, data FROM output_chunk
WHERE execution_id = :execution_id AND stream = :stream_name AND pos >= :head AND pos < :cut
  AND pos + size > :cut

-- name: output_delete_chunk
DELETE FROM output_chunk WHERE execution_id = :execution_id AND stream = :stream_name AND pos = :pos

-- name: output_read
SELECT pos, data FROM output_chunk
WHERE execution_id = :execution_id AND stream = :stream_name AND pos + size > :offset
ORDER BY pos

-- ---------------------------------------------------------------- signals

-- name: signal_insert
INSERT INTO signal (worker_id, execution_id, action, created) VALUES (:worker_id, :execution_id, :action, :now)

-- name: signal_ack_one
DELETE FROM signal WHERE worker_id = :worker_id AND id = :id

-- ---------------------------------------------------------------- workers

-- fragment: worker_with_active
SELECT w.*, b.name AS batch,
       (SELECT COUNT(*) FROM execution e WHERE e.worker_id = w.id
          AND e.status IN ('assigned', 'running', 'uploading')) AS active

-- name: worker_get
{{include worker_with_active}}
FROM worker w LEFT JOIN batch b ON b.id = w.batch_id WHERE w.id = :id

-- fragment: worker_and_retry
-- A worker, and whether an earlier try of this claim (its request id) already gave it executions.
{{include worker_with_active}},
       EXISTS (SELECT 1 FROM execution e WHERE e.worker_id = w.id AND e.claim_request = :request_id) AS retried
FROM worker w LEFT JOIN batch b ON b.id = w.batch_id WHERE w.id = :id

-- name: claim_worker
-- A claim's read of its worker, under the worker's lock (a retry then answers with what it gave).
SELECT x.*, {{include claim_room using x}} AS room FROM ({{include worker_and_retry}}) x

-- name: worker_by_name
SELECT * FROM worker WHERE name = :name

-- name: worker_list
SELECT w.*, b.name AS batch,
       (SELECT COUNT(*) FROM execution e WHERE e.worker_id = w.id
          AND e.status IN ('assigned', 'running', 'uploading')) AS active
FROM worker w LEFT JOIN batch b ON b.id = w.batch_id
WHERE (CAST(:batch_id AS BIGINT) IS NULL OR w.batch_id = :batch_id) AND w.id > :after
ORDER BY w.id
LIMIT :limit

-- name: worker_insert
INSERT INTO worker (name, hostname, status, setting, batch_id, concurrency, prefetch, cpu, mem, gpu, version,
                    last_seen, created, modified)
VALUES (:name, :hostname, :status, :setting, :batch_id, :concurrency, :prefetch, :cpu, :mem, :gpu, :version,
        :now, :now, :now)

-- name: worker_reattach
UPDATE worker SET hostname = :hostname, cpu = :cpu, mem = :mem, gpu = :gpu, version = :version,
    status = setting, last_seen = :now, modified = :now
WHERE id = :id

-- name: worker_set_batch
UPDATE worker SET batch_id = :batch_id, modified = :now WHERE id = :id

-- name: worker_update
UPDATE worker SET concurrency = :concurrency, prefetch = :prefetch, batch_id = :batch_id, setting = :setting,
    status = :status, modified = :now
WHERE id = :id

-- name: worker_seen
UPDATE worker SET last_seen = :now,
    status = CASE WHEN status IN ('starting', 'offline', 'lost') THEN setting ELSE status END
WHERE id = :id

-- name: worker_heartbeat
UPDATE worker SET last_seen = :now, stats = :stats,
    status = CASE WHEN status IN ('starting', 'offline', 'lost') THEN setting ELSE status END
WHERE id = :id

-- name: worker_active_executions
SELECT * FROM execution WHERE worker_id = :worker_id AND status IN ('assigned', 'running', 'uploading')

-- name: worker_delete
DELETE FROM worker WHERE id = :id

-- name: workers_silent
SELECT id FROM worker
WHERE last_seen < :before AND status IN ('starting', 'running', 'paused', 'draining')

-- name: workers_live_count
SELECT COUNT(*) AS n FROM worker WHERE status IN ('starting', 'running', 'paused', 'draining')

-- name: workers_set_offline
UPDATE worker SET status = 'offline', modified = :now WHERE id IN {{ints :ids}}

-- ---------------------------------------------------------------- claim

-- fragment: claimable
-- A pending task of a running batch that fits a worker's :cpu, :mem and :gpu (NULL: no limit).
-- A worker of one batch adds `t.batch_id = ...`: a filter of its own, which picks the index.
t.status = 'pending'
  AND t.batch_id IN (SELECT id FROM batch WHERE status = 'running')
  AND (t.cpu IS NULL OR t.cpu <= COALESCE(CAST(:cpu AS DOUBLE PRECISION), t.cpu))
  AND (t.mem IS NULL OR t.mem <= COALESCE(CAST(:mem AS DOUBLE PRECISION), t.mem))
  AND (t.gpu IS NULL OR t.gpu = 0 OR t.gpu <= COALESCE(CAST(:gpu AS INTEGER), 0))

-- fragment: claim_room
-- How many tasks a worker (its :parameters: a worker_and_retry row) may take now: its free slots
-- if it is set running and not gone for good; none for a retry of a claim that took some (the
-- retry is answered with what that one took). The one statement of this rule: the prospect, the
-- claim's read under the worker's lock and PostgreSQL's claim statement include it.
CASE WHEN :setting = 'running' AND :status IN ('starting', 'running', 'paused', 'draining', 'offline', 'lost')
          AND NOT :retried
     THEN :concurrency + :prefetch - :active ELSE 0 END

-- fragment: claim_waiting
-- Whether a task the worker `x` (a worker_and_retry row) could take is waiting, looked for with the
-- worker's own values: a worker of one batch among that batch's pending tasks (task_batch_pending),
-- any other in claim order (task_pending); each reads a few index entries, however many tasks wait.
-- (The first task in claim order, not EXISTS: PostgreSQL drops an EXISTS's ORDER BY, and may then
-- read the table from its start, where tasks that ran long ago are, for a first pending one.)
CASE WHEN x.batch_id IS NULL
     THEN (SELECT t.id FROM task t WHERE {{include claimable using x}}
           ORDER BY t.priority DESC, t.id LIMIT 1)
     ELSE (SELECT t.id FROM task t WHERE {{include claimable using x}} AND t.batch_id = x.batch_id
           ORDER BY t.priority DESC, t.id LIMIT 1)
END IS NOT NULL

-- name: claim_prospect
-- Before a claim, in one round trip: the worker (as claim_worker: its `room`) and whether a task it
-- could take is waiting (`waiting`).
SELECT x.*, {{include claim_room using x}} AS room, {{include claim_waiting}} AS waiting
FROM ({{include worker_and_retry}}) x

-- name: claim_prospects
-- claim_prospect's room and waiting for each of the workers :ids (no claim retried): the one look
-- of the long-polls a wake woke together (beats.Lookout).
SELECT x.id, {{include claim_room using x}} AS room, {{include claim_waiting}} AS waiting
FROM ({{include worker_with_active}}, FALSE AS retried
      FROM worker w LEFT JOIN batch b ON b.id = w.batch_id WHERE w.id IN {{ints :ids}}) x
ORDER BY x.id

-- name: claim_mark
UPDATE task SET status = 'assigned', attempts = attempts + 1, status_changed = :now, modified = :now
WHERE id IN {{ints :ids}}

-- name: claim_executions
INSERT INTO execution (task_id, attempt, worker_id, status, lease_expires, assigned, command, shell, container,
                       container_options, inputs, resources, output, run_timeout, download_timeout, created,
                       modified, claim_request)
SELECT id, attempts, CAST(:worker_id AS BIGINT), 'assigned', CAST(:lease_expires AS DOUBLE PRECISION),
       CAST(:now AS DOUBLE PRECISION), command, shell, container, container_options, inputs, resources, output,
       run_timeout, download_timeout, CAST(:now AS DOUBLE PRECISION), CAST(:now AS DOUBLE PRECISION),
       CAST(:request_id AS TEXT)
FROM task WHERE id IN {{ints :ids}}
ORDER BY id

-- name: claim_link
UPDATE task SET current_execution_id = (SELECT MAX(e.id) FROM execution e WHERE e.task_id = task.id)
WHERE id IN {{ints :ids}}

-- name: claim_result
SELECT e.*, t.name AS task_name, b.name AS batch, t.cpu AS cpu_request, w.name AS worker_name
FROM task t JOIN execution e ON e.id = t.current_execution_id JOIN batch b ON b.id = t.batch_id
LEFT JOIN worker w ON w.id = e.worker_id
WHERE t.id IN {{ints :ids}}
ORDER BY t.priority DESC, t.id

-- name: claim_by_request
-- What an earlier claim with this request id gave the worker (its reply may have been lost).
SELECT e.*, t.name AS task_name, b.name AS batch, t.cpu AS cpu_request, w.name AS worker_name
FROM execution e JOIN task t ON t.id = e.task_id JOIN batch b ON b.id = t.batch_id
LEFT JOIN worker w ON w.id = e.worker_id
WHERE e.worker_id = :worker_id AND e.claim_request = :request_id
ORDER BY t.priority DESC, t.id

-- ---------------------------------------------------------------- tokens

-- name: token_id_by_name
SELECT id FROM api_token WHERE name = :name

-- name: token_insert
INSERT INTO api_token (name, role, hash, worker_id, created) VALUES (:name, :role, :hash, :worker_id, :now)

-- name: token_insert_join
INSERT INTO api_token (name, role, hash, created, uses_left, expires, pinned_batch, pinned_name)
VALUES (:name, 'join', :hash, :now, :uses, :expires, :batch, :pinned_name)

-- name: token_by_id
SELECT id, name, role, worker_id, created, last_used, revoked, uses_left, expires, pinned_batch, pinned_name FROM api_token WHERE id = :id

-- name: token_by_name
SELECT id, name, role, worker_id, created, last_used, revoked, uses_left, expires, pinned_batch, pinned_name FROM api_token WHERE name = :name

-- name: token_by_hash
SELECT id, name, role, worker_id, revoked, uses_left, expires, pinned_batch, pinned_name
FROM api_token WHERE hash = :hash

-- name: token_list
SELECT id, name, role, worker_id, created, last_used, revoked, uses_left, expires, pinned_batch, pinned_name FROM api_token ORDER BY id

-- name: token_use_join
-- One registration spends one use, atomically: the row lock (PostgreSQL) or the
-- write lock (SQLite) makes racing registrations take turns, and the one that
-- finds no use left or the token expired changes nothing.
UPDATE api_token SET uses_left = uses_left - 1, last_used = :now
WHERE id = :id AND role = 'join' AND revoked IS NULL AND uses_left > 0 AND expires > :now

-- name: token_revoke
UPDATE api_token SET revoked = :now WHERE id = :id

-- name: token_epoch_get
SELECT COALESCE(MAX(epoch), 0) AS epoch FROM token_epoch

-- name: token_epoch_bump
INSERT INTO token_epoch (id, epoch) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET epoch = token_epoch.epoch + 1

-- name: token_revoke_worker
UPDATE api_token SET revoked = :now WHERE worker_id = :worker_id AND revoked IS NULL

-- name: token_touch
UPDATE api_token SET last_used = :now WHERE id = :id

-- name: token_admins_lock
-- The unrevoked admin tokens, locked (PostgreSQL) so concurrent revocations take turns.
SELECT id FROM api_token WHERE role = 'admin' AND revoked IS NULL ORDER BY id

-- name: schema_lock
-- Schema changes take turns (SQLite: the write transaction already holds the lock).
SELECT 1 AS locked

-- name: token_people_count
SELECT COUNT(*) AS n FROM api_token WHERE role IN ('admin', 'user') AND revoked IS NULL

-- ---------------------------------------------------------------- dispatcher lock

-- name: lock_insert
INSERT INTO dispatcher_lock (name, holder, expires) VALUES (:name, :holder, :expires)
ON CONFLICT DO NOTHING

-- name: lock_take
UPDATE dispatcher_lock SET holder = :holder, expires = :expires
WHERE name = :name AND (holder = :holder OR expires <= :now)

-- name: lock_delete
DELETE FROM dispatcher_lock WHERE name = :name AND holder = :holder

-- --- jobs and host keys --------------------------------------------------------------------

-- name: job_insert
INSERT INTO job (kind, target, status, params, progress, actor, log_lines, created, modified)
VALUES (:kind, :target, 'pending', :params, 0, :actor, 0, :now, :now)

-- name: job_get
SELECT id, kind, target, status, params, step, progress, message, actor, log_lines, created, modified, finished
FROM job WHERE id = :id

-- name: job_list
SELECT id, kind, target, status, params, step, progress, message, actor, log_lines, created, modified, finished
FROM job WHERE id > :after ORDER BY id LIMIT :limit

-- name: job_list_status
SELECT id, kind, target, status, params, step, progress, message, actor, log_lines, created, modified, finished
FROM job WHERE status = :status AND id > :after ORDER BY id LIMIT :limit

-- name: job_update
UPDATE job SET status = :status, step = :step, progress = :progress, message = :message,
    modified = :now, finished = :finished
WHERE id = :id

-- name: job_log_count
UPDATE job SET log_lines = log_lines + :n, modified = :now WHERE id = :id

-- name: job_log_insert
INSERT INTO job_log (job_id, seq, at, line) VALUES (:job_id, :seq, :at, :line)

-- name: job_log_read
SELECT job_id, seq, at, line FROM job_log WHERE job_id = :job_id AND seq > :after ORDER BY seq LIMIT :limit

-- name: job_delete
DELETE FROM job WHERE id = :id

-- name: host_key_get
SELECT host, key_type, key_data, fingerprint, created FROM host_key WHERE host = :host

-- name: host_key_insert
INSERT INTO host_key (host, key_type, key_data, fingerprint, created)
VALUES (:host, :key_type, :key_data, :fingerprint, :now)
ON CONFLICT (host) DO NOTHING

-- name: host_key_delete
DELETE FROM host_key WHERE host = :host

-- --- recruitment -----------------------------------------------------------------------------

-- name: recruiter_insert
INSERT INTO recruiter (batch_id, rank, provider, flavor, region, tasks_per_worker, minimum_tasks, maximum_workers,
                       concurrency, prefetch, created, modified)
VALUES (:batch_id, :rank, :provider, :flavor, :region, :tasks_per_worker, :minimum_tasks, :maximum_workers,
        :concurrency, :prefetch, :now, :now)

-- name: recruiter_get
SELECT r.*, b.name AS batch FROM recruiter r JOIN batch b ON b.id = r.batch_id WHERE r.id = :id

-- name: recruiter_find
SELECT r.id FROM recruiter r WHERE r.batch_id = :batch_id AND r.rank = :rank

-- name: recruiter_list
SELECT r.*, b.name AS batch FROM recruiter r JOIN batch b ON b.id = r.batch_id ORDER BY b.name, r.rank

-- name: recruiter_update
UPDATE recruiter SET provider = :provider, flavor = :flavor, region = :region, tasks_per_worker = :tasks_per_worker,
    minimum_tasks = :minimum_tasks, maximum_workers = :maximum_workers, concurrency = :concurrency,
    prefetch = :prefetch, modified = :now
WHERE id = :id

-- name: recruiter_delete
DELETE FROM recruiter WHERE id = :id

-- name: machine_insert
INSERT INTO machine (name, provider, region, flavor, price, status, idem_key, recruiter_id, batch_id, concurrency,
                     prefetch, created, modified)
VALUES (:name, :provider, :region, :flavor, :price, :status, :idem_key, :recruiter_id, :batch_id, :concurrency,
        :prefetch, :now, :now)

-- name: machine_get
SELECT m.*, b.name AS batch FROM machine m LEFT JOIN batch b ON b.id = m.batch_id WHERE m.id = :id

-- name: machine_list_active
SELECT m.*, b.name AS batch FROM machine m LEFT JOIN batch b ON b.id = m.batch_id
WHERE m.status NOT IN ('destroyed', 'failed') ORDER BY m.id

-- name: machine_by_name
SELECT m.*, b.name AS batch FROM machine m LEFT JOIN batch b ON b.id = m.batch_id WHERE m.name = :name

-- name: machine_list_all
SELECT m.*, b.name AS batch FROM machine m LEFT JOIN batch b ON b.id = m.batch_id ORDER BY m.id

-- name: machine_update
UPDATE machine SET status = :status, instance_id = :instance_id, address = :address, worker_id = :worker_id,
    message = :message, modified = :now, destroyed = :destroyed
WHERE id = :id

-- name: recruit_live_workers
SELECT batch_id, COUNT(*) AS n FROM worker
WHERE status IN ('starting', 'running', 'paused', 'draining') AND batch_id IS NOT NULL
GROUP BY batch_id

-- name: recruit_idle_workers
-- Workers with no execution under way, and since when: their last execution's end, else when
-- their machine became a worker (or they registered).
SELECT w.id, w.name, w.batch_id, b.name AS batch, w.permanent, w.provider, w.flavor, w.created,
       m.id AS machine_id, m.modified AS machine_since,
       (SELECT MAX(e.finished) FROM execution e WHERE e.worker_id = w.id) AS last_finished
FROM worker w LEFT JOIN machine m ON m.worker_id = w.id AND m.status = 'running'
LEFT JOIN batch b ON b.id = w.batch_id
WHERE w.status IN ('running', 'paused')
  AND NOT EXISTS (SELECT 1 FROM execution e WHERE e.worker_id = w.id AND e.status IN ('assigned', 'running', 'uploading'))

-- name: worker_set_machine
UPDATE worker SET permanent = 0, provider = :provider, region = :region, flavor = :flavor, batch_id = :batch_id,
    concurrency = :concurrency, prefetch = :prefetch, modified = :now
WHERE id = :id

-- name: worker_set_status
UPDATE worker SET status = :status, setting = :status, modified = :now WHERE id = :id

-- name: machine_costs
-- What spend is computed from: each rented machine's price per hour and the time it was held.
SELECT batch_id, worker_id, price, created, destroyed FROM machine
