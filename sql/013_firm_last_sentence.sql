-- firmtopics schema, version 13: the last sentence of each firm a run has taken in.
--
-- Sentence ids only grow, so a finished firm's sentences ingested after the run took it
-- are those above this id: the run finds them through the (firm_id, sentence_id) index,
-- reading only them, however large the run ("left" in run and status; firmtopics update).
ALTER TABLE run_firms ADD COLUMN last_sentence_id bigint;
UPDATE run_firms r SET last_sentence_id = (
    SELECT max(st.sentence_id) FROM sentence_topics st WHERE st.run_id = r.run_id AND st.firm_id = r.firm_id);
