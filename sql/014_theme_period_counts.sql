-- firmtopics schema, version 14: each fine theme's firms and sentences per period, counted
-- once when a run's sentences are all in their themes (the theme stage, an update).
--
-- The theme_periods view (trends) aggregated every sentence of the run at each read: 4 s
-- at 1,000,000 sentences, minutes at 30 million. A run's themes change only in its theme
-- stage and its updates, so the counts are kept here, written by app.themes.count_theme_periods,
-- and the view reads them (docs/benchmarks.md, section 10).
CREATE TABLE theme_period_counts (
    run_id      bigint  NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    theme_id    bigint  NOT NULL REFERENCES themes (theme_id) ON DELETE CASCADE,
    period      text    NOT NULL,
    n_firms     integer NOT NULL,
    n_sentences integer NOT NULL,
    PRIMARY KEY (run_id, theme_id, period)
);

-- The runs stored before this version: counted from their sentences, as the view did.
INSERT INTO theme_period_counts (run_id, theme_id, period, n_firms, n_sentences)
SELECT st.run_id, coalesce(t.theme_id, st.theme_id), d.period, count(DISTINCT st.firm_id), count(*)
FROM sentence_topics st
JOIN sentences s   ON s.sentence_id = st.sentence_id
JOIN documents d   ON d.firm_id = s.firm_id AND d.doc_id = s.doc_id
LEFT JOIN topics t ON t.topic_id = st.topic_id
WHERE coalesce(t.theme_id, st.theme_id) IS NOT NULL AND d.period IS NOT NULL
GROUP BY st.run_id, coalesce(t.theme_id, st.theme_id), d.period;
