-- 0002: the singleton lock that keeps two dispatchers from acting at once.

CREATE TABLE dispatcher_lock (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires {real} NOT NULL
);
