"""Secrets and SQL: a whole job with a known (fake) API key and database password, then a
search for them everywhere they could leak -- every line the commands wrote, every text
and JSON column of every table, every exported file -- and a static check that SQL in
``app/`` is parameterised."""

from __future__ import annotations

import ast
import re
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pyarrow.parquet as pq
import pytest

from app.cli import COMMANDS
from app.sample import write_sample_corpus
from support import fake_llm_process, fetch, run_in_process

APP = Path(__file__).resolve().parents[1] / "app"

PASSWORD = "pw-" + secrets.token_hex(12)
KEY = "xai-" + secrets.token_hex(16)
WRONG_KEY = "xai-wrong-" + secrets.token_hex(8)


@pytest.fixture
def secret_database(server_url):
    """A database owned by a role with a password; its URL carries the password. (The
    embedded test server trusts local connections, so the password is a fake secret that
    travels everywhere a real one would, without being checked.)"""
    role = "ft_role_" + secrets.token_hex(4)
    name = "ft_secret_" + secrets.token_hex(4)
    # Identifiers and password are generated above: hex only, safe inside the quotes.
    fetch(server_url, f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{PASSWORD}'")
    fetch(server_url, f'CREATE DATABASE "{name}" OWNER "{role}"')
    admin_url = urlunsplit(urlsplit(server_url)._replace(path="/" + name))
    fetch(admin_url, "CREATE EXTENSION vector")  # as on a managed server: the admin installs it
    parts = urlsplit(server_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    yield urlunsplit(parts._replace(netloc=f"{role}:{PASSWORD}@{host}", path="/" + name))
    fetch(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    fetch(server_url, f'DROP ROLE IF EXISTS "{role}"')


def columns_holding(url: str, needle: str) -> list[str]:
    """``table.column`` of every text, JSON or array column of every table that holds ``needle``."""
    columns = fetch(url, """
        SELECT c.table_name, c.column_name FROM information_schema.columns c
        JOIN information_schema.tables t USING (table_schema, table_name)
        WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
          AND c.data_type IN ('text', 'character varying', 'jsonb', 'json', 'ARRAY', 'USER-DEFINED')""")
    assert {"runs", "run_firms", "topics", "themes", "sentences"} <= {c["table_name"] for c in columns}
    found = []
    for c in columns:
        # Quoted identifiers read from the catalog, the needle as a parameter.
        sql = f'SELECT count(*) FROM "{c["table_name"]}" WHERE strpos("{c["column_name"]}"::text, $1) > 0'
        if fetch(url, sql, needle)[0][0]:
            found.append(f"{c['table_name']}.{c['column_name']}")
    return found


@pytest.mark.results
def test_the_key_and_the_password_never_leak(secret_database, monkeypatch, tmp_path, capfd):
    corpus = write_sample_corpus(tmp_path / "corpus.jsonl.gz", firms=3, sentences_per_subject=24)
    base = {"DATABASE_URL": secret_database, "LOG_FORMAT": "json", "FIRMTOPICS_DATA_DIR": str(tmp_path / "d")}
    output = []

    # 20% of requests fail (503), so retries and their error texts are logged too.
    with fake_llm_process("--api-key", KEY, "--error-rate", "0.2", "--seed", "3", latency=0) as llm:
        llm_env = {"XAI_API_KEY": KEY, "XAI_BASE_URL": llm.base_url, "XAI_MODEL": "fake-model"}
        assert run_in_process(monkeypatch, {**base, **llm_env}, "run", "--input", str(corpus)) == 0
        output.append(capfd.readouterr())
        assert llm.stats()["requests"] > 0

        # A wrong key: refused at start, and the server quotes it back in its error body.
        assert run_in_process(monkeypatch, {**base, **llm_env, "XAI_API_KEY": WRONG_KEY}, "run") == 1
        refused = capfd.readouterr()
        output.append(refused)
        assert "rejected the API key" in refused.err

    assert run_in_process(monkeypatch, {**base, **llm_env}, "status") == 0
    output.append(capfd.readouterr())
    text = "".join(o.out + o.err for o in output)
    assert '"event": "llm_retry"' in text  # the error path was exercised
    assert "llm" in fetch(secret_database, "SELECT name_source FROM topics")[0][0]

    assert "runs.llm_usage" in columns_holding(secret_database, "fake-model")  # the search does find things
    for secret in (KEY, PASSWORD, WRONG_KEY):
        assert secret not in text
        assert columns_holding(secret_database, secret) == []


@pytest.mark.results
def test_exports_hold_no_secret(secret_database, monkeypatch, tmp_path, capfd):
    if "export" not in COMMANDS:
        pytest.skip("firmtopics export is not part of this build")
    corpus = write_sample_corpus(tmp_path / "corpus.jsonl.gz", firms=1, sentences_per_subject=24)
    env = {"DATABASE_URL": secret_database, "LOG_FORMAT": "json", "FIRMTOPICS_DATA_DIR": str(tmp_path / "d")}
    with fake_llm_process("--api-key", KEY, latency=0) as llm:
        env.update(XAI_API_KEY=KEY, XAI_BASE_URL=llm.base_url, XAI_MODEL="fake-model")
        assert run_in_process(monkeypatch, env, "run", "--input", str(corpus)) == 0
    out_dir = tmp_path / "export"
    assert run_in_process(monkeypatch, env, "export", "--out", str(out_dir)) == 0
    captured = capfd.readouterr()
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    for path in files:
        raw = path.read_bytes()
        readable = str(pq.read_table(path).to_pylist()) + str(pq.read_metadata(path).metadata) \
            if path.suffix == ".parquet" else raw.decode("utf-8", errors="replace")
        for secret in (KEY, PASSWORD):
            assert secret.encode() not in raw and secret not in readable, path.name
    for secret in (KEY, PASSWORD):
        assert secret not in captured.out + captured.err


# A password with the characters that split a URL wrongly, in each form a URL can carry it.
AT_PASSWORD = "pw@" + secrets.token_hex(6) + ":x"
AT_FORMS = (AT_PASSWORD, quote(AT_PASSWORD, safe=""), AT_PASSWORD.split("@", 1)[1])


def url_forms(url: str) -> dict[str, str]:
    """``url`` with ``AT_PASSWORD`` in its user info (percent-encoded, as a parser needs it)
    or in its query string (after what the query holds) instead of its own password."""
    parts = urlsplit(url)
    user, host = parts.username, parts.netloc.rsplit("@", 1)[-1]
    return {"user info": urlunsplit(parts._replace(netloc=f"{user}:{quote(AT_PASSWORD, safe='')}@{host}")),
            "query": urlunsplit(parts._replace(netloc=f"{user}@{host}",
                                               query="&".join(filter(None, [parts.query, "password="
                                                                            + quote(AT_PASSWORD, safe="")])))),
            }


@pytest.mark.results
def test_no_repr_and_no_json_output_shows_the_password_in_any_form(secret_database, monkeypatch, tmp_path, capfd):
    from app.results import open_run
    from app.settings import Settings

    corpus = write_sample_corpus(tmp_path / "corpus.jsonl.gz", firms=2, sentences_per_subject=24)
    forms = url_forms(secret_database)
    base = {"LOG_FORMAT": "json", "FIRMTOPICS_DATA_DIR": str(tmp_path / "d")}
    assert run_in_process(monkeypatch, {**base, "DATABASE_URL": forms["user info"]}, "run", "--input",
                          str(corpus)) == 0
    theme, topic, firm = fetch(secret_database, "SELECT t.theme_id, t.topic_id, t.firm_id FROM topics t"
                                                " WHERE t.theme_id IS NOT NULL LIMIT 1")[0]
    reads = [["status"], ["runs"], ["search", "revenue growth"], ["search", "costs", "--level", "sentence"],
             ["show", "theme", str(theme)], ["show", "topic", str(topic)], ["show", "firm", firm], ["trends"],
             ["status", "--run", "no-such-run"]]
    shown = []
    for name, url in forms.items():
        for argv in reads:
            code = run_in_process(monkeypatch, {**base, "DATABASE_URL": url}, *argv, "--json")
            assert code == 0 or "no-such-run" in argv, (name, argv)
        run = open_run(database_url=url)
        shown += [repr(run), str(run), repr(Settings.from_env({"DATABASE_URL": url}))]
        assert not run.themes().empty
    # Nothing listens here: the error names the server, not the password.
    closed = urlunsplit(urlsplit(forms["query"])._replace(netloc="127.0.0.1:1"))
    assert run_in_process(monkeypatch, {**base, "DATABASE_URL": closed}, "status", "--json") != 0
    captured = capfd.readouterr()
    text = captured.out + captured.err + "".join(shown)
    assert '"topic_id"' in captured.out and "cannot connect" in captured.err  # the outputs were read
    for secret in AT_FORMS:
        assert secret not in text


# --- SQL is parameterised ----------------------------------------------------------------

SQL_START = re.compile(
    r"^\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|SET|WITH|COPY|TRUNCATE|LOCK|GRANT|REVOKE|"
    r"VACUUM|ANALYZE|REINDEX|COMMENT)\b")
EXECUTORS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor", "copy_from_query"}


def _constants(tree: ast.Module) -> dict[str, ast.AST]:
    """Module-level ``NAME = <constant or f-string>`` assignments with an upper-case name."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.lstrip("_").isupper() and isinstance(node.value, (ast.Constant, ast.JoinedStr)):
                found[name] = node.value
    return found


def _is_int(node: ast.AST, constants: dict) -> bool:
    """An expression that is an int (or raises): a literal, ``int(...)``, ``len(...)``, an
    int constant, or ``min``/``max`` with an int among its arguments."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int) and not isinstance(node.value, bool)
    if isinstance(node, ast.Name) and node.id in constants:
        return _is_int(constants[node.id], constants)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id in ("int", "len"):
            return True
        if node.func.id in ("min", "max"):
            return any(_is_int(arg, constants) for arg in node.args)
    return False


def _validated_by_fullmatch(function: ast.AST | None, name: str) -> bool:
    """Whether ``function`` checks ``name`` with ``re.fullmatch`` (a quoted literal then
    cannot hold a quote)."""
    if function is None:
        return False
    for node in ast.walk(function):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "fullmatch"
                and any(isinstance(a, ast.Name) and a.id == name for a in node.args)):
            return True
    return False


def sql_interpolation_problems(source: str, filename: str) -> list[str]:
    """Values interpolated into SQL text other than quoted identifiers, ints, constant SQL
    fragments, or quoted literals validated by ``re.fullmatch``; and SQL built with ``%``
    or ``.format`` on a literal."""
    tree = ast.parse(source)
    constants = _constants(tree)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def enclosing_function(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
        return None

    executed = {id(call.args[0]) for call in ast.walk(tree)
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr in EXECUTORS and call.args}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant) \
                and isinstance(node.left.value, str) and SQL_START.match(node.left.value):
            problems.append(f"{filename}:{node.lineno}: SQL formatted with %")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format" \
                and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str) \
                and SQL_START.match(node.func.value.value):
            problems.append(f"{filename}:{node.lineno}: SQL formatted with .format()")
        if not isinstance(node, ast.JoinedStr):
            continue
        parts = node.values
        literal = "".join(p.value for p in parts if isinstance(p, ast.Constant))
        leading = parts[0].value if parts and isinstance(parts[0], ast.Constant) else ""
        if not (SQL_START.match(leading) or id(node) in executed):
            continue
        for i, part in enumerate(parts):
            if not isinstance(part, ast.FormattedValue):
                continue
            before = parts[i - 1].value if i and isinstance(parts[i - 1], ast.Constant) else ""
            after = parts[i + 1].value if i + 1 < len(parts) and isinstance(parts[i + 1], ast.Constant) else ""
            expression = part.value
            if before.endswith('"') and after.startswith('"'):
                continue  # a quoted identifier
            if _is_int(expression, constants):
                continue
            if isinstance(expression, ast.Name) and expression.id in constants:
                continue  # a constant SQL fragment of the module
            if (before.endswith("'") and after.startswith("'") and isinstance(expression, ast.Name)
                    and _validated_by_fullmatch(enclosing_function(node), expression.id)):
                continue
            problems.append(f"{filename}:{node.lineno}: {ast.unparse(expression)!r} interpolated into "
                            f"{literal.strip()[:60]!r}")
    return problems


def test_sql_in_app_is_parameterised():
    problems = []
    for path in sorted(APP.glob("*.py")):
        problems += sql_interpolation_problems(path.read_text(encoding="utf-8"), path.name)
    assert problems == [], "values must be passed as $n parameters:\n" + "\n".join(problems)


def test_the_sql_check_catches_interpolated_values():
    bad = '''
async def f(conn, firm_id, limit, table):
    await conn.fetch(f"SELECT * FROM sentences WHERE firm_id = '{firm_id}'")
    await conn.execute(f"DELETE FROM runs WHERE name = {limit}")
    sql = "SELECT * FROM firms WHERE firm_id = '%s'" % firm_id
    await conn.execute("UPDATE runs SET name = '{}'".format(table))
'''
    good = '''
KEY = 7
FRAGMENT = "SELECT 1"
QUERY = f"""{FRAGMENT} UNION ALL {FRAGMENT}"""
async def f(conn, table, dim, size, setting):
    if not re.fullmatch(r"\\d+MB", setting):
        raise ValueError(setting)
    await conn.execute(f'ALTER TABLE "{table}" ALTER COLUMN e TYPE vector({int(dim)})')
    await conn.execute(f"SET LOCAL hnsw.ef_search = {min(KEY, max(40, size * 4))}")
    await conn.execute(f"SET maintenance_work_mem = '{setting}'")
    await conn.fetch("SELECT * FROM firms WHERE firm_id = $1", table)
'''
    assert len(sql_interpolation_problems(bad, "bad.py")) == 4
    assert sql_interpolation_problems(good, "good.py") == []
