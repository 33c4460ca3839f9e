"""Levels on generated firms with a known two-level structure: nine subjects in three
families (shareholder returns, workforce, climate). Each firm speaks about two subjects
of each family, so every subject and every family spans several firms. A full run with
nine fine themes and a top level of at most three must put each family under one top
theme (the broader level recovers the families) and each subject under one fine theme
(the fine level recovers the subjects). Measured: every theme of both levels holds one
family or subject only, far from the 95% the tests ask."""

from __future__ import annotations

import collections
import random
from functools import partial

import pytest

from app import clustering, themes
from app.backend import CPU
from app.job import run_job
from app.naming import OfflineNamer
from app.sample import OPENERS
from app.settings import RunSettings
from support import insert_corpus

FAMILIES = {
    "shareholder returns": {
        "dividends": (["the quarterly dividend", "our dividend per share", "the dividend payout",
                       "the annual dividend"],
                      ["was raised by eight percent", "was paid to shareholders in cash",
                       "grew for the twentieth year in a row", "remains well covered by earnings"]),
        "buybacks": (["share repurchases", "our buyback program", "the stock repurchase authorization",
                      "shares bought back"],
                     ["reduced the share count by two percent", "returned cash to our shareholders",
                      "were executed at attractive prices", "will continue through next year"]),
        "debt": (["our net debt", "the leverage ratio", "the refinancing of our bonds", "our credit rating"],
                 ["fell to two times earnings", "lowered our interest expense", "was upgraded by the agencies",
                  "gives us balance sheet flexibility"]),
    },
    "workforce": {
        "wages": (["hourly wages", "starting pay for our workers", "wage inflation", "pay raises for staff"],
                  ["rose faster than we planned", "added to labor costs this quarter",
                   "helped us compete for workers", "were budgeted at four percent"]),
        "hiring": (["hiring of new employees", "open positions in our plants", "recruiting of engineers",
                    "headcount additions"],
                   ["picked up in the second half", "took longer to fill than usual",
                    "brought in three thousand new people", "focused on technical roles"]),
        "training": (["employee training", "our apprenticeship program", "upskilling of our staff",
                      "leadership development courses"],
                     ["reached every new hire", "improved retention of our people",
                      "taught new skills to technicians", "doubled the hours of learning per employee"]),
    },
    "climate": {
        "emissions": (["our carbon emissions", "greenhouse gas emissions", "scope one and two emissions",
                       "the carbon footprint of our plants"],
                      ["fell twelve percent from last year", "are on track for net zero",
                       "were verified by an outside auditor", "declined as we electrified our fleet"]),
        "renewables": (["renewable electricity", "our solar power purchases", "wind energy contracts",
                        "clean power agreements"],
                       ["now supply half of our sites", "replaced coal fired electricity",
                        "were signed for fifteen years", "cut the cost of our energy"]),
        "waste": (["landfill waste", "water consumption at our factories", "recycled packaging",
                   "plastic use in our products"],
                  ["was cut by a third", "reached our circular economy goal", "dropped as we reused materials",
                   "fell at every manufacturing site"]),
    },
}
FAMILY_OF = {subject: family for family, subjects in FAMILIES.items() for subject in subjects}
PHRASES = {subject: parts for subjects in FAMILIES.values() for subject, parts in subjects.items()}


def family_rows(firms: int = 6, per_subject: int = 24, seed: int = 3) -> tuple[list[dict], dict[str, str]]:
    """The corpus rows and the subject of each sentence text: every firm speaks about two
    subjects of each family (a different pair per firm), ``per_subject`` distinct
    sentences each."""
    rng = random.Random(seed)
    rows, subject_of = [], {}
    for f in range(firms):
        firm_id = f"FAM{f}"
        for subjects in FAMILIES.values():
            kept = sorted(subjects)[:f % 3] + sorted(subjects)[f % 3 + 1:]  # leave one of three out
            for subject in kept:
                subjects_, predicates = PHRASES[subject]
                seen = set()
                while len(seen) < per_subject:
                    text = f"{rng.choice(OPENERS)}{rng.choice(subjects_)} {rng.choice(predicates)}"
                    text = text[0].upper() + text[1:] + "."  # 10 openers x 4 x 4: 160 to draw from
                    if text in seen:
                        continue
                    seen.add(text)
                    rows.append({"firm_id": firm_id, "firm_name": f"Firm {f}", "doc_id": f"{firm_id}_call",
                                 "sentence": text})
                    subject_of[text] = subject
    return rows, subject_of


@pytest.fixture
async def family_run(request, pool, embedder, monkeypatch):
    """The family corpus run whole, its themes grouped by exact Ward, or (parameter
    ``two-stage``) by the two-stage grouping the theme stage uses above
    ``WARD_EXACT_MAX`` topics, forced here on a few dozen topics."""
    if getattr(request, "param", "exact") == "two-stage":
        monkeypatch.setattr(themes, "theme_labels", partial(clustering.theme_labels, exact_max=0))
    rows, subject_of = family_rows()
    await insert_corpus(pool, rows)
    outcome = await run_job(pool, RunSettings(theme_count=9, theme_top_level_size=3), run_name="families",
                            embedder=embedder, backend=CPU, namer=OfflineNamer())
    assert outcome.status == "complete"
    return pool, subject_of


@pytest.mark.results
@pytest.mark.parametrize("family_run", ["exact", "two-stage"], indirect=True)
async def test_the_top_level_recovers_the_families(family_run):
    pool, subject_of = family_run
    async with pool.acquire() as conn:
        levels = dict(await conn.fetch("SELECT level, count(*) FROM themes GROUP BY level"))
        rows = await conn.fetch("SELECT text, top_theme_id FROM sentence_top_themes")
        sentences = await conn.fetchval("SELECT count(*) FROM sentences")
    assert levels == {1: 9, 2: 3}
    by_top = collections.defaultdict(collections.Counter)
    for r in rows:
        by_top[r["top_theme_id"]][FAMILY_OF[subject_of[r["text"]]]] += 1
    # Each top theme is one family (at least 95% of its sentences), and each family has its own.
    leading = {top: counts.most_common(1)[0] for top, counts in by_top.items()}
    for top, (name, n) in leading.items():
        assert n >= 0.95 * sum(by_top[top].values()), (name, dict(by_top[top]))
    assert sorted(name for name, _ in leading.values()) == sorted(FAMILIES)
    assert len(rows) >= 0.9 * sentences  # the figures speak for nearly every sentence


@pytest.mark.results
async def test_the_fine_level_recovers_the_subjects(family_run):
    pool, subject_of = family_run
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT text, fine_theme_id FROM sentence_top_themes")
    by_fine = collections.defaultdict(collections.Counter)
    for r in rows:
        by_fine[r["fine_theme_id"]][subject_of[r["text"]]] += 1
    leading = [counts.most_common(1)[0] for counts in by_fine.values()]
    for (_subject, n), counts in zip(leading, by_fine.values()):
        assert n >= 0.95 * sum(counts.values()), dict(counts)
    assert sorted(subject for subject, _ in leading) == sorted(PHRASES)
