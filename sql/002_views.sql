-- firmtopics schema, version 2: views for analysts.
--
-- Each view is a plain join of the tables in 001_schema.sql, named for the question it
-- answers, with the run's name beside its id so that a query can say
-- "WHERE run_name = 'default'". They hold no data of their own: they are always in step
-- with the tables.
--
-- No view reads an embedding column. The first run retypes those columns to
-- vector(dim) (see app/schema.py), and PostgreSQL refuses to retype a column a view
-- depends on.

-- Every sentence of a run with its place in the hierarchy: firm, topic, theme.
-- Outliers (sentences in no topic) are kept, with NULL topic and theme.
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
       t.theme_id,
       th.name       AS theme_name
FROM sentence_topics st
JOIN runs r           ON r.run_id = st.run_id
JOIN sentences s      ON s.sentence_id = st.sentence_id
JOIN firms f          ON f.firm_id = st.firm_id
LEFT JOIN topics t    ON t.topic_id = st.topic_id
LEFT JOIN themes th   ON th.theme_id = t.theme_id;

-- A theme down to the sentences behind it: one row per (theme, sentence).
CREATE VIEW theme_sentences AS
SELECT th.run_id,
       r.name        AS run_name,
       th.theme_id,
       th.name       AS theme_name,
       t.topic_id,
       t.name        AS topic_name,
       t.firm_id,
       f.firm_name,
       st.sentence_id,
       s.doc_id,
       s.text
FROM themes th
JOIN runs r             ON r.run_id = th.run_id
JOIN topics t           ON t.theme_id = th.theme_id
JOIN firms f            ON f.firm_id = t.firm_id
JOIN sentence_topics st ON st.topic_id = t.topic_id
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

-- Every theme with its size in sentences as well as topics and firms.
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
       coalesce((SELECT sum(t.n_sentences) FROM topics t WHERE t.theme_id = th.theme_id), 0)::integer
                     AS n_sentences
FROM themes th
JOIN runs r ON r.run_id = th.run_id;
