-- firmtopics schema, version 1.
--
-- The hierarchy is relational: a theme has topics, a topic has sentences, a sentence
-- belongs to a firm. Every link is a foreign key, so "theme -> sentences" and
-- "sentence -> theme" are plain joins.
--
-- There is deliberately NO vector index here. Rows are bulk-loaded into plain heaps, one
-- transaction per firm, and the HNSW indexes (sql/indexes.sql) are built once after the
-- theme stage: building an index at the end is far faster than maintaining it during
-- millions of inserts.
--
-- The embedding columns are created without a dimension. The first run fixes the
-- database's dimension (see database_meta) and types the columns as vector(dim), which
-- HNSW needs.

CREATE EXTENSION IF NOT EXISTS vector;

-- Facts about the database as a whole, e.g. the embedding dimension fixed by the first run.
CREATE TABLE database_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE firms (
    firm_id   text PRIMARY KEY,
    firm_name text
);

-- One row per ingested sentence. A sentence is identified by (firm, document, text):
-- ingesting the same file twice adds nothing, and the same text twice within one
-- document is stored once. The text is stored whole, however long.
CREATE TABLE sentences (
    sentence_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    firm_id     text NOT NULL REFERENCES firms (firm_id),
    doc_id      text,
    text        text NOT NULL,
    text_md5    uuid GENERATED ALWAYS AS (md5(text)::uuid) STORED,
    CONSTRAINT sentences_identity UNIQUE NULLS NOT DISTINCT (firm_id, doc_id, text_md5)
);
CREATE INDEX sentences_firm ON sentences (firm_id);

-- A run is a named set of settings. Everything a result depends on is recorded here
-- (settings, model, package versions), so a published figure can be traced back.
CREATE TABLE runs (
    run_id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    settings         jsonb NOT NULL,
    model            text NOT NULL,
    embedding_dim    integer NOT NULL,
    package_versions jsonb NOT NULL,
    backend          jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- running -> firms_done -> themes_done -> complete; 'interrupted' and 'failed' resume.
    status           text NOT NULL DEFAULT 'running',
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    timings          jsonb NOT NULL DEFAULT '{}'::jsonb,
    llm_usage        jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- The state of each firm within a run: written in the same transaction as the firm's
-- topics and sentence assignments, so a firm is in the database whole or not at all.
CREATE TABLE run_firms (
    run_id      integer NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    firm_id     text NOT NULL REFERENCES firms (firm_id),
    status      text NOT NULL CHECK (status IN ('done', 'skipped', 'failed')),
    reason      text,
    n_sentences integer NOT NULL DEFAULT 0,
    n_topics    integer NOT NULL DEFAULT 0,
    n_outliers  integer NOT NULL DEFAULT 0,
    seconds     jsonb NOT NULL DEFAULT '{}'::jsonb,
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, firm_id)
);

CREATE TABLE themes (
    theme_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     integer NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    theme_no   integer NOT NULL,             -- BERTopic's number for it within the run
    name       text NOT NULL,
    summary    text NOT NULL,
    keywords   text[] NOT NULL,
    name_source text NOT NULL CHECK (name_source IN ('llm', 'keywords')),
    n_topics   integer NOT NULL,
    n_firms    integer NOT NULL,
    embedding  vector,
    UNIQUE (run_id, theme_no)
);

CREATE TABLE topics (
    topic_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      integer NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    firm_id     text NOT NULL REFERENCES firms (firm_id),
    topic_no    integer NOT NULL,            -- BERTopic's number for it within the firm
    name        text NOT NULL,
    summary     text NOT NULL,
    keywords    text[] NOT NULL,
    name_source text NOT NULL CHECK (name_source IN ('llm', 'keywords')),
    n_sentences integer NOT NULL,
    -- The sentences shown to the namer: the evidence behind the label.
    evidence_sentence_ids bigint[] NOT NULL DEFAULT '{}',
    -- NULL until the theme stage; stays NULL for a topic the theme clustering left out.
    theme_id    bigint REFERENCES themes (theme_id) ON DELETE SET NULL,
    -- 'cluster': the theme clustering put it there; 'nearest': it was an outlier of the
    -- theme clustering and was given the theme whose centre is nearest.
    theme_assignment text CHECK (theme_assignment IN ('cluster', 'nearest')),
    embedding   vector,
    UNIQUE (run_id, firm_id, topic_no)
);
CREATE INDEX topics_theme ON topics (theme_id);

-- Each sentence's embedding and topic within a run. topic_id is NULL for an outlier
-- (a sentence HDBSCAN put in no cluster). A separate table, not columns on sentences,
-- because several runs (other models, other settings) may coexist in one database.
CREATE TABLE sentence_topics (
    run_id      integer NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    sentence_id bigint NOT NULL REFERENCES sentences (sentence_id),
    firm_id     text NOT NULL REFERENCES firms (firm_id),
    topic_id    bigint REFERENCES topics (topic_id),
    embedding   vector NOT NULL,
    PRIMARY KEY (run_id, sentence_id)
);
CREATE INDEX sentence_topics_topic ON sentence_topics (topic_id);
