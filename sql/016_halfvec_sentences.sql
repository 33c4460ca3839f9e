-- firmtopics schema, version 16: the sentences' embeddings as 16-bit floats.
--
-- sentence_topics is the largest table and its HNSW indexes the largest indexes, and
-- the embedding is most of each: pgvector's halfvec keeps each number in 16 bits, which
-- takes the table to 0.55 of its size and the index to 0.57, for 99.4% of vector's
-- search recall (docs/benchmarks.md, section 15). Topics' and themes' embeddings stay vector: small
-- tables, and the theme stage's means and distances are computed from them.
--
-- The column keeps its dimension (vector(384) becomes halfvec(384); a database no run
-- has typed yet keeps it open, and app/schema.py types it halfvec(dim) then). Each
-- value becomes the nearest 16-bit float. An HNSW index names its operator class, and
-- vector's does not take halfvec, so each run's sentence index is dropped, the column
-- converted, and the index built again with halfvec's class: a finished run is searched
-- through its index at once, without being run again. This rewrites the table and its
-- indexes, in one transaction: it takes as long as a run's index stage and, while it
-- runs, twice the table's disk space (docs/deploy.md).
DO $$
DECLARE
    vector_type text;
    names text[];
    definitions text[];
    statement text;
BEGIN
    IF to_regtype('halfvec') IS NULL THEN
        RAISE EXCEPTION 'the vector extension is version %; firmtopics needs 0.7.0 or later (halfvec)',
            (SELECT extversion FROM pg_extension WHERE extname = 'vector')
            USING HINT = 'ALTER EXTENSION vector UPDATE, on a server with pgvector 0.7.0 or later installed';
    END IF;
    SELECT format_type(atttypid, atttypmod) INTO vector_type FROM pg_attribute
    WHERE attrelid = 'sentence_topics'::regclass AND attname = 'embedding' AND atttypid = 'vector'::regtype;
    IF vector_type IS NULL THEN
        RETURN;  -- halfvec already
    END IF;
    -- Each HNSW index on the column (one per run): its name, and its definition with
    -- halfvec's operator class in place of vector's (vector_cosine_ops -> halfvec_cosine_ops).
    SELECT coalesce(array_agg(i.indexrelid::regclass::text), '{}'),
           coalesce(array_agg(regexp_replace(pg_get_indexdef(i.indexrelid),
                                             '\mvector_(\w+_ops)\M', 'halfvec_\1', 'g')), '{}')
    INTO names, definitions
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
    WHERE i.indrelid = 'sentence_topics'::regclass AND am.amname = 'hnsw';
    FOREACH statement IN ARRAY names LOOP
        EXECUTE format('DROP INDEX %s', statement);
    END LOOP;
    EXECUTE format('ALTER TABLE sentence_topics ALTER COLUMN embedding TYPE %1$s USING embedding::%1$s',
                   replace(vector_type, 'vector', 'halfvec'));
    -- As build_vector_indexes does: at least 1 GB for the builds, for this transaction only.
    PERFORM set_config('maintenance_work_mem', '1GB', true)
    WHERE pg_size_bytes('1GB') > pg_size_bytes(current_setting('maintenance_work_mem'));
    FOREACH statement IN ARRAY definitions LOOP
        EXECUTE statement;
    END LOOP;
END
$$;
