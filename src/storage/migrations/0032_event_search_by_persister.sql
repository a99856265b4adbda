-- `event_search` rows are written by the event persister, in the statement
-- batch of its transaction (`storage::search::index`), no longer by a trigger:
-- the trigger ran a PL/pgSQL function and a separate INSERT per event, most
-- of the `events` insert's time; one statement per batch with the text the
-- persister already holds costs a tenth of it. Which keys are indexed, and the
-- 'english' configuration, stay as migration 0022 made them.
DROP TRIGGER event_search_on_insert ON events;
DROP FUNCTION event_search_index();
