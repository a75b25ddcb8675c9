-- 0007: a bulk submission on SQLite counts its tasks once per chunk instead of once per row: the
-- insert trigger stands aside while task_count_hold has a row (see triggers_sqlite.sql).
-- PostgreSQL's statement-level triggers count once per statement already.
CREATE TABLE task_count_hold (held INTEGER NOT NULL);

{task_count_insert_trigger}
