"""Each clustering choice, on data where the right answer is known: generated firms whose
sentences each speak about one known subject (``app.sample``), and small vectors built by
hand. Firm topics must follow the subjects (no topic spanning two: no catch-all), close
outliers join their topic, and themes group the topics of different firms by subject."""

from __future__ import annotations

import collections
import random

import numpy as np
import pytest

from app.backend import CPU
from app.clustering import (
    UMAP_MIN_DOCS,
    attach_outliers,
    broader_levels,
    cluster_firm,
    merge_alike,
    theme_count,
    theme_keywords,
    theme_labels,
)
from app.quality import label_scores
from app.sample import sentence_about
from app.settings import RunSettings
from support import subject_of


def generated_firm(sizes: dict[str, int], seed: int = 3) -> tuple[list[str], list[str]]:
    """A firm's sentences and the subject of each: ``sizes`` sentences per subject."""
    rng = random.Random(seed)
    texts, subjects, seen = [], [], set()
    for subject, n in sizes.items():
        while sum(1 for s in subjects if s == subject) < n:
            text = sentence_about(rng, subject, "Contoso Pharmaceuticals")
            if text not in seen:
                seen.add(text)
                texts.append(text)
                subjects.append(subject)
    return texts, subjects


# --- firm topics ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def uneven_firm(embedder):
    """A firm with one dominant subject (half its sentences) and four smaller ones: the
    shape on which excess-of-mass selection made one catch-all topic."""
    texts, subjects = generated_firm({"supply chain": 200, "cloud and ai": 60, "emissions": 50,
                                      "capital return": 50, "labour": 40})
    return texts, subjects, embedder.encode(texts)


@pytest.mark.results
def test_every_topic_speaks_about_one_subject_and_every_subject_has_a_topic(uneven_firm):
    texts, subjects, embeddings = uneven_firm
    clustering = cluster_firm(texts, embeddings, RunSettings(), CPU)
    covered = set()
    for cluster in clustering.clusters:
        counts = collections.Counter(subjects[i] for i in cluster.members)
        subject, n = counts.most_common(1)[0]
        assert n / len(cluster.members) >= 0.9, counts  # a catch-all would mix subjects
        covered.add(subject)
    assert covered == set(subjects)


@pytest.mark.results
def test_no_topic_holds_more_of_the_firm_than_its_subject_does(uneven_firm):
    texts, subjects, embeddings = uneven_firm
    clustering = cluster_firm(texts, embeddings, RunSettings(), CPU)
    clustered = int((clustering.labels >= 0).sum())
    largest = max(len(c.members) for c in clustering.clusters) / clustered
    assert largest <= 200 / len(texts) + 0.05


@pytest.mark.results
def test_the_minimum_topic_size_follows_the_firm(uneven_firm):
    """A larger share per topic gives fewer topics; the floor holds for a small firm."""
    texts, _, embeddings = uneven_firm
    fine = cluster_firm(texts, embeddings, RunSettings(min_topic_share=0.02), CPU)
    coarse = cluster_firm(texts, embeddings, RunSettings(min_topic_share=0.1), CPU)
    assert len(coarse.clusters) < len(fine.clusters)
    assert min(len(c.members) for c in coarse.clusters) >= 0.1 * len(texts) - 1


# --- outliers -------------------------------------------------------------------------


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_an_outlier_close_to_a_topic_joins_it_and_a_far_one_stays_out():
    embeddings = unit([[1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0, 1, 0.1],
                       [1, 0.3, 0],    # close to topic 0
                       [0, 0, 1]])     # far from both
    labels = np.array([0, 0, 1, 1, -1, -1])
    attached = attach_outliers(embeddings, labels, threshold=0.5)
    assert attached.tolist() == [0, 0, 1, 1, 0, -1]
    assert labels.tolist() == [0, 0, 1, 1, -1, -1]  # the input is left as it was


def test_the_outlier_threshold_decides():
    embeddings = unit([[1, 0], [1, 0.05], [1, 1]])  # the outlier is at cosine ~0.72 from the centre
    labels = np.array([0, 0, -1])
    assert attach_outliers(embeddings, labels, threshold=0.6).tolist() == [0, 0, 0]
    assert attach_outliers(embeddings, labels, threshold=0.8).tolist() == [0, 0, -1]
    assert attach_outliers(embeddings, labels, threshold=2.0).tolist() == [0, 0, -1]  # above 1: none


def test_no_topic_means_nothing_to_attach():
    embeddings = unit([[1, 0], [0, 1]])
    assert attach_outliers(embeddings, np.array([-1, -1]), threshold=0.0).tolist() == [-1, -1]


# --- themes ---------------------------------------------------------------------------


@pytest.mark.parametrize("topics, themes", [(4, 2), (5, 2), (20, 4), (53, 7), (131, 11), (8000, 89)])
def test_the_number_of_themes_follows_the_number_of_topics(topics, themes):
    assert theme_count(topics, RunSettings()) == themes


def test_a_set_number_of_themes_wins_within_bounds():
    assert theme_count(100, RunSettings(theme_count=30)) == 30
    assert theme_count(10, RunSettings(theme_count=30)) == 5  # at most half the topics


def grouped_vectors(groups: int, per_group: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``groups`` random directions in 64 dimensions, with the truth."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(groups, 64))
    truth = np.repeat(np.arange(groups), per_group)
    rng.shuffle(truth)
    return unit(directions[truth] + 0.3 * rng.normal(size=(len(truth), 64))), truth


@pytest.mark.results
def test_ward_recovers_known_groups_numbered_by_first_appearance():
    vectors, truth = grouped_vectors(groups=6, per_group=9)
    labels = theme_labels(vectors, 6)
    assert label_scores(labels, truth)["nmi"] == 1.0
    firsts = [int(np.flatnonzero(labels == k)[0]) for k in range(6)]
    assert firsts == sorted(firsts)
    assert theme_labels(vectors, 6).tolist() == labels.tolist()  # no random step


def test_theme_keywords_come_from_the_topics_texts():
    docs = ["freight port shipping", "freight container shipping", "dividend buyback shareholders",
            "dividend repurchase shareholders"]
    vectors = unit(np.eye(4)[[0, 0, 1, 1]] + 0.01)
    keywords = theme_keywords(docs, vectors, np.array([0, 0, 1, 1]), top_n=3)
    assert {"freight", "shipping"} <= set(keywords[0])
    assert {"dividend", "shareholders"} <= set(keywords[1])


@pytest.mark.results
async def test_the_sample_run_has_themes_by_subject_with_no_template_word(conn):
    """The sample corpus: 8 firms speaking about 3-4 of 6 subjects. Each topic's subject
    is its sentences' majority; the themes must group topics by subject."""
    rows = await conn.fetch(
        "SELECT t.topic_id, t.theme_id, s.text FROM topics t JOIN sentence_topics st USING (topic_id)"
        " JOIN sentences s USING (sentence_id) WHERE st.topic_assignment = 'cluster'")
    by_topic = collections.defaultdict(collections.Counter)
    theme_of = {}
    for row in rows:
        by_topic[row["topic_id"]][subject_of(row["text"])] += 1
        theme_of[row["topic_id"]] = row["theme_id"]
    topics = sorted(by_topic)
    subjects = [by_topic[t].most_common(1)[0][0] for t in topics]
    scores = label_scores([theme_of[t] for t in topics], subjects)
    assert scores["harmonic_purity"] >= 0.8, scores
    # Offline theme keywords come from what topics say, not from the template of their summaries.
    template = {"sentences", "example", "topics", "firms", "include", "member"}
    for keywords in await conn.fetch("SELECT keywords FROM themes"):
        assert not template & set(keywords["keywords"])


@pytest.mark.results
def test_broader_levels_recover_known_families():
    """Three families of three subjects each, four topics a subject: the fine themes are the
    subjects, the level above the families."""
    rng = np.random.default_rng(1)
    families = rng.normal(size=(3, 64)) * 3
    subjects = np.repeat(families, 3, axis=0) + rng.normal(size=(9, 64))
    subject_of_topic = np.repeat(np.arange(9), 4)
    vectors = unit(subjects[subject_of_topic] + 0.2 * rng.normal(size=(36, 64)))
    fine = theme_labels(vectors, 9)
    assert label_scores(fine, subject_of_topic)["nmi"] == 1.0
    (families_level,) = broader_levels(vectors, fine, top_size=3)
    assert label_scores(families_level[fine], subject_of_topic // 3)["nmi"] == 1.0


@pytest.mark.results
def test_a_small_fine_level_is_the_only_level():
    vectors, _ = grouped_vectors(groups=6, per_group=4)
    assert broader_levels(vectors, theme_labels(vectors, 6), top_size=20) == []


@pytest.mark.results
def test_levels_go_up_until_the_top_is_small_enough():
    vectors, _ = grouped_vectors(groups=200, per_group=3)
    levels = broader_levels(vectors, theme_labels(vectors, 200), top_size=8)
    sizes = [int(level.max()) + 1 for level in levels]
    assert sizes == [14, 5]  # sqrt(200) = 14 > 8: a level between; then 14 / 3 = 5 at the top


# --- small firms ----------------------------------------------------------------------


def alike_firm(n: int = 40, seed: int = 1) -> list[str]:
    """A firm whose sentences all say one thing: revenue grew, in other words."""
    rng, texts = random.Random(seed), []
    while len(texts) < n:
        text = (f"{rng.choice(['Revenue', 'Sales', 'Net sales', 'Total revenue'])} "
                f"{rng.choice(['grew', 'increased', 'rose', 'was up'])} {rng.randint(2, 19)}% "
                f"{rng.choice(['in the quarter', 'this quarter', 'year over year', 'compared with last year'])}.")
        if text not in texts:
            texts.append(text)
    return texts


# Firms of 40 to 50 sentences on which HDBSCAN on the raw embeddings (the earlier way)
# found no topic or topics mixing subjects.
SMALL_FIRMS = [({"supply chain": 10, "emissions": 10, "labour": 10, "pricing": 10}, 6),
               ({"cloud and ai": 10, "capital return": 10, "labour": 10, "emissions": 10, "pricing": 10}, 7)]


@pytest.mark.results
@pytest.mark.parametrize("sizes, seed", SMALL_FIRMS)
def test_a_small_firm_gets_a_topic_for_each_of_its_subjects(embedder, sizes, seed):
    texts, subjects = generated_firm(sizes, seed=seed)
    assert len(texts) < UMAP_MIN_DOCS
    embeddings = embedder.encode(texts)
    clustering = cluster_firm(texts, embeddings, RunSettings(), CPU)
    covered = set()
    for cluster in clustering.clusters:
        subject, n = collections.Counter(subjects[i] for i in cluster.members).most_common(1)[0]
        assert n / len(cluster.members) >= 0.9
        covered.add(subject)
    assert covered == set(sizes)


@pytest.mark.results
def test_a_small_firm_whose_sentences_are_alike_gets_no_topic(embedder):
    texts = alike_firm()
    clustering = cluster_firm(texts, embedder.encode(texts), RunSettings(), CPU)
    assert clustering.clusters == [] and (clustering.labels == -1).all()


def test_merging_alike_clusters_stops_at_distinct_ones():
    # Clusters 0 and 1 point the same way, 2 elsewhere: 0 and 1 merge, 2 stays.
    embeddings = unit(np.array([[1, 0.1, 0], [1, 0, 0.1], [1, 0.05, 0], [0, 0, 1], [0, 0.1, 1], [0.3, 1, 0]]))
    labels = np.array([0, 1, 1, 2, 2, -1])
    assert merge_alike(embeddings, labels, 0.75).tolist() == [0, 0, 0, 1, 1, -1]
    # One cluster left is no distinct subject: nothing.
    assert merge_alike(embeddings, labels, 0.0).tolist() == [-1] * 6
    assert merge_alike(embeddings, labels, 0.999).tolist() == labels.tolist()
