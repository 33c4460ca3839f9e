-- firmtopics schema, version 8: time. A document may carry a period (any text that sorts
-- in time order: '2020Q4', '2021'), given by the corpus's optional `period` column; its
-- sentences inherit it. A corpus without periods has no rows here; nothing else
-- depends on it.
CREATE TABLE documents (
    firm_id text NOT NULL REFERENCES firms (firm_id),
    doc_id  text NOT NULL,
    period  text NOT NULL,
    PRIMARY KEY (firm_id, doc_id)
);
CREATE INDEX documents_period ON documents (period);
