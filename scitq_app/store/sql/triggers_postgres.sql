-- Exact counts of tasks by batch and status, kept by the database itself on every change of a
-- task row (whatever statement makes it). Concurrent transactions must not queue on a counter
-- row (claims would take turns, and two counters locked in opposite orders deadlock): each
-- statement appends its net change to task_count_delta, which nobody updates, and the dispatcher
-- folds the deltas into task_count. A count is task_count plus the deltas: exact in any snapshot.
-- (One line per function: statements are split at line-ending semicolons.)
CREATE FUNCTION task_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO task_count_delta (batch_id, status, n) SELECT batch_id, status, COUNT(*) FROM new_rows GROUP BY batch_id, status; RETURN NULL; END $$;

CREATE FUNCTION task_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO task_count_delta (batch_id, status, n) SELECT batch_id, status, SUM(n) FROM (SELECT batch_id, status, -1 AS n FROM old_rows UNION ALL SELECT batch_id, status, 1 AS n FROM new_rows) c GROUP BY batch_id, status HAVING SUM(n) <> 0; RETURN NULL; END $$;

CREATE FUNCTION task_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO task_count_delta (batch_id, status, n) SELECT batch_id, status, -COUNT(*) FROM old_rows GROUP BY batch_id, status; RETURN NULL; END $$;

CREATE TRIGGER task_count_insert AFTER INSERT ON task REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_count_inserted();

CREATE TRIGGER task_count_update AFTER UPDATE ON task REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_count_updated();

CREATE TRIGGER task_count_delete AFTER DELETE ON task REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_count_deleted();
