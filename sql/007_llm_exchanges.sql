-- firmtopics schema, version 7: every exchange with the LLM server, kept; the response
-- cache is read from it.
--
-- One row per HTTP request that got an answer (errors included). request_key is the
-- SHA-256 of what shapes the answer (model, messages, temperature, token limit; not the
-- name the token limit is sent under, nor response_format, which only change how the
-- server is asked): a request whose key has a usable answer (usable: a 2xx whose label
-- was read) is answered from here, with no network call, unless LLM_CACHE=off. Rows
-- outlive their run (run_id is set NULL when it is deleted), so a second run over the
-- same topics does not pay twice. request holds the body sent: never a header, never
-- the key.
CREATE TABLE llm_exchanges (
    exchange_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_key       text NOT NULL,
    run_id            integer REFERENCES runs (run_id) ON DELETE SET NULL,
    subject           text,                 -- e.g. 'topic AAP#3', 'theme 4 (level 1)', 'start-up check'
    model             text NOT NULL,
    request           jsonb NOT NULL,
    status            integer NOT NULL,
    reply             text NOT NULL,        -- the body as received (the label is inside for a 2xx)
    usable            boolean NOT NULL,
    prompt_tokens     integer,
    completion_tokens integer,
    latency_ms        integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_exchanges_usable ON llm_exchanges (request_key, exchange_id) WHERE usable;

-- The request whose answer named a topic or theme (NULL for a keyword name): the key to
-- its exact prompt and reply (firmtopics show topic ID --prompt).
ALTER TABLE topics ADD COLUMN name_request text;
ALTER TABLE themes ADD COLUMN name_request text;
