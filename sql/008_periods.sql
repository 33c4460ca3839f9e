-- firmtopics schema, version 8: time. A document may carry a period (any text that sorts
-- in time order: '2020Q4', '2021'), given by the corpus's optional `period` column; its
-- sentences inherit it. A corpus without periods has no rows here and works as before.
CREATE TABLE documents (
    firm_id text NOT NULL REFERENCES firms (firm_id),
    doc_id  text NOT NULL,
    period  text NOT NULL,
    PRIMARY KEY (firm_id, doc_id)
);
CREATE INDEX documents_period ON documents (period);

-- Each fine theme's prevalence per period: the firms and sentences of the period in it,
-- and its share of the period's sentences that are in a theme (share_of_period sums to 1
-- over a run's themes in one period). A sentence's theme is sentence_assignments' (its
-- topic's, or the one it was attached to); sentences of documents without a period are
-- left out.
CREATE VIEW theme_periods AS
SELECT sa.run_id,
       sa.run_name,
       sa.theme_id,
       sa.theme_name,
       d.period,
       count(DISTINCT sa.firm_id)::integer AS n_firms,
       count(*)::integer                   AS n_sentences,
       round(count(*)::numeric / sum(count(*)) OVER (PARTITION BY sa.run_id, d.period), 4) AS share_of_period
FROM sentence_assignments sa
JOIN documents d ON d.firm_id = sa.firm_id AND d.doc_id = sa.doc_id
WHERE sa.theme_id IS NOT NULL
GROUP BY sa.run_id, sa.run_name, sa.theme_id, sa.theme_name, d.period;
