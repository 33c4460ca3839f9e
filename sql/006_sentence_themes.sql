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
