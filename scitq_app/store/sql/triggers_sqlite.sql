-- Exact counts of tasks by batch and status, kept by the database itself on every change of a
-- task row (whatever statement makes it). SQLite has one writer at a time: the counts are
-- updated in place. (One line per trigger: statements are split at line-ending semicolons.)
CREATE TRIGGER task_count_insert AFTER INSERT ON task BEGIN INSERT INTO task_count (batch_id, status, n) VALUES (NEW.batch_id, NEW.status, 1) ON CONFLICT (batch_id, status) DO UPDATE SET n = n + 1; END;

CREATE TRIGGER task_count_update AFTER UPDATE OF status, batch_id ON task WHEN OLD.status IS NOT NEW.status OR OLD.batch_id IS NOT NEW.batch_id BEGIN UPDATE task_count SET n = n - 1 WHERE batch_id = OLD.batch_id AND status = OLD.status; INSERT INTO task_count (batch_id, status, n) VALUES (NEW.batch_id, NEW.status, 1) ON CONFLICT (batch_id, status) DO UPDATE SET n = n + 1; END;

CREATE TRIGGER task_count_delete AFTER DELETE ON task BEGIN UPDATE task_count SET n = n - 1 WHERE batch_id = OLD.batch_id AND status = OLD.status; END;
