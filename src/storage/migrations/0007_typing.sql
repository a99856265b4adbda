-- The typing stream lives in its writers' memory; only its positions come
-- from PostgreSQL, so that several typing writers share one sequence of
-- positions (and the /sync token's typing component is a vector clock's
-- floor like every other). A fresh sequence consumes 1: position 1 counts as
-- persisted before anything was written.
CREATE SEQUENCE typing_stream_seq;
SELECT nextval('typing_stream_seq');
