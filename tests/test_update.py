"""``firmtopics update``: a new quarter brought into a finished run without refitting it,
and the sentences a finished run would otherwise leave out without a word.

One generated study, made once for the module: a run of three sample firms (and the
sample's small firm) over 2024Q1-Q2; then a 2024Q3 arrives, in which Northwind speaks of
its old subjects and of one it never spoke of (cybersecurity), and a new firm appears.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import random

import pytest

from app.sample import FIRMS, sample_rows, sentence_about
from tests.support import LIVE_THEME_PERIODS, Job, check_whole, fetch, fresh_database, job_env, run_in_process, value

pytestmark = pytest.mark.results

CYBER = {
    "subjects": ["ransomware attacks", "our security operations center", "phishing attempts on employees",
                 "the zero trust program", "endpoint protection software", "cyber insurance premiums",
                 "our incident response team", "multi factor authentication"],
    "predicates": ["blocked intrusions on the corporate network", "detected malware before it spread",
                   "hardened our firewalls and passwords", "required new encryption of customer data",
                   "passed the external penetration test", "patched vulnerabilities within hours"],
    "details": ["after the breach at a peer", "with a new chief information security officer",
                "across every laptop and server", "as hackers targeted our email accounts"],
}
CYBER_WORDS = {"ransomware", "security", "phishing", "zero", "trust", "endpoint", "cyber", "incident",
               "authentication", "malware", "intrusions", "firewalls", "encryption", "penetration",
               "vulnerabilities", "breach", "hackers", "passwords", "protection", "network"}


def cyber_sentence(rng: random.Random) -> str:
    return (f"{rng.choice(CYBER['subjects'])} {rng.choice(CYBER['predicates'])} {rng.choice(CYBER['details'])}."
            .capitalize())


def new_quarter_rows() -> list[dict]:
    """2024Q3: Northwind on two old subjects (20 sentences) and on cybersecurity (40); a
    new firm on three subjects (90)."""
    rng, rows, seen = random.Random(11), [], set()

    def add(firm_id, firm_name, text):
        if text not in seen:
            seen.add(text)
            rows.append({"firm_id": firm_id, "firm_name": firm_name, "doc_id": f"{firm_id}_call_3",
                         "period": "2024Q3", "sentence": text})

    while len(rows) < 20:
        add("NWL", "Northwind Logistics Inc.", sentence_about(rng, rng.choice(["supply chain", "pricing"]),
                                                              "Northwind Logistics Inc."))
    while sum(r["firm_id"] == "NWL" for r in rows) < 60:
        add("NWL", "Northwind Logistics Inc.", cyber_sentence(rng))
    while sum(r["firm_id"] == "ZEN" for r in rows) < 90:
        add("ZEN", "Zenith Airlines", sentence_about(rng, rng.choice(["emissions", "labour", "pricing"]),
                                                     "Zenith Airlines"))
    return rows


def write_rows(path, rows) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return str(path)


def old_results(url: str) -> dict:
    """What the run made before the update, by id: topics, themes, and each sentence's result."""
    return {
        "topics": {r["topic_id"]: tuple(r) for r in fetch(
            url, "SELECT topic_id, name, theme_id FROM topics WHERE update_no IS NULL")},
        "themes": {r["theme_id"]: tuple(r) for r in fetch(url, "SELECT theme_id, name, level, parent_theme_id FROM themes")},
        "sentences": {r["sentence_id"]: tuple(r) for r in fetch(
            url, "SELECT sentence_id, topic_id, theme_id, topic_assignment FROM sentence_topics WHERE update_no IS NULL")},
    }


@pytest.fixture(scope="module")
def study(server_url, tmp_path_factory):
    """The run, the new quarter ingested, ``run`` and ``status`` then, the update, and a
    second update; what each printed and what the database held."""
    folder = tmp_path_factory.mktemp("update")
    base = write_rows(folder / "base.jsonl.gz", sample_rows(firms=3))
    quarter = new_quarter_rows()
    known = write_rows(folder / "q3_known.jsonl.gz", [r for r in quarter if r["firm_id"] == "NWL"])
    new = write_rows(folder / "q3.jsonl.gz", quarter)
    seen = {}
    with fresh_database(server_url) as url, pytest.MonkeyPatch.context() as mp:
        env = {"DATABASE_URL": url, "FIRMTOPICS_DATA_DIR": str(folder / "data"), "LOG_FORMAT": "json"}

        def cli(*argv):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                code = run_in_process(mp, env, *argv)
            return code, buffer.getvalue()

        assert cli("run", "--input", base)[0] == 0
        seen["before"] = old_results(url)
        assert cli("ingest", known)[0] == 0
        seen["run_then"] = cli("run")
        seen["status_then"] = json.loads(cli("status", "--json")[1])
        seen["update"] = cli("update", "--input", new)  # the new firm comes with it
        seen["after"] = old_results(url)
        seen["status_after"] = json.loads(cli("status", "--json")[1])
        seen["rows_after"] = value(url, "SELECT count(*) FROM sentence_topics")
        seen["update_again"] = cli("update", "--input", new)
        seen["rows_again"] = value(url, "SELECT count(*) FROM sentence_topics")
        seen["updates"] = [{**dict(r), "added": json.loads(r["added"]), "drift": json.loads(r["drift"])}
                           for r in fetch(url, "SELECT update_no, status, added, drift FROM run_updates")]
        seen["new_topics"] = fetch(url, "SELECT topic_id, firm_id, keywords, theme_id, theme_assignment FROM topics"
                                        " WHERE update_no IS NOT NULL")
        seen["q3"] = fetch(url, """
            SELECT st.firm_id, s.text, st.topic_id, t.update_no AS topic_update, st.topic_assignment
            FROM sentence_topics st JOIN sentences s USING (sentence_id)
            JOIN documents d ON d.firm_id = s.firm_id AND d.doc_id = s.doc_id
            LEFT JOIN topics t ON t.topic_id = st.topic_id WHERE d.period = '2024Q3'""")
        seen["periods"] = [r["period"] for r in fetch(url, "SELECT DISTINCT period FROM theme_periods ORDER BY 1")]
        seen["stored"] = value(url, "SELECT count(*) FROM sentences")
        counted = "SELECT run_id, theme_id, period, n_firms, n_sentences FROM theme_periods"
        seen["periods_off"] = value(url, f"""
            WITH live AS ({LIVE_THEME_PERIODS}), kept AS ({counted})
            SELECT (SELECT count(*) FROM (TABLE live EXCEPT TABLE kept) a)
                 + (SELECT count(*) FROM (TABLE kept EXCEPT TABLE live) b)""")
        seen["theme_counts"] = value(url, """
            SELECT count(*) FROM themes th WHERE th.level = 1 AND th.n_topics <>
              (SELECT count(*) FROM topics t WHERE t.theme_id = th.theme_id)""")
        yield seen


def test_a_finished_run_says_which_stored_sentences_it_leaves_out(study):
    code, printed = study["run_then"]
    assert code == 0 and "nothing to do" in printed
    assert "60 stored sentences of 1 finished firms (NWL, periods 2024Q3)" in printed
    assert "firmtopics update" in printed
    counts = study["status_then"]["firms"]
    assert counts["sentences_left"] == 60 and counts["left"] == 0
    assert study["status_then"]["left_sentences"] == [{"firm_id": "NWL", "period": "2024Q3", "n": 60}]


def test_update_brings_every_stored_sentence_in(study):
    code, printed = study["update"]
    assert code == 0 and "updated (update 1): 150 sentences of 2 firms added" in printed
    assert study["rows_after"] == study["stored"]
    assert study["status_after"]["firms"]["sentences_left"] == 0
    assert study["status_after"]["firms"]["left"] == 0
    assert "2024Q3" in study["periods"]
    assert study["periods_off"] == 0  # trends' counts are the update's sentences, counted again


def test_old_topics_themes_and_sentences_keep_their_ids_names_and_places(study):
    before, after = study["before"], study["after"]
    assert after["topics"] == before["topics"]
    assert after["themes"] == before["themes"]
    assert after["sentences"] == before["sentences"]
    assert study["theme_counts"] == 0  # each fine theme counts the topics that joined it


def test_the_new_subject_becomes_new_topics_and_shows_in_the_drift(study):
    cyber = [r for r in study["q3"] if r["firm_id"] == "NWL" and any(w in r["text"].lower() for w in CYBER_WORDS)
             and not any(w in r["text"].lower() for w in ("freight", "supplier", "price", "pricing", "inventory"))]
    in_new = [r for r in cyber if r["topic_update"] == 1]
    assert len(in_new) >= 0.75 * len(cyber), "the cybersecurity sentences form new topics of the firm"
    nwl_new = [t for t in study["new_topics"] if t["firm_id"] == "NWL"]
    # A keyword may be a phrase ("blocked intrusions"): its words count.
    assert nwl_new and all(CYBER_WORDS & {w for term in t["keywords"][:5] for w in term.split()} for t in nwl_new)
    assert all(t["theme_id"] is not None and t["theme_assignment"] == "nearest" for t in study["new_topics"])
    old_subjects = [r for r in study["q3"] if r["firm_id"] == "NWL" and r not in cyber]
    joined = [r for r in old_subjects if r["topic_id"] is not None and r["topic_update"] is None]
    assert len(joined) >= 0.75 * len(old_subjects), "sentences on old subjects join the firm's old topics"
    assert all(r["topic_assignment"] == "nearest" for r in joined)
    (update,) = study["updates"]
    assert update["status"] == "complete" and update["added"]["sentences"] == 150
    assert update["added"]["firms"] == 2 and update["added"]["topics"] == len(study["new_topics"])
    # The new firm's 90 and most of Northwind's 40 cybersecurity sentences are in new topics.
    assert update["drift"]["new_topic_sentence_share"] >= 0.6
    assert update["drift"]["fresh_run_recommended"] is True
    assert "fresh run" in study["update"][1]
    assert study["status_after"]["updates"][0]["drift"] == update["drift"]


def test_a_second_update_adds_nothing(study):
    code, printed = study["update_again"]
    assert code == 0 and "nothing to add" in printed
    assert study["rows_again"] == study["rows_after"]
    assert len(study["updates"]) == 1


def test_update_of_a_run_never_started_is_a_usage_error(env, capsys):
    from tests.support import one_line_error

    message = one_line_error(capsys, ["update", "--run", "never"])
    assert "never" in message


@pytest.fixture
def finished_with_a_new_quarter(server_url, tmp_path):
    """A finished run of three sample firms, then a 2024Q3 call of each ingested; the
    database's URL."""
    with fresh_database(server_url) as url, pytest.MonkeyPatch.context() as mp:
        env = {"DATABASE_URL": url, "FIRMTOPICS_DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": "json"}
        assert run_in_process(mp, env, "run", "--input", write_rows(tmp_path / "base.jsonl.gz",
                                                                  sample_rows(firms=3))) == 0
        rng, rows = random.Random(5), []
        for firm_id, firm_name, subjects in FIRMS[:3]:
            rows += [{"firm_id": firm_id, "firm_name": firm_name, "doc_id": f"{firm_id}_call_3", "period": "2024Q3",
                      "sentence": sentence_about(rng, subjects[i % len(subjects)], firm_name) + f" ({i})"}
                     for i in range(30)]
        assert run_in_process(mp, env, "ingest", write_rows(tmp_path / "q3.jsonl.gz", rows)) == 0
        yield url


def test_an_update_killed_midway_resumes_to_the_whole(finished_with_a_new_quarter, tmp_path):
    url = finished_with_a_new_quarter
    env = job_env(url, tmp_path)
    first = Job(env, command="update")
    first.wait_for("firm_updated")
    first.kill()  # as a spot instance's end: the firm in flight is rolled back whole
    assert value(url, "SELECT count(*) FROM run_updates WHERE status = 'running'") == 1
    check_whole(url, "after the kill")
    again = Job(env, command="update")
    assert again.finish() == 0, again.tail()
    assert "updated (update 1): 90 sentences of 3 firms added" in again.output()
    check_whole(url, "after the resume")
    assert value(url, "SELECT count(*) FROM sentences s WHERE NOT EXISTS"
                      " (SELECT 1 FROM sentence_topics st WHERE st.sentence_id = s.sentence_id)") == 0
    assert fetch(url, "SELECT update_no, status FROM run_updates") == [(1, "complete")]


def test_a_second_worker_leaves_the_update_to_the_first(finished_with_a_new_quarter, tmp_path, capsys, monkeypatch):
    import asyncio
    import threading

    import asyncpg

    from app.claims import take_theme_lock

    url, holding, done = finished_with_a_new_quarter, threading.Event(), threading.Event()

    def first_worker():  # holds the run's lock, as a worker in the middle of an update does
        async def hold():
            conn = await asyncpg.connect(url)
            assert await take_theme_lock(conn, 1)
            holding.set()
            while not done.is_set():
                await asyncio.sleep(0.05)
            await conn.close()

        asyncio.run(hold())

    thread = threading.Thread(target=first_worker)
    thread.start()
    try:
        assert holding.wait(30)
        env = {"DATABASE_URL": url, "FIRMTOPICS_DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": "json"}
        code = run_in_process(monkeypatch, env, "update")
    finally:
        done.set()
        thread.join(30)
    assert code == 0 and "another worker is updating it" in capsys.readouterr().out
    assert value(url, "SELECT count(*) FROM run_updates") == 0
    assert value(url, "SELECT count(*) FROM sentence_topics WHERE update_no IS NOT NULL") == 0
