-- Releases before per-run indexes built one HNSW index over each embedding column, for
-- every run at once. Since then each run builds partial indexes of its own (indexes.sql)
-- and drops only those before it loads; the old global ones were left behind, and
-- PostgreSQL kept them up to date on every write: a bulk load into indexed tables, which
-- the bulk-loading rule is there to avoid. They go; each run's own indexes stay.
DROP INDEX IF EXISTS sentence_topics_embedding_hnsw;
DROP INDEX IF EXISTS topics_embedding_hnsw;
DROP INDEX IF EXISTS themes_embedding_hnsw;
