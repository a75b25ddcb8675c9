-- 0003: an idempotency key on submissions, so a client retrying a submit
-- whose reply it never got does not create the tasks twice.

ALTER TABLE task ADD COLUMN submit_key TEXT;

CREATE INDEX task_submit_key ON task (submit_key) WHERE submit_key IS NOT NULL;

-- One row per key, inserted first: a concurrent retry waits on it instead of
-- creating the tasks a second time.
CREATE TABLE submission (
    key TEXT PRIMARY KEY,
    created {real} NOT NULL
);
