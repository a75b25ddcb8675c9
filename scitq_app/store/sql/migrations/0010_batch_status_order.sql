-- 0010: a batch's tasks of one status in id order, a page read as its rows (a listing of a
-- batch's pending tasks read every pending task of the other batches through task_status).
DROP INDEX task_batch_status;
CREATE INDEX task_batch_status ON task (batch_id, status, id);
