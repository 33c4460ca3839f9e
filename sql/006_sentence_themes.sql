-- firmtopics schema, version 6: a sentence in no topic of its firm may still have a theme.
--
-- A firm may mention something too rarely for a topic of its own (fewer sentences than
-- its smallest topic) that other firms talk about at length. After the themes are
-- formed, such a sentence joins the nearest fine theme (by the centre of the theme's
-- sentences) when its cosine similarity to it is at least
-- RunSettings.theme_outlier_threshold. sentence_topics.theme_id holds that theme; it is
-- NULL for every sentence in a topic (whose theme is its topic's) and for a sentence too
-- far from every theme. Deleting the run's themes (the theme stage redone on resume)
-- clears it.
ALTER TABLE sentence_topics ADD COLUMN theme_id bigint REFERENCES themes (theme_id) ON DELETE SET NULL;
ALTER TABLE sentence_topics ADD CONSTRAINT sentence_topics_theme_only_without_topic
    CHECK (theme_id IS NULL OR topic_id IS NULL);
-- For the foreign key: deleting a run's themes finds the sentences that point at them.
CREATE INDEX sentence_topics_theme ON sentence_topics (theme_id) WHERE theme_id IS NOT NULL;

-- A sentence's theme is its topic's, else the theme it was attached to; theme_via says
-- which ('topic' or 'nearest'; NULL for a sentence in no theme). The new column goes last
-- (CREATE OR REPLACE keeps the others); sentence_top_themes, built on this view, follows.
CREATE OR REPLACE VIEW sentence_assignments AS
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
-- (topic_id and topic_name NULL), one row per (theme, sentence); theme_via goes last.
CREATE OR REPLACE VIEW theme_sentences AS
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
