-- firmtopics schema, version 15: the setup of the workers of a run.
--
-- What changes results beside the run's settings, and comes from the worker rather than
-- the run: how topics are named (the LLM model, or keywords without one), the clustering
-- backend (cuML or the CPU packages) and the embedding precision (fp16 on a GPU). The
-- first worker records it; a worker whose setup differs is refused, so one run never
-- mixes results of two setups. NULL for a run recorded before: its next worker's
-- setup is recorded then.
ALTER TABLE runs ADD COLUMN setup jsonb;
