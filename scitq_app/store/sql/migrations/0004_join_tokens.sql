-- 0004: join tokens. A `join` token registers workers, and nothing else: at most
-- `uses_left` of them, until `expires`, optionally into a pinned batch and under
-- a pinned worker name. The columns stay NULL for every other role.

ALTER TABLE api_token ADD COLUMN uses_left INTEGER;

ALTER TABLE api_token ADD COLUMN expires {real};

ALTER TABLE api_token ADD COLUMN pinned_batch TEXT;

ALTER TABLE api_token ADD COLUMN pinned_name TEXT;
