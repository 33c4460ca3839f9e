"""Settings from the environment, and secrets kept out of text."""

from pathlib import Path

import pytest

from app.settings import RunSettings, Settings, SettingsError, database_password, redact


def test_defaults_with_an_empty_environment():
    s = Settings.from_env({})
    assert s.database_url is None
    assert s.xai_api_key is None
    assert s.xai_base_url == "https://api.x.ai/v1"
    assert s.llm_concurrency == 8
    assert s.run == RunSettings()
    assert s.run.embedding_model == "all-MiniLM-L6-v2"


def test_values_are_read_and_checked():
    s = Settings.from_env({
        "DATABASE_URL": "postgresql://u:pw@h/db", "XAI_API_KEY": "k", "XAI_BASE_URL": "http://127.0.0.1:9/v1/",
        "LLM_CONCURRENCY": "3", "LOG_FORMAT": "json", "FIRMTOPICS_SEED": "7", "FIRMTOPICS_DATA_DIR": "/tmp/x",
        "FIRMTOPICS_MIN_CLUSTER_SIZE": "5", "EMBEDDING_MODEL": "/models/m",
    })
    assert s.xai_base_url == "http://127.0.0.1:9/v1"  # trailing slash dropped
    assert s.llm_concurrency == 3
    assert s.log_format == "json"
    assert s.data_dir == Path("/tmp/x")
    assert s.run.seed == 7 and s.run.hdbscan_min_cluster_size == 5 and s.run.embedding_model == "/models/m"


@pytest.mark.parametrize("env, message", [
    ({"LLM_CONCURRENCY": "many"}, "LLM_CONCURRENCY must be a whole number"),
    ({"LLM_CONCURRENCY": "0"}, "at least 1"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"FIRMTOPICS_UMAP_MIN_DIST": "near"}, "must be a number"),
    ({"FIRMTOPICS_UMAP_N_EPOCHS": "0"}, "FIRMTOPICS_UMAP_N_EPOCHS must be at least 1"),
])
def test_bad_values_are_one_clear_error(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_umap_epochs_are_umaps_choice_unless_set():
    assert Settings.from_env({}).run.umap_n_epochs is None
    assert Settings.from_env({"FIRMTOPICS_UMAP_N_EPOCHS": ""}).run.umap_n_epochs is None
    assert Settings.from_env({"FIRMTOPICS_UMAP_N_EPOCHS": "200"}).run.umap_n_epochs == 200


def test_the_largest_firm_clustered_whole_is_a_recorded_setting():
    assert Settings.from_env({}).run.max_firm_sentences == 200_000
    run = Settings.from_env({"FIRMTOPICS_MAX_FIRM_SENTENCES": "300"}).run
    assert run.max_firm_sentences == 300 and run.as_dict()["max_firm_sentences"] == 300
    assert run.differences(RunSettings().as_dict()) == {"max_firm_sentences": (200_000, 300)}
    with pytest.raises(SettingsError, match="FIRMTOPICS_MAX_FIRM_SENTENCES must be at least 100, got 99"):
        Settings.from_env({"FIRMTOPICS_MAX_FIRM_SENTENCES": "99"})


def test_a_run_recorded_before_a_setting_existed_resumes_with_its_default():
    # Runs recorded before umap_n_epochs existed have no such key: UMAP chose the
    # epochs then, as None does now, so they match.
    recorded = RunSettings().as_dict()
    del recorded["umap_n_epochs"]
    assert RunSettings().differences(recorded) == {}
    assert RunSettings(umap_n_epochs=200).differences(recorded) == {"umap_n_epochs": (None, 200)}
    # Runs recorded before the giant-firm cap: the default cap, at which they resume.
    del recorded["max_firm_sentences"]
    assert RunSettings().differences(recorded) == {}
    assert RunSettings(max_firm_sentences=300).differences(recorded) == {"max_firm_sentences": (200_000, 300)}


def test_the_embedding_precision_is_auto_unless_fp32_is_asked():
    assert Settings.from_env({}).embedding_precision == "auto"
    assert Settings.from_env({"EMBEDDING_PRECISION": "fp32"}).embedding_precision == "fp32"
    with pytest.raises(SettingsError, match="EMBEDDING_PRECISION must be one of auto, fp32, got 'int4'"):
        Settings.from_env({"EMBEDDING_PRECISION": "int4"})


def test_the_embedding_backend_is_a_recorded_setting_auto_unless_set():
    assert Settings.from_env({}).run.embed_backend == "auto"
    run = Settings.from_env({"FIRMTOPICS_EMBED_BACKEND": "onnx-int8"}).run
    assert run.embed_backend == "onnx-int8" and run.as_dict()["embed_backend"] == "onnx-int8"
    with pytest.raises(SettingsError, match="FIRMTOPICS_EMBED_BACKEND must be one of auto, torch, onnx, onnx-int8, "
                                            "openvino, got 'tensorrt'"):
        Settings.from_env({"FIRMTOPICS_EMBED_BACKEND": "tensorrt"})
    # A run records the backend that ran, never auto; one set explicitly stays as it is.
    assert RunSettings().ran_by("openvino").embed_backend == "openvino"
    assert run.ran_by("openvino") is run
    assert run.differences(RunSettings().ran_by("torch").as_dict()) == {"embed_backend": ("torch", "onnx-int8")}
    # A run recorded before the setting existed ran torch, and resumes with it.
    recorded = RunSettings().as_dict()
    del recorded["embed_backend"]
    assert RunSettings().ran_by("torch").differences(recorded) == {}
    assert run.differences(recorded) == {"embed_backend": ("torch", "onnx-int8")}


def test_auto_keeps_a_run_s_backend_else_the_fastest_measured_on_this_kind_of_machine():
    from app.embedding import resolve_backend

    assert resolve_backend("auto", device="cuda", bf16=False) == "torch"  # fp16
    assert resolve_backend("auto", device="cpu", bf16=True) == "torch"  # torch in bfloat16
    assert resolve_backend("auto", device="cpu", bf16=False) == "onnx"  # fp32
    assert resolve_backend("auto", recorded="torch", device="cpu", bf16=False) == "torch"  # a resume goes on as it began
    assert resolve_backend("auto", recorded="openvino", device="cuda") == "openvino"
    assert resolve_backend("onnx-int8", recorded="torch", device="cuda") == "onnx-int8"  # set: as set


def test_a_run_recorded_before_keywords_and_small_firms_changed_is_told_what_differs():
    # Runs recorded before these settings kept firm words in keywords and clustered small
    # firms on the raw embeddings: resuming one with today's defaults would mix two ways.
    recorded = RunSettings().as_dict()
    for name in ("keyword_ngrams", "reduce_frequent_words", "leave_out_firm_words", "small_firm_merge_similarity"):
        del recorded[name]
    assert RunSettings().differences(recorded) == {"keyword_ngrams": (1, 2), "leave_out_firm_words": (False, True),
                                                   "small_firm_merge_similarity": (None, 0.75)}
    earlier = RunSettings(keyword_ngrams=1, leave_out_firm_words=False, small_firm_merge_similarity=None)
    assert earlier.differences(recorded) == {}


def test_run_settings_differences_name_each_change():
    recorded = RunSettings().as_dict()
    changed = RunSettings(seed=1, umap_n_neighbors=30)
    assert changed.differences(recorded) == {"seed": (42, 1), "umap_n_neighbors": (15, 30)}
    assert RunSettings().differences(recorded) == {}


def test_secrets_are_masked_in_repr_and_text():
    s = Settings.from_env({"DATABASE_URL": "postgresql://user:s3cret-pw@db:5432/x", "XAI_API_KEY": "xai-KEY-123"})
    assert database_password(s.database_url) == "s3cret-pw"
    assert set(s.secrets()) == {"xai-KEY-123", "s3cret-pw"}
    assert "s3cret-pw" not in repr(s) and "xai-KEY-123" not in repr(s)
    text = redact("failed: postgresql://user:s3cret-pw@db/x with key xai-KEY-123", s.secrets())
    assert "s3cret-pw" not in text and "xai-KEY-123" not in text
    # A password in any URL is masked even when it is not a known secret.
    assert redact("postgres://a:other@h/db") == "postgres://a:***@h/db"


def test_data_dir_is_never_under_root_home_for_root(monkeypatch):
    import app.settings as settings_module

    monkeypatch.setattr(settings_module.os, "geteuid", lambda: 0)
    assert settings_module.default_data_dir() == Path("/var/lib/firmtopics")


# A password in every form a DATABASE_URL can carry it: raw with an "@" in it (the last
# "@" ends the user info), percent-encoded, and in the query string.
AT_PASSWORD = "p@ss:w0rd-9f3"
PASSWORD_FORMS = {
    "raw with @": f"postgresql://user:{AT_PASSWORD}@db.example:5432/x",
    "percent-encoded": "postgresql://user:p%40ss%3Aw0rd-9f3@db.example:5432/x",
    "in the query": "postgresql://user@db.example:5432/x?sslmode=require&password=p%40ss%3Aw0rd-9f3",
}


@pytest.mark.parametrize("form", PASSWORD_FORMS)
def test_a_password_in_any_form_is_masked(form):
    url = PASSWORD_FORMS[form]
    settings = Settings.from_env({"DATABASE_URL": url})
    shown = [repr(settings), str(settings), redact(f"could not connect to {url}", settings.secrets()),
             redact(f"could not connect to {url}")]  # also without knowing the secret
    for text in shown:
        for piece in (AT_PASSWORD, "p%40ss", "w0rd-9f3", "ss:w0rd"):
            assert piece not in text, (form, text)
    assert AT_PASSWORD in settings.secrets()
    assert url not in repr(settings)  # no URL in a repr at all
    # Only the password is masked: the host and the database stay readable in an error.
    assert "db.example:5432/x" in redact(f"could not connect to {url}")


def test_redaction_masks_nothing_but_the_password():
    assert redact("postgres://a:b@c@h/db and mail@example.com") == "postgres://a:***@h/db and mail@example.com"
    assert redact("postgres://h/db?password=x&sslmode=require") == "postgres://h/db?password=***&sslmode=require"
    assert redact("postgres://a@h/db") == "postgres://a@h/db"


def test_the_password_is_read_decoded_from_either_place():
    assert [database_password(url) for url in PASSWORD_FORMS.values()] == [AT_PASSWORD] * 3
    assert database_password("postgresql://user@h/db") is None and database_password(None) is None
