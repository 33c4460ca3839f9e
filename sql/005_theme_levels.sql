-- firmtopics schema, version 5: themes in levels.
--
-- The fine themes (level 1) group firm topics; each level above groups the themes of the
-- level below into broader ones, until the top level is small enough to read
-- (RunSettings.theme_top_level_size). A theme's parent is its theme one level up (NULL at
-- the top). Topics are linked to level-1 themes. Themes written before this version are
-- level 1 with no parent: a single level.
ALTER TABLE themes ADD COLUMN level integer NOT NULL DEFAULT 1 CHECK (level >= 1);
ALTER TABLE themes ADD COLUMN parent_theme_id bigint REFERENCES themes (theme_id) ON DELETE CASCADE;
-- Theme numbers restart at each level.
ALTER TABLE themes DROP CONSTRAINT themes_run_id_theme_no_key;
ALTER TABLE themes ADD CONSTRAINT themes_run_level_no UNIQUE (run_id, level, theme_no);
CREATE INDEX themes_parent ON themes (parent_theme_id);
