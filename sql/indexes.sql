-- HNSW (cosine) indexes on the embedding columns. Not a migration: applied after the
-- theme stage of a run, once the heaps are loaded (see the note in 001_schema.sql).
-- The program raises maintenance_work_mem for the session that runs this.
CREATE INDEX IF NOT EXISTS sentence_topics_embedding_hnsw
    ON sentence_topics USING hnsw (embedding vector_cosine_ops);
CREATE INDEX IF NOT EXISTS topics_embedding_hnsw
    ON topics USING hnsw (embedding vector_cosine_ops);
CREATE INDEX IF NOT EXISTS themes_embedding_hnsw
    ON themes USING hnsw (embedding vector_cosine_ops);
