"""The container files: compose.yaml, the Dockerfile, .dockerignore, the stop script.

These tests read the files; they do not need Docker. They check the structure that the
deployment relies on (docs/deploy.md): the database with pgvector and enough shared
memory for the HNSW build, the app waiting for a healthy database, the GPU reservation,
secrets only ever taken from the environment, every setting passed to the container, a
pinned RAPIDS base, the constraints that keep RAPIDS' own builds, a non-root user.
Building and running the images needs Docker and a GPU; docs/deploy.md lists one command
for each such check.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SECRET_NAME = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}")


# --- compose.yaml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def environment(service: dict) -> dict:
    """A service's environment as a dict, whichever of compose's two forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def volume_mounts(service: dict) -> list[dict]:
    """A service's volumes as {source, target, read_only}, from short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append({"source": volume.get("source"), "target": volume["target"],
                           "read_only": bool(volume.get("read_only"))})
            continue
        # "source:target[:mode]"; the source may itself be "${VAR:-default}".
        match = re.fullmatch(r"(?P<source>\$\{[^}]*\}|[^:]+):(?P<target>[^:]+)(?::(?P<mode>[a-z,]+))?", volume)
        assert match, f"cannot read volume {volume!r}"
        mounts.append({"source": match["source"], "target": match["target"],
                       "read_only": "ro" in (match["mode"] or "").split(",")})
    return mounts


def size_in_bytes(value) -> int:
    """Compose's byte values: a plain number, or a number with b, k, m, g (and kb, mb, gb)."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(\d+)\s*([bkmg]?)b?", str(value).strip().lower())
    assert match, f"cannot read size {value!r}"
    return int(match[1]) * 1024 ** "bkmg".index(match[2] or "b")


def duration_in_seconds(value) -> float:
    """Compose's durations, such as 90s, 1m30s, 2m."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms|us)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), f"cannot read duration {value!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def test_db_is_pgvector_on_a_pinned_supported_postgres_with_a_named_volume(compose):
    db = compose["services"]["db"]
    image, _, tag = db["image"].partition(":")
    assert image == "pgvector/pgvector", "PostgreSQL with the vector extension"
    # A fixed PostgreSQL major release the program supports (15 and up), never "latest".
    major = re.fullmatch(r"pg(\d+)(?:\.\d+)?(?:-\w+)?", tag)
    assert major and int(major[1]) >= 15, tag
    data = [m for m in volume_mounts(db) if m["target"] == "/var/lib/postgresql/data"]
    assert data, "the database files must live on a volume"
    assert data[0]["source"] in compose["volumes"], "a named volume, declared at the top level"


def test_db_has_a_pg_isready_healthcheck(compose):
    test = compose["services"]["db"]["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    assert "pg_isready" in command


def test_db_shared_memory_fits_the_hnsw_build(compose):
    # The program builds HNSW indexes with maintenance_work_mem = 1GB (app/schema.py);
    # parallel builds share it through /dev/shm.
    assert size_in_bytes(compose["services"]["db"]["shm_size"]) >= 1024 ** 3


def test_db_password_comes_from_the_environment(compose):
    password = environment(compose["services"]["db"])["POSTGRES_PASSWORD"]
    assert INTERPOLATION.fullmatch(password), password


def test_app_waits_for_a_healthy_database(compose):
    for name in ("app", "app-cpu"):
        assert compose["services"][name]["depends_on"]["db"]["condition"] == "service_healthy"


def test_app_database_url_points_at_db_without_a_literal_password(compose):
    for name in ("app", "app-cpu"):
        url = environment(compose["services"][name])["DATABASE_URL"]
        match = re.fullmatch(r"postgresql://firmtopics:(?P<password>.+)@db:5432/firmtopics", url)
        assert match, url
        assert INTERPOLATION.fullmatch(match["password"]), "the password must be ${POSTGRES_PASSWORD}"
        assert "POSTGRES_PASSWORD" in match["password"]


def test_no_secret_is_written_in_compose(compose):
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                # Either passed through from the shell (no value) or interpolated.
                assert value is None or INTERPOLATION.fullmatch(str(value)), f"{name}: {key} has a literal value"
    assert "XAI_API_KEY" in environment(compose["services"]["app"])


def settings_variables() -> set[str]:
    """Every environment variable ``Settings.from_env`` reads.

    Two ways, joined: the names it asks an empty environment for (it asks for every
    setting to find the defaults), and every quoted NAME in its source (a variable read
    only when another is set would escape the first).
    """

    class Recording(dict):
        def __init__(self):
            super().__init__()
            self.asked: set[str] = set()

        def get(self, key, default=None):
            self.asked.add(key)
            return super().get(key, default)

        def __getitem__(self, key):
            self.asked.add(key)
            return super().__getitem__(key)

    env = Recording()
    Settings.from_env(env)
    quoted = set(re.findall(r"""["']([A-Z][A-Z0-9_]*)["']""", inspect.getsource(Settings.from_env)))
    return env.asked | quoted


def readme_settings() -> set[str]:
    """The variables in README.md's settings table (its "Configuration" section)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split(" | ")[0])}


def test_the_settings_are_found():
    found = settings_variables()
    assert {"DATABASE_URL", "XAI_API_KEY", "LLM_TIMEOUT_S", "FIRMTOPICS_MIN_CLUSTER_SIZE",
            "FIRMTOPICS_UMAP_N_EPOCHS", "FIRMTOPICS_THEME_TOP_LEVEL_SIZE"} <= found
    assert len(found) >= 20, sorted(found)


def test_readme_documents_every_setting_the_program_reads():
    assert readme_settings() == settings_variables()


@pytest.mark.parametrize("name", ["app", "app-cpu"])
def test_every_setting_reaches_the_container(compose, name):
    env = environment(compose["services"][name])
    missing = sorted(settings_variables() - set(env))
    assert not missing, f"{name}: compose.yaml drops {missing}; list each with no value to pass it from the shell"


@pytest.mark.parametrize("name", ["app", "app-cpu"])
def test_settings_come_from_the_shell_except_the_ones_compose_sets(compose, name):
    """What docs/deploy.md says: every setting is passed from the shell, except those that
    the page names as set by the file, and those are exactly the ones with a value."""
    env = environment(compose["services"][name])
    set_by_compose = {key for key in settings_variables() if env.get(key) is not None}
    text = (ROOT / "docs" / "deploy.md").read_text()
    paragraph = next(p for p in text.split("\n\n") if "read from your shell" in p)
    claims = " ".join(paragraph.split())
    assert "every setting" in claims.lower()
    exceptions = next(s for s in claims.split(". ") if "set by the file" in s)
    assert set(re.findall(r"`([A-Z][A-Z0-9_]*)`", exceptions)) == set_by_compose == {"DATABASE_URL", "LOG_FORMAT"}
    assert env["LOG_FORMAT"] == "json"


def test_passed_through_settings_left_empty_mean_the_defaults(compose):
    """A variable passed through may arrive empty (set to "" in the shell or an .env
    file): the program then takes its default, as if it were unset."""
    env = environment(compose["services"]["app"])
    passed = {key: "" for key in settings_variables() if key in env and env[key] is None}
    assert Settings.from_env({**passed, "LOG_FORMAT": "json"}) == Settings.from_env({"LOG_FORMAT": "json"})


def test_app_reserves_one_nvidia_gpu(compose):
    devices = compose["services"]["app"]["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in [
        {k: d.get(k) for k in ("driver", "count", "capabilities")} for d in devices
    ]


def test_app_builds_the_gpu_image_and_app_cpu_the_cpu_image(compose):
    services = compose["services"]
    assert services["app"]["build"]["target"] == "gpu"
    assert services["app-cpu"]["build"]["target"] == "cpu"
    assert services["app-cpu"]["profiles"] == ["cpu"]
    assert "deploy" not in services["app-cpu"], "the CPU service must not ask for a GPU"
    assert "profiles" not in services["app"], "the GPU service is the default"


def test_corpus_is_mounted_read_only(compose):
    for name in ("app", "app-cpu"):
        corpus = [m for m in volume_mounts(compose["services"][name]) if m["target"] == "/corpus"]
        assert corpus and corpus[0]["read_only"], f"{name}: the corpus must be mounted read-only"


def test_model_cache_is_a_named_volume_at_hf_home(compose, dockerfile):
    hf_home = {env["HF_HOME"] for env in dockerfile.env_by_stage().values()}
    assert len(hf_home) == 1, "both images keep models in the same place"
    (hf_home,) = hf_home
    for name in ("app", "app-cpu"):
        cache = [m for m in volume_mounts(compose["services"][name]) if m["target"] == hf_home]
        assert cache and cache[0]["source"] in compose["volumes"], name


def test_app_has_time_to_drain_on_sigterm(compose):
    for name in ("app", "app-cpu"):
        service = compose["services"][name]
        grace = duration_in_seconds(service["stop_grace_period"])
        assert 60 <= grace < 120, "long enough to drain, and inside a spot instance's 2-minute notice"
        assert service.get("init") is True, "an init process forwards SIGTERM to the program"


def test_the_job_services_can_be_scaled_to_several_workers(compose):
    # `docker compose up --scale app=3` starts three workers on one run (docs/deploy.md):
    # a fixed container name or a published host port would stop the second replica, and
    # the command the replicas run is the image's CMD, `run`, the same for each.
    for name in ("app", "app-cpu"):
        service = compose["services"][name]
        assert "container_name" not in service, f"{name}: a fixed name allows one container only"
        assert "ports" not in service, f"{name}: a published port would collide between replicas"
        assert "command" not in service, f"{name}: every replica runs the image's CMD"


# --- Dockerfile ------------------------------------------------------------------------


class Dockerfile:
    """The Dockerfile read as a list of (stage, INSTRUCTION, arguments)."""

    def __init__(self, text: str):
        lines, current = [], ""
        for raw in text.splitlines():
            stripped = raw.strip()
            if stripped.startswith("#") and not current:
                continue
            if stripped.startswith("#"):  # a comment inside a continued instruction
                continue
            if stripped.endswith("\\"):
                current += stripped[:-1] + " "
                continue
            current += stripped
            if current.strip():
                lines.append(current.strip())
            current = ""
        self.global_args: dict[str, str] = {}
        self.instructions: list[tuple[str | None, str, str]] = []
        self.stages: dict[str, str] = {}  # stage name -> base image, ARGs resolved
        stage = None
        for line in lines:
            instruction, _, arguments = line.partition(" ")
            instruction = instruction.upper()
            if instruction == "ARG" and stage is None:
                name, _, default = arguments.partition("=")
                self.global_args[name.strip()] = default.strip().strip('"')
            if instruction == "FROM":
                match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", arguments, re.IGNORECASE)
                assert match, line
                stage = match[2] or f"stage{len(self.stages)}"
                self.stages[stage] = self.resolve(match[1])
            self.instructions.append((stage, instruction, arguments))

    def resolve(self, text: str) -> str:
        """``text`` with ${NAME} and $NAME replaced by the global ARG defaults."""
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.global_args[m[1] or m[2]], text)

    def of(self, instruction: str, stage: str | None = None) -> list[str]:
        return [a for s, i, a in self.instructions if i == instruction and (stage is None or s == stage)]

    def env_by_stage(self) -> dict[str, dict[str, str]]:
        """ENV settings of each stage (``ENV A=1 B=2`` form)."""
        envs: dict[str, dict[str, str]] = {name: {} for name in self.stages}
        for stage, instruction, arguments in self.instructions:
            if instruction == "ENV":
                envs[stage].update(dict(re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", arguments)))
        return envs


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile((ROOT / "Dockerfile").read_text())


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}")


def without_digest(image: str) -> str:
    """``NAME:TAG@sha256:...`` as ``NAME:TAG`` (Docker pulls by the digest and ignores the tag)."""
    return DIGEST.sub("", image)


def test_gpu_image_is_a_pinned_rapids_base(dockerfile):
    base = without_digest(dockerfile.stages["gpu"])
    image, _, tag = base.partition(":")
    assert image == "rapidsai/base"
    # <release>-cuda<major>-py3.<minor>: a fixed RAPIDS release, never "latest", on a
    # Python the project supports (3.11 and up).
    release = re.fullmatch(r"\d{2}\.\d{2}-cuda\d+(?:\.\d+)?-py3\.(\d+)", tag)
    assert release and int(release[1]) >= 11, tag


def test_gpu_is_the_default_target(dockerfile):
    assert list(dockerfile.stages)[-1] == "gpu", "a plain `docker build .` builds the last stage"


def test_cpu_image_is_a_pinned_slim_python(dockerfile):
    # A slim image of a fixed Python minor release the project supports (3.11 and up).
    base = re.fullmatch(r"python:3\.(\d+)(?:\.\d+)?-slim(-\w+)?", without_digest(dockerfile.stages["cpu"]))
    assert base and int(base[1]) >= 11, dockerfile.stages["cpu"]


def test_gpu_install_is_constrained_to_the_images_own_versions(dockerfile):
    runs = dockerfile.of("RUN", "gpu")
    written = [re.search(r"pip list --format=freeze > (\S+)", run) for run in runs]
    constraints = {m[1] for m in written if m}
    assert constraints, "the image's installed versions are written to a constraints file"
    (constraints,) = constraints
    first_write = next(i for i, m in enumerate(written) if m)
    installs = [run for run in runs[first_write + 1:] if re.search(r"pip install\b", run)]
    dependency_installs = [run for run in installs if "--no-deps" not in run]
    assert dependency_installs, "the project's dependencies are installed after the constraints are written"
    for run in dependency_installs:
        assert re.search(rf"(-c|--constraint)[ =]{re.escape(constraints)}", run), run


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_base_image_can_be_pinned_by_digest(dockerfile, stage):
    """Each FROM ends in a digest ARG: empty (the tag alone) or ``@sha256:`` and 64 hex
    digits, and the file says how to learn the digest, so a pin is one line to set."""
    from_line = next(a for s, i, a in dockerfile.instructions if i == "FROM" and s == stage)
    match = re.search(r"\$\{(\w+_DIGEST)\}(?:\s|$)", from_line)
    assert match, f"FROM {from_line}: the image reference must end in a ${{..._DIGEST}} ARG"
    digest = dockerfile.global_args[match[1]]
    assert digest == "" or DIGEST.fullmatch(digest), f"{match[1]}={digest!r} is not @sha256:<64 hex digits>"
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"#.*{match[1]}", text) and "imagetools inspect" in text, "how to pin is documented"


def constraint_pins() -> dict[str, str]:
    """constraints.txt as {normalised package name: version}."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_image_installs_the_tested_versions(dockerfile, stage):
    """The repository's constraints.txt reaches the build and every dependency install
    is held to it (through the image's constraints file, which takes it in)."""
    assert "constraints.txt" in copied_sources(dockerfile)
    runs = dockerfile.of("RUN", stage)
    takes_in = [i for i, run in enumerate(runs) if "tested-constraints.txt" in run and "/opt/firmtopics/constraints.txt" in run]
    assert takes_in, "the tested pins are added to the constraints file the installs use"
    installs = [i for i, run in enumerate(runs) if re.search(r"pip install\b", run) and " -r " in run]
    assert installs and min(installs) > min(takes_in)
    for i in installs:
        assert "-c /opt/firmtopics/constraints.txt" in runs[i], runs[i]


def test_cpu_torch_is_the_tested_release(dockerfile):
    assert dockerfile.global_args["TORCH_VERSION"] == constraint_pins()["torch"]


def test_tested_pins_go_in_without_overriding_the_gpu_images_own(tmp_path):
    """The GPU image's step: a package the image has keeps the image's version; the
    others get the tested one. Run here on a made-up pair of files."""
    runs = Dockerfile((ROOT / "Dockerfile").read_text()).of("RUN", "gpu")
    step = next(run for run in runs if "tested-constraints.txt" in run)
    command = re.search(r"(python -c \"[^\"]+\")", step)[1]
    (tmp_path / "constraints.txt").write_text("numba==0.64.0\nTorch==2.9.1\n")
    (tmp_path / "tested-constraints.txt").write_text("# a comment\ntorch==2.13.0\nnumba==0.65.1\nhdbscan==0.8.40\n")
    command = command.replace("/opt/firmtopics/", f"{tmp_path}/")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["hdbscan==0.8.40"]


def test_cpu_image_installs_cpu_torch_before_the_project(dockerfile):
    runs = dockerfile.of("RUN", "cpu")
    torch_run = next(i for i, run in enumerate(runs) if "download.pytorch.org/whl/cpu" in run)
    assert "torch==" in runs[torch_run]
    project_runs = [i for i, run in enumerate(runs) if re.search(r"pip install (-c \S+ )?-r|pip install .*\s\.(\s|$)", run)]
    assert project_runs and min(project_runs) > torch_run


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_image_runs_firmtopics_as_a_non_root_user(dockerfile, stage):
    users = dockerfile.of("USER", stage)
    assert users and users[-1] not in ("root", "0", "0:0"), "the last USER must not be root"
    assert json.loads(dockerfile.of("ENTRYPOINT", stage)[-1]) == ["firmtopics"]
    assert json.loads(dockerfile.of("CMD", stage)[-1]) == ["run"]


def test_cpu_image_keeps_umaps_kernels_compiled_as_its_user(dockerfile):
    # Compiled after the last USER, so the user who runs the job owns (and may add to)
    # the kept kernels, into the NUMBA_CACHE_DIR the containers read.
    steps = [(i, a) for s, i, a in dockerfile.instructions if s == "cpu"]
    compiled = [n for n, (i, a) in enumerate(steps) if i == "RUN" and a == "python -m app.compiled"]
    last_user = max(n for n, (i, _) in enumerate(steps) if i == "USER")
    assert compiled and compiled[0] > last_user
    assert dockerfile.env_by_stage()["cpu"]["NUMBA_CACHE_DIR"]
    assert "python -m app.compiled" not in dockerfile.of("RUN", "gpu")  # cuML clusters there


@pytest.mark.parametrize("stage", ["gpu", "cpu"])
def test_image_keeps_models_on_a_volume_and_stays_offline(dockerfile, stage):
    env = dockerfile.env_by_stage()[stage]
    assert env["HF_HUB_OFFLINE"] == "1"
    volumes = [v for arguments in dockerfile.of("VOLUME", stage) for v in json.loads(arguments)]
    assert env["HF_HOME"] in volumes


def test_no_secret_in_the_image(dockerfile):
    for stage, values in dockerfile.env_by_stage().items():
        for name in values:
            assert not SECRET_NAME.search(name), f"{stage}: ENV {name} would bake a secret into the image"
    for arguments in dockerfile.of("ARG"):
        assert not SECRET_NAME.search(arguments.split("=")[0]), f"ARG {arguments} ends up in the image history"
    text = (ROOT / "Dockerfile").read_text()
    assert "xai-" not in text.lower() and "postgresql://" not in text


def copied_sources(dockerfile: Dockerfile) -> list[str]:
    sources = []
    for arguments in dockerfile.of("COPY"):
        words = arguments.split()
        if any(w.startswith("--from") for w in words):
            continue  # from another stage or image, not from the repository
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])  # the last word is the destination
    return sources


def test_every_copied_file_exists(dockerfile):
    sources = copied_sources(dockerfile)
    assert {"pyproject.toml", "app", "sql"} <= set(sources)
    missing = sorted({s for s in sources if not (ROOT / s).exists()})
    assert not missing, f"the Dockerfile copies files the repository does not have: {missing}"


def test_dockerignore_lets_the_copied_files_through(dockerfile):
    """.dockerignore is an allow-list; what the Dockerfile copies must be on it."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def sent(path: str) -> bool:
        included = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                included = negated
        return included

    assert patterns[0] == "*", "everything is excluded first"
    for source in copied_sources(dockerfile):
        assert sent(source), f".dockerignore keeps {source} out of the build"
    for secret in (".env", "corpus/x.jsonl.gz", ".git/config", "firmtopics-data/pgdata"):
        assert not sent(secret), f"{secret} must not be sent to the build"


# --- scripts/stop_database.sh ----------------------------------------------------------


def test_stop_database_script_is_valid_bash():
    script = ROOT / "scripts" / "stop_database.sh"
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert 'aws rds stop-db-instance --db-instance-identifier "$DB_INSTANCE_ID"' in text
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stop_database_script_refuses_to_run_without_an_instance(tmp_path):
    """Without DB_INSTANCE_ID it stops with a usage error before calling AWS at all."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    result = subprocess.run([bash, str(ROOT / "scripts" / "stop_database.sh")], capture_output=True,
                            text=True, env={"PATH": str(tmp_path)})  # no aws on this PATH
    assert result.returncode == 2
    assert "DB_INSTANCE_ID" in result.stderr
