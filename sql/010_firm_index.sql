-- firmtopics schema, version 10: an index behind one firm's sentences of one run.
--
-- `search --level sentence --firm ID` reads sentence_topics by run and firm. Its only
-- index on the run was the primary key (run_id, sentence_id), so the search read every
-- row of the run: at tens of millions of sentences, a scan for a few thousand rows.
-- topics needs no such index: its unique key (run_id, firm_id, topic_no) serves the same
-- filter (search --firm at topic and theme level, show firm).
-- A b-tree, not a vector index: the writer inserts a firm's rows together, all with one
-- key, so they land on the same few pages and loading stays cheap.
CREATE INDEX sentence_topics_run_firm ON sentence_topics (run_id, firm_id);
