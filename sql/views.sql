-- firmtopics views for analysts, the one text of each.
--
-- Not a migration: the program drops every view here and creates it again whenever it
-- applies a migration or this file has changed (app/schema.py), so a migration may change
-- the tables beneath a view without restating it, and a view changes here only.
--
-- Each view is a plain join of the tables, named for the question it answers, with the
-- run's name beside its id so that a query can say "WHERE run_name = 'default'". They
-- hold no data of their own: they are always in step with the tables.
--
-- No view reads an embedding column. The first run retypes those columns to
-- halfvec(dim) or vector(dim) (see app/schema.py), and PostgreSQL refuses to retype a
-- column a view depends on.

-- Every sentence of a run with its place in the hierarchy: firm, topic, theme. Outliers
-- (sentences in no topic) are kept, with NULL topic. topic_assignment says how a sentence
-- came to its topic ('cluster' or 'nearest'); a sentence's theme is its topic's, else the
-- theme it was attached to, and theme_via says which ('topic' or 'nearest'; NULL for a
-- sentence in no theme).
CREATE VIEW sentence_assignments AS
SELECT st.run_id,
       r.name        AS run_name,
       st.sentence_id,
       st.firm_id,
       f.firm_name,
       s.doc_id,
       s.text,
       st.topic_id,
       t.name        AS topic_name,
       th.theme_id,
       th.name       AS theme_name,
       st.topic_assignment,
       CASE WHEN t.theme_id IS NOT NULL THEN 'topic'
            WHEN st.theme_id IS NOT NULL THEN 'nearest' END AS theme_via
FROM sentence_topics st
JOIN runs r           ON r.run_id = st.run_id
JOIN sentences s      ON s.sentence_id = st.sentence_id
JOIN firms f          ON f.firm_id = st.firm_id
LEFT JOIN topics t    ON t.topic_id = st.topic_id
LEFT JOIN themes th   ON th.theme_id = coalesce(t.theme_id, st.theme_id);

-- A theme down to the sentences behind it: those of its topics and those attached to it
-- (topic_id and topic_name NULL), one row per (theme, sentence).
CREATE VIEW theme_sentences AS
SELECT th.run_id,
       r.name        AS run_name,
       th.theme_id,
       th.name       AS theme_name,
       t.topic_id,
       t.name        AS topic_name,
       st.firm_id,
       f.firm_name,
       st.sentence_id,
       s.doc_id,
       s.text,
       CASE WHEN t.topic_id IS NOT NULL THEN 'topic' ELSE 'nearest' END AS theme_via
FROM sentence_topics st
LEFT JOIN topics t      ON t.topic_id = st.topic_id
JOIN themes th          ON th.theme_id = coalesce(t.theme_id, st.theme_id)
JOIN runs r             ON r.run_id = th.run_id
JOIN firms f            ON f.firm_id = st.firm_id
JOIN sentences s        ON s.sentence_id = st.sentence_id;

-- Which themes a firm talks about, and how much: one row per (firm, theme).
-- n_sentences counts the sentences of the firm's topics in that theme.
CREATE VIEW firm_themes AS
SELECT t.run_id,
       r.name                AS run_name,
       t.firm_id,
       f.firm_name,
       t.theme_id,
       th.name               AS theme_name,
       count(*)::integer     AS n_topics,
       sum(t.n_sentences)::integer AS n_sentences
FROM topics t
JOIN runs r    ON r.run_id = t.run_id
JOIN firms f   ON f.firm_id = t.firm_id
JOIN themes th ON th.theme_id = t.theme_id
GROUP BY t.run_id, r.name, t.firm_id, f.firm_name, t.theme_id, th.name;

-- Every firm topic with its firm and theme, in one row: the table an analyst reads first.
CREATE VIEW topic_overview AS
SELECT t.run_id,
       r.name        AS run_name,
       t.topic_id,
       t.firm_id,
       f.firm_name,
       t.name        AS topic_name,
       t.summary,
       t.keywords,
       t.name_source,
       t.n_sentences,
       t.theme_id,
       th.name       AS theme_name,
       t.theme_assignment
FROM topics t
JOIN runs r         ON r.run_id = t.run_id
JOIN firms f        ON f.firm_id = t.firm_id
LEFT JOIN themes th ON th.theme_id = t.theme_id;

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

-- Every theme with its size in sentences as well as topics and firms; a broader theme
-- counts the sentences of all the topics under it.
CREATE VIEW theme_overview AS
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

-- Every sentence in a theme of a run (sentence_assignments), with its fine theme and its
-- top theme: read it "WHERE sentence_id = ..." (a sentence up to its top theme) or
-- "WHERE top_theme_id = ..." (a top theme down to its firms and sentences).
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

-- Each fine theme's prevalence per period: the firms and sentences of the period in it,
-- and its share of the period's sentences that are in a theme (share_of_period sums to 1
-- over a run's themes in one period). A sentence's theme is sentence_assignments' (its
-- topic's, or the one it was attached to); sentences of documents without a period are
-- left out. The counts are theme_period_counts', written when the run's sentences are all
-- in their themes (schema 14), so reading this view does not aggregate the run again.
CREATE VIEW theme_periods AS
SELECT c.run_id,
       r.name   AS run_name,
       c.theme_id,
       th.name  AS theme_name,
       c.period,
       c.n_firms,
       c.n_sentences,
       round(c.n_sentences::numeric / sum(c.n_sentences) OVER (PARTITION BY c.run_id, c.period), 4) AS share_of_period
FROM theme_period_counts c
JOIN runs r    ON r.run_id = c.run_id
JOIN themes th ON th.theme_id = c.theme_id;

-- Each firm's exposure to each theme, period by period: the panel a regression reads. One
-- row per firm, period and theme, at every level: n_sentences, the firm-period's sentences
-- in the theme (a broader theme counts those of every fine theme below it);
-- period_sentences, all the firm-period's sentences in the run, in a theme or not; share,
-- the one over the other. A firm's periods are its documents' (documents, schema 8);
-- sentences of a document without a period are left out, as in theme_periods.
--
-- Zeros: every firm-period has a row for every top-level theme, with 0 where it never
-- mentions the theme, so that a regression sees the firms that said nothing about it.
-- Below the top, a firm-period has rows only for the themes it mentions: there are at
-- most FIRMTOPICS_THEME_TOP_LEVEL_SIZE (20) top themes, but about sqrt(topics) fine ones,
-- and with every zero kept, 7,000 firms x 40 quarters x 1,000 fine themes would be 280
-- million rows, nearly all of them zeros (docs/exploring.md shows how to fill them).
CREATE VIEW firm_theme_periods AS
WITH fine AS (
    -- The run's dated sentences, read once: one row per firm, period and fine theme
    -- (NULL: sentences in no theme), with the firm-period's sentences beside it.
    SELECT st.run_id, st.firm_id, d.period, coalesce(t.theme_id, st.theme_id) AS theme_id,
           count(*) AS n_sentences,
           sum(count(*)) OVER (PARTITION BY st.run_id, st.firm_id, d.period)::bigint AS period_sentences
    FROM sentence_topics st
    JOIN sentences s   ON s.sentence_id = st.sentence_id
    JOIN documents d   ON d.firm_id = s.firm_id AND d.doc_id = s.doc_id
    LEFT JOIN topics t ON t.topic_id = st.topic_id
    GROUP BY st.run_id, st.firm_id, d.period, coalesce(t.theme_id, st.theme_id)
), mentioned AS (
    -- Every theme a firm-period mentions, at every level: its fine themes and those above.
    SELECT f.run_id, f.firm_id, f.period, l.ancestor_id AS theme_id, l.ancestor_is_top AS is_top,
           sum(f.n_sentences)::bigint AS n_sentences, max(f.period_sentences) AS period_sentences
    FROM fine f JOIN theme_lineage l ON l.theme_id = f.theme_id
    GROUP BY f.run_id, f.firm_id, f.period, l.ancestor_id, l.ancestor_is_top
), cells AS (
    SELECT run_id, firm_id, period, theme_id, n_sentences, period_sentences FROM mentioned WHERE NOT is_top
    UNION ALL
    -- The top level in full: each firm-period with each top theme of its run, mentioned or not.
    SELECT p.run_id, p.firm_id, p.period, top.theme_id, coalesce(m.n_sentences, 0), p.period_sentences
    FROM (SELECT DISTINCT run_id, firm_id, period, period_sentences FROM fine) p
    JOIN themes top      ON top.run_id = p.run_id AND top.parent_theme_id IS NULL
    LEFT JOIN mentioned m ON m.run_id = p.run_id AND m.firm_id = p.firm_id AND m.period = p.period
                         AND m.theme_id = top.theme_id
)
SELECT c.run_id,
       r.name                               AS run_name,
       c.firm_id,
       c.period,
       th.level,
       c.theme_id,
       th.name                              AS theme_name,
       c.n_sentences::integer               AS n_sentences,
       c.period_sentences::integer          AS period_sentences,
       c.n_sentences::float8 / c.period_sentences AS share
FROM cells c
JOIN themes th ON th.theme_id = c.theme_id
JOIN runs r    ON r.run_id = c.run_id;
