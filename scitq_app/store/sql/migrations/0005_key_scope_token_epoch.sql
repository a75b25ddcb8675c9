-- 0005: idempotency keys belong to the token that used them and remember the
-- request they answered (the same key with another body is refused, never
-- answered with the old ids); and a revocation counter that every server
-- process reads about once a second, so a revoked token stops working on all
-- of them within 2 s although each caches tokens.

-- Keys used before this version were global: they are kept, under a scope no
-- token has, so that they never match again.
CREATE TABLE submission_0004 AS SELECT key, created FROM submission;

DROP TABLE submission;

CREATE TABLE submission (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    created {real} NOT NULL,
    PRIMARY KEY (scope, key)
);

INSERT INTO submission (scope, key, digest, created) SELECT '0004', key, '', created FROM submission_0004;

DROP TABLE submission_0004;

-- One row (id 1), bumped by every revocation, worker deletion and re-registration.
CREATE TABLE token_epoch (
    id INTEGER PRIMARY KEY,
    epoch {bigint} NOT NULL
);
