-- 0009: a worker of one batch finds that batch's pending tasks in claim order, reading no other
-- task. Without it the planners may read a young batch through task_batch (its statistics, taken
-- when the batch was empty, make both indexes look alike), that is every task of it that has run.
CREATE INDEX task_batch_pending ON task (batch_id, priority DESC, id) WHERE status = 'pending';
