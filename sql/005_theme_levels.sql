-- firmtopics schema, version 5: themes in levels.
--
-- The fine themes (level 1) group firm topics; each level above groups the themes of the
-- level below into broader ones, until the top level is small enough to read
-- (RunSettings.theme_top_level_size). A theme's parent is its theme one level up (NULL at
-- the top). Topics are linked to level-1 themes. Themes written before this version are
-- level 1 with no parent: a single level.
ALTER TABLE themes ADD COLUMN level integer NOT NULL DEFAULT 1 CHECK (level >= 1);
ALTER TABLE themes ADD COLUMN parent_theme_id bigint REFERENCES themes (theme_id) ON DELETE CASCADE;
-- Theme numbers restart at each level.
ALTER TABLE themes DROP CONSTRAINT themes_run_id_theme_no_key;
ALTER TABLE themes ADD CONSTRAINT themes_run_level_no UNIQUE (run_id, level, theme_no);
CREATE INDEX themes_parent ON themes (parent_theme_id);

-- Every theme with each of its ancestors, itself included (distance 0): one row per
-- (theme, ancestor). "A sentence up to its top theme" and "a top theme down to its firms
-- and sentences" are then one join each (see sentence_top_themes).
CREATE VIEW theme_lineage AS
WITH RECURSIVE up AS (
    SELECT theme_id, run_id, theme_id AS ancestor_id, 0 AS distance FROM themes
    UNION ALL
    SELECT up.theme_id, up.run_id, th.parent_theme_id, up.distance + 1
    FROM up JOIN themes th ON th.theme_id = up.ancestor_id
    WHERE th.parent_theme_id IS NOT NULL
)
SELECT up.run_id, up.theme_id, up.ancestor_id, a.level AS ancestor_level, a.name AS ancestor_name,
       a.parent_theme_id IS NULL AS ancestor_is_top, up.distance
FROM up JOIN themes a ON a.theme_id = up.ancestor_id;

-- Every sentence in a theme of a run (sentence_assignments, 004), with its fine theme and
-- its top theme: read it
-- "WHERE sentence_id = ..." (a sentence up to its top theme) or "WHERE top_theme_id = ..."
-- (a top theme down to its firms and sentences).
CREATE VIEW sentence_top_themes AS
SELECT sa.run_id,
       sa.run_name,
       sa.sentence_id,
       sa.firm_id,
       sa.firm_name,
       sa.doc_id,
       sa.text,
       sa.topic_id,
       sa.topic_name,
       sa.theme_id       AS fine_theme_id,
       l.ancestor_id     AS top_theme_id,
       l.ancestor_name   AS top_theme_name,
       l.ancestor_level  AS top_level
FROM sentence_assignments sa
JOIN theme_lineage l ON l.theme_id = sa.theme_id AND l.ancestor_is_top;

-- Every theme with its size; a broader theme counts the sentences of all the topics under
-- it. Its level and parent go last (CREATE OR REPLACE keeps the columns before them).
CREATE OR REPLACE VIEW theme_overview AS
SELECT th.run_id,
       r.name        AS run_name,
       th.theme_id,
       th.name       AS theme_name,
       th.summary,
       th.keywords,
       th.name_source,
       th.n_topics,
       th.n_firms,
       coalesce((SELECT sum(t.n_sentences) FROM theme_lineage l JOIN topics t ON t.theme_id = l.theme_id
                 WHERE l.ancestor_id = th.theme_id), 0)::integer
                     AS n_sentences,
       th.level,
       th.parent_theme_id
FROM themes th
JOIN runs r ON r.run_id = th.run_id;
