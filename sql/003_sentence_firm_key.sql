-- firmtopics schema, version 3: one foreign key from a sentence's result to its sentence
-- and firm, where there were two.
--
-- sentence_topics.sentence_id referenced sentences, and sentence_topics.firm_id
-- referenced firms: two index lookups for every row the writer stores, and still
-- nothing said that the firm was the sentence's own. One composite key to
-- sentences (firm_id, sentence_id) checks both at once: the sentence exists, and it
-- belongs to that firm (whose row sentences.firm_id already references). The writer
-- stores a row with one lookup fewer (see docs/benchmarks.md, section 3).
--
-- The composite key needs a unique index on sentences (firm_id, sentence_id); it takes
-- the place of the plain index on sentences (firm_id), which served loading a firm's
-- sentences and now serves it in sentence order.

ALTER TABLE sentences ADD CONSTRAINT sentences_firm_sentence UNIQUE (firm_id, sentence_id);
DROP INDEX sentences_firm;

ALTER TABLE sentence_topics
    DROP CONSTRAINT sentence_topics_sentence_id_fkey,
    DROP CONSTRAINT sentence_topics_firm_id_fkey,
    ADD CONSTRAINT sentence_topics_sentence_fkey
        FOREIGN KEY (firm_id, sentence_id) REFERENCES sentences (firm_id, sentence_id);
