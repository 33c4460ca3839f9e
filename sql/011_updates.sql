-- firmtopics schema, version 11: updates. A finished run takes in what was ingested after
-- it (a new quarter's calls, new firms) without refitting what is there
-- (``firmtopics update``, app/update.py). Each update is recorded: when, what it added
-- and how far the new material drifts from the run's themes. Rows an update wrote carry
-- its number, so a resumed update finishes its own rows and touches no older one.
CREATE TABLE run_updates (
    run_id      integer NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    update_no   integer NOT NULL,
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'complete')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    added       jsonb NOT NULL DEFAULT '{}'::jsonb,
    drift       jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (run_id, update_no)
);
-- NULL: written by the run itself; else the update that brought the row in.
ALTER TABLE sentence_topics ADD COLUMN update_no integer;
ALTER TABLE topics ADD COLUMN update_no integer;
CREATE INDEX topics_update ON topics (run_id, update_no) WHERE update_no IS NOT NULL;
CREATE INDEX sentence_topics_update ON sentence_topics (run_id, update_no) WHERE update_no IS NOT NULL;
