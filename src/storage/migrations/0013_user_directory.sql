-- The user directory (issue 13): the words users are found by, each a
-- normalized word of their display name or user id (NFKD, combining marks
-- dropped, lowercase: `storage/user_directory.rs` makes them). A search
-- matches every word it is given as a prefix of one of a user's words,
-- through `user_directory_terms_prefix` (text_pattern_ops: byte-wise order,
-- so a prefix is a range whatever the database's collation). Who may see
-- whom is read from rooms' current state at search time, so it is as
-- current as the rooms are, on every instance.
CREATE TABLE user_directory_terms (
    user_id TEXT NOT NULL,
    term TEXT NOT NULL
);
CREATE INDEX user_directory_terms_prefix ON user_directory_terms (term text_pattern_ops);
CREATE INDEX user_directory_terms_user ON user_directory_terms (user_id);

-- Users registered before this migration: their words, made in SQL as the
-- server makes them in Rust for the Latin, Greek and Cyrillic marks
-- (U+0300-U+036F); a later profile change rewrites them in Rust.
INSERT INTO user_directory_terms (user_id, term)
SELECT DISTINCT u.user_id, word
FROM users u,
     regexp_split_to_table(
         lower(regexp_replace(
             normalize(coalesce(u.displayname, '') || ' ' || u.user_id, NFKD),
             '[\u0300-\u036f]', '', 'g')),
         '[^[:alnum:]]+') AS word
WHERE word <> '';
