-- firmtopics schema, version 4: quality figures with every run, and sentences attached to
-- a topic by nearness marked as such.
--
-- run_firms.quality: one firm's figures (app/quality.py firm_quality): topics, outlier,
-- nearest and unassigned shares, the largest topic's share, keyword coherence (NPMI) and
-- diversity. NULL for a firm that was skipped or failed.
-- runs.quality: the run's figures (app/quality.py run_quality), written after the theme
-- stage: the firm figures aggregated, the themes' sizes, the firms to look at.
ALTER TABLE run_firms ADD COLUMN quality jsonb;
ALTER TABLE runs ADD COLUMN quality jsonb;

-- How a sentence came to its topic: 'cluster' (HDBSCAN put it there) or 'nearest' (an
-- outlier of HDBSCAN, attached to the topic whose centre is nearest because it was close
-- enough: RunSettings.outlier_threshold). NULL for a sentence in no topic. A researcher
-- counts with or without the 'nearest' ones.
ALTER TABLE sentence_topics ADD COLUMN topic_assignment text
    CHECK (topic_assignment IN ('cluster', 'nearest'));
-- Runs written before this version attached no outlier: each of their sentences in a topic
-- was put there by the clustering.
UPDATE sentence_topics SET topic_assignment = 'cluster' WHERE topic_id IS NOT NULL;
ALTER TABLE sentence_topics ADD CONSTRAINT sentence_topics_assignment_with_topic
    CHECK ((topic_id IS NULL) = (topic_assignment IS NULL));
