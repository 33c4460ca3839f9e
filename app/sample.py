"""A generated sample corpus: made-up firms talking about a handful of shared subjects.

Used by ``firmtopics demo`` and by the tests that must run without any outside data.
Each firm speaks about three or four of six subjects (supply chains, cloud and AI,
emissions, returning capital, labour, pricing), in earnings-call style sentences
assembled from varied phrases, so that each firm has several topics and the topics of
different firms share themes. One firm has too few sentences to cluster, to show how
that is recorded. Each firm has two calls, one a quarter (``period`` 2024Q1 and 2024Q2), so
``firmtopics trends`` has periods to show. Deterministic for a given seed.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path

SUBJECTS = {
    "supply chain": {
        "subjects": ["supply chain disruptions", "freight and logistics costs", "port congestion",
                     "component shortages", "semiconductor availability", "our inventory position",
                     "supplier lead times", "container shipping rates"],
        "predicates": ["weighed on shipments", "eased compared with last year", "remained a headwind",
                       "delayed deliveries to customers", "forced us to expedite freight",
                       "improved as suppliers caught up", "raised our inbound logistics costs"],
        "details": ["across our distribution centers", "especially for parts sourced from Asia",
                    "and we added safety stock", "while we qualified second suppliers",
                    "in our warehouses and factories", "as we diversified our supplier base"],
    },
    "cloud and ai": {
        "subjects": ["cloud migration", "our artificial intelligence tools", "the data analytics platform",
                     "software subscriptions", "machine learning models", "our digital channels",
                     "generative AI features", "the cloud software business"],
        "predicates": ["drove strong recurring revenue", "gained adoption among enterprise customers",
                       "expanded usage across accounts", "helped automate customer workflows",
                       "lifted annual recurring revenue", "won new software contracts"],
        "details": ["with developers building on the platform", "as customers moved workloads to the cloud",
                    "and we invested in data centers and GPUs", "in both subscription and usage metrics",
                    "through new AI copilots for users", "with higher software attach rates"],
    },
    "emissions": {
        "subjects": ["our carbon emissions", "renewable electricity purchases", "the net zero target",
                     "greenhouse gas intensity", "solar and wind projects", "our sustainability program",
                     "scope one and two emissions", "energy efficiency upgrades"],
        "predicates": ["fell again this year", "moved us closer to our climate goals",
                       "were verified by an independent auditor", "reduced our environmental footprint",
                       "cut energy use at our plants", "advanced our decarbonization roadmap"],
        "details": ["as outlined in our sustainability report", "in line with science based targets",
                    "while we electrified the vehicle fleet", "across every manufacturing site",
                    "with more power from renewable sources", "ahead of our 2030 climate commitment"],
    },
    "capital return": {
        "subjects": ["share repurchases", "the quarterly dividend", "our buyback authorization",
                     "free cash flow", "capital returned to shareholders", "the dividend increase",
                     "our balance sheet", "the share repurchase program"],
        "predicates": ["returned cash to shareholders", "reflects our confidence in cash generation",
                       "allowed us to buy back more stock", "was raised by the board of directors",
                       "supports a growing dividend", "gave us room to repurchase shares"],
        "details": ["while keeping leverage within our target range", "for the tenth consecutive year",
                    "with billions remaining under the authorization", "alongside disciplined capital spending",
                    "as free cash flow conversion stayed high", "and we retired shares during the quarter"],
    },
    "labour": {
        "subjects": ["wage inflation", "hiring of frontline workers", "employee retention",
                     "the tight labor market", "our training programs", "staffing levels in stores",
                     "overtime and labor costs", "employee turnover"],
        "predicates": ["pressured our operating margins", "improved after we raised starting pay",
                       "made it harder to fill open positions", "helped us keep experienced staff",
                       "required more overtime hours", "stabilized during the quarter"],
        "details": ["across our hourly workforce", "as we invested in benefits and pay",
                    "in our distribution and service teams", "with lower attrition than last year",
                    "despite a competitive hiring environment", "through apprenticeships and upskilling"],
    },
    "pricing": {
        "subjects": ["price increases", "consumer demand", "our pricing actions", "unit volumes",
                     "promotional activity", "price elasticity", "customer order trends", "average selling prices"],
        "predicates": ["offset higher input costs", "softened as consumers traded down",
                       "held up better than we expected", "declined slightly in the quarter",
                       "stuck with retail customers", "supported gross margin recovery"],
        "details": ["across our branded portfolio", "in both grocery and convenience channels",
                    "as shoppers became more value conscious", "with minimal volume loss",
                    "while competitors raised list prices too", "in every region we serve"],
    },
}

OPENERS = ["", "During the quarter, ", "As we said last quarter, ", "Looking ahead, ", "In the fourth quarter, ",
           "For the full year, ", "Importantly, ", "At the same time, ", "As expected, ", "Overall, "]

FIRMS = [
    ("NWL", "Northwind Logistics Inc.", ["supply chain", "labour", "pricing", "capital return"]),
    ("CTC", "Contoso Cloud Corp.", ["cloud and ai", "labour", "capital return"]),
    ("FBF", "Fabrikam Foods Co.", ["pricing", "supply chain", "emissions", "labour"]),
    ("TSE", "Tailspin Energy plc", ["emissions", "capital return", "supply chain"]),
    ("WWR", "Wide World Retail Inc.", ["pricing", "labour", "cloud and ai", "supply chain"]),
    ("LTH", "Litware Health Systems", ["cloud and ai", "emissions", "capital return"]),
    ("ADW", "Adventure Works Outdoor", ["pricing", "supply chain", "emissions"]),
    ("PRS", "Proseware Semiconductors", ["supply chain", "cloud and ai", "capital return", "emissions"]),
]
SMALL_FIRM = ("TNY", "Tiny Ventures Ltd.", ["pricing"])


def sentence_about(rng: random.Random, subject: str, firm_name: str) -> str:
    """One made-up earnings-call sentence about ``subject`` (a key of ``SUBJECTS``)."""
    parts = SUBJECTS[subject]
    opener = rng.choice(OPENERS)
    text = f"{rng.choice(parts['subjects'])} {rng.choice(parts['predicates'])} {rng.choice(parts['details'])}"
    if rng.random() < 0.25:
        text += f" at {firm_name.split()[0]}"
    text = (opener + text) if opener else text[0].upper() + text[1:]
    return text + "."


def sample_rows(*, sentences_per_subject: int = 40, seed: int = 7, firms: int | None = None) -> Iterator[dict]:
    """Rows of the sample corpus (``firm_id``, ``firm_name``, ``doc_id``, ``period``, ``sentence``).

    ``firms`` limits the number of regular firms (the small firm is always added).
    """
    rng = random.Random(seed)
    chosen = FIRMS[: firms or len(FIRMS)] + [SMALL_FIRM]
    for firm_id, firm_name, subjects in chosen:
        per_subject = 4 if firm_id == SMALL_FIRM[0] else sentences_per_subject
        seen: set[str] = set()
        for call in range(2):
            doc_id = f"{firm_id}_call_{call + 1}"
            for subject in subjects:
                for _ in range(per_subject // 2):
                    text = sentence_about(rng, subject, firm_name)
                    if text in seen:  # keep the corpus free of exact repeats
                        continue
                    seen.add(text)
                    yield {"firm_id": firm_id, "firm_name": firm_name, "doc_id": doc_id,
                           "period": f"2024Q{call + 1}", "sentence": text}


def write_sample_corpus(path: str | Path, **kwargs) -> Path:
    """Write the sample corpus as gzip-compressed JSON Lines; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for row in sample_rows(**kwargs):
            out.write(json.dumps(row) + "\n")
    return path
