-- HNSW (cosine) indexes on the embedding columns, one set per run: partial, on the run's
-- rows ({run_id} is the run's id, filled in by app/schema.py). Not a migration: applied
-- after the theme stage of a run, once the heaps are loaded (see the note in
-- 001_schema.sql). One set per run, so that starting a run (which drops its own set for
-- the bulk load) never takes the indexes another run's searches use.
-- The program raises maintenance_work_mem for the session that runs this.
-- The sentences' embeddings are halfvec (16-bit floats, sql/016_halfvec_sentences.sql),
-- so their index takes halfvec's operator class; topics' and themes' are vector.
CREATE INDEX IF NOT EXISTS sentence_topics_embedding_hnsw_run_{run_id}
    ON sentence_topics USING hnsw (embedding halfvec_cosine_ops) WHERE run_id = {run_id};
CREATE INDEX IF NOT EXISTS topics_embedding_hnsw_run_{run_id}
    ON topics USING hnsw (embedding vector_cosine_ops) WHERE run_id = {run_id};
CREATE INDEX IF NOT EXISTS themes_embedding_hnsw_run_{run_id}
    ON themes USING hnsw (embedding vector_cosine_ops) WHERE run_id = {run_id};
