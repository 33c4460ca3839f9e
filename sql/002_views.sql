-- firmtopics schema, version 2: the views for analysts, which are defined in views.sql
-- and created after the migrations (app/schema.py). This version is kept so that the
-- numbering of the later versions stays what databases have recorded.
SELECT 1;
