-- The PostgreSQL twin of migrations/sqlite/0004 (which explains the column).
ALTER TABLE multipart_uploads ADD COLUMN holder TEXT;
