"""Quality figures on small cases where the right answer is known by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.quality import (
    firm_quality,
    label_scores,
    npmi_coherence,
    run_quality,
    tokenizer,
    topic_diversity,
)
from app.read.text import format_quality

# --- tokenizer -------------------------------------------------------------------------

def test_tokenizer_lowercases_and_drops_stop_words():
    terms = tokenizer()("The Revenue grew and the MARGINS fell")
    assert terms[:4] == ["revenue", "grew", "margins", "fell"]
    assert terms[4:] == ["revenue grew", "grew margins", "margins fell"]  # two-word phrases, as keywords


# --- NPMI ------------------------------------------------------------------------------

def test_npmi_of_words_that_always_co_occur_is_one():
    docs = ["revenue growth", "revenue growth strong", "weather"]
    assert npmi_coherence([["revenue", "growth"]], docs) == [pytest.approx(1.0)]


def test_npmi_of_words_present_in_every_document_is_one():
    # p(i,j) = 1: log(1) / -log(1) is 0/0; defined as 1.
    assert npmi_coherence([["revenue", "growth"]], ["revenue growth", "growth revenue"]) == [1.0]


def test_npmi_of_words_that_never_co_occur_is_minus_one():
    docs = ["revenue", "growth", "revenue margin", "growth margin"]
    assert npmi_coherence([["revenue", "growth"]], docs) == [-1.0]


def test_npmi_of_independent_words_is_zero():
    # p(alpha) = p(bravo) = 1/2, p(alpha, bravo) = 1/4 = p(alpha) p(bravo).
    docs = ["alpha bravo", "alpha charlie", "delta bravo", "delta charlie"]
    assert npmi_coherence([["alpha", "bravo"]], docs)[0] == pytest.approx(0.0, abs=1e-12)


def test_npmi_is_the_mean_over_all_pairs():
    # Pairs: (x, y) always together -> 1; (x, z) and (y, z) never -> -1; mean -1/3.
    docs = ["xray yankee", "xray yankee", "zulu", "other"]
    assert npmi_coherence([["xray", "yankee", "zulu"]], docs)[0] == pytest.approx(-1 / 3)


def test_npmi_hand_computed_value():
    # p(a) = 2/4, p(b) = 3/4, p(a,b) = 1/4: log((1/4)/(3/8)) / -log(1/4).
    docs = ["alpha bravo", "alpha", "bravo", "bravo"]
    expected = math.log((1 / 4) / (2 / 4 * 3 / 4)) / -math.log(1 / 4)
    assert npmi_coherence([["alpha", "bravo"]], docs)[0] == pytest.approx(expected)


def test_npmi_absent_keywords_count_minus_one_and_short_topics_are_nan():
    docs = ["revenue growth", "revenue growth"]
    scores = npmi_coherence([["revenue", "growth", "unseen"], ["revenue"], [], ["revenue growth", "revenue"],
                             ["revenue growth rate", "revenue"]], docs)
    # revenue-growth 1, revenue-unseen -1, growth-unseen -1
    assert scores[0] == pytest.approx(-1 / 3)
    assert math.isnan(scores[1]) and math.isnan(scores[2])
    # a two-word keyword is counted as a phrase, as keywords are made
    assert scores[3] == 1.0
    # a phrase of three words is one term the tokenizer never yields: absent
    assert scores[4] == -1.0


def test_npmi_uses_only_the_first_top_n_keywords():
    docs = ["alpha bravo", "alpha bravo", "charlie"]
    assert npmi_coherence([["alpha", "bravo", "charlie"]], docs, top_n=2) == [pytest.approx(1.0)]


def test_npmi_counts_presence_not_frequency_and_uses_the_tokenizer():
    # "Alpha" is lower-cased, repeats count once, "the" is a stop word and never present.
    docs = ["Alpha alpha alpha bravo", "charlie bravo", "delta", "echo"]
    expected = math.log((1 / 4) / (1 / 4 * 2 / 4)) / -math.log(1 / 4)
    assert npmi_coherence([["alpha", "bravo"], ["the", "bravo"]], docs) == [pytest.approx(expected), -1.0]


def test_npmi_without_documents_is_nan():
    assert all(math.isnan(score) for score in npmi_coherence([["alpha", "bravo"]], []))


def test_npmi_on_a_large_firm_stays_in_range():
    rng = np.random.default_rng(0)
    words = np.array([f"word{i}" for i in range(500)])
    docs = [" ".join(row) for row in words[rng.integers(0, 500, size=(10_000, 12))]]
    topics = [list(rng.choice(words, size=10, replace=False)) for _ in range(30)]
    scores = npmi_coherence(topics, docs)
    assert len(scores) == 30 and all(-1.0 <= score <= 1.0 for score in scores)


# --- diversity -------------------------------------------------------------------------

def test_diversity_all_distinct_is_one():
    assert topic_diversity([["a", "b"], ["c", "d"]]) == 1.0


def test_diversity_fully_repeated_is_one_half():
    assert topic_diversity([["a", "b"], ["b", "a"]]) == 0.5


def test_diversity_counts_only_top_n_and_is_nan_without_words():
    assert topic_diversity([["a", "b", "x"], ["a", "b", "y"]], top_n=2) == 0.5
    assert math.isnan(topic_diversity([]))
    assert math.isnan(topic_diversity([[], []]))


# --- firm_quality ----------------------------------------------------------------------

def test_firm_quality_shares_on_hand_made_labels():
    # 10 sentences: topic 0 x5, topic 1 x1, outliers x4 of which 3 attached later.
    cluster = np.array([0, 0, 0, 0, 0, 1, -1, -1, -1, -1])
    final = np.array([0, 0, 0, 0, 0, 1, 0, 1, 1, -1])
    docs = ["revenue growth"] * 5 + ["weather"] * 5
    quality = firm_quality(cluster, final, [["revenue", "growth"], ["weather", "storm"]], docs)
    assert quality["sentences"] == 10
    assert quality["topics"] == 2
    assert quality["outlier_share"] == 0.4
    assert quality["nearest_share"] == 0.3
    assert quality["unassigned_share"] == 0.1
    assert quality["largest_topic_share"] == round(5 / 6, 4)  # of the 6 clustered sentences
    # topic 0: NPMI 1; topic 1: "storm" absent -> -1; mean 0
    assert quality["coherence"] == 0.0
    assert quality["diversity"] == 1.0
    json.dumps(quality, allow_nan=False)
    assert all(type(value) in (int, float) for value in quality.values())


def test_firm_quality_without_topics_is_json_ready():
    quality = firm_quality([-1, -1, -1], [-1, -1, -1], [], ["a", "b", "c"])
    assert quality == {
        "sentences": 3,
        "topics": 0,
        "outlier_share": 1.0,
        "nearest_share": 0.0,
        "unassigned_share": 1.0,
        "largest_topic_share": 0.0,
        "coherence": None,
        "diversity": None,
    }
    json.dumps(quality, allow_nan=False)


def test_firm_quality_nan_coherence_becomes_none():
    quality = firm_quality([0, 0], [0, 0], [["revenue"]], ["revenue", "revenue"])
    assert quality["coherence"] is None
    assert quality["diversity"] == 1.0
    json.dumps(quality, allow_nan=False)


def test_firm_quality_empty_firm():
    quality = firm_quality(np.array([], dtype=int), np.array([], dtype=int), [], [])
    assert quality["sentences"] == 0
    assert quality["outlier_share"] == quality["unassigned_share"] == quality["largest_topic_share"] == 0.0


def test_firm_quality_rejects_labels_of_different_lengths():
    with pytest.raises(ValueError):
        firm_quality([0, 1], [0], [["a"]], ["a", "b"])


# --- run_quality -----------------------------------------------------------------------

def _firm(firm_id, sentences, largest, *, outlier=0.0, nearest=0.0, unassigned=0.0, topics=3,
          coherence=None, diversity=None):
    return {"firm_id": firm_id, "sentences": sentences, "topics": topics, "outlier_share": outlier,
            "nearest_share": nearest, "unassigned_share": unassigned, "largest_topic_share": largest,
            "coherence": coherence, "diversity": diversity}


def test_run_quality_weights_shares_by_sentences_and_counts_catch_alls():
    firms = [
        _firm("A", 100, 0.3, outlier=0.1, nearest=0.05, unassigned=0.05, topics=4, coherence=0.2, diversity=0.8),
        _firm("B", 300, 0.6, outlier=0.5, nearest=0.2, unassigned=0.3, topics=2, coherence=None, diversity=0.6),
        _firm("C", 0, 0.5, topics=0),  # exactly 0.5 is not a catch-all
    ]
    quality = run_quality(firms, theme_sizes=[5, 2, 1], linked_by_cluster=6, n_topics=10)
    f = quality["firms"]
    assert f["firms"] == 3
    assert f["mean_topics"] == 2.0
    assert f["mean_largest_topic_share"] == round((0.3 + 0.6 + 0.5) / 3, 4)
    assert f["firms_with_catch_all"] == 1
    assert f["catch_all_share_threshold"] == 0.5
    assert f["firms_sampled"] == 0
    assert f["outlier_share"] == pytest.approx((0.1 * 100 + 0.5 * 300) / 400)  # 0.4, not the plain mean 0.3
    assert f["nearest_share"] == pytest.approx((0.05 * 100 + 0.2 * 300) / 400)
    assert f["unassigned_share"] == pytest.approx((0.05 * 100 + 0.3 * 300) / 400)
    assert f["mean_coherence"] == 0.2  # only firms with a value
    assert f["mean_diversity"] == 0.7

    t = quality["themes"]
    assert t == {"themes": 3, "topics": 10, "largest_theme_share": 0.5,
                 "theme_sizes": {"min": 1, "median": 2.0, "max": 5},
                 "linked_by_cluster": 6, "unlinked": 4}
    json.dumps(quality, allow_nan=False)


def test_run_quality_counts_sentences_attached_to_a_theme_and_in_none():
    quality = run_quality([], [4], 4, 4, sentences_by_theme={"sentences": 200, "topic": 180, "nearest": 15})
    assert quality["themes"]["sentences_attached_share"] == 0.075
    assert quality["themes"]["sentences_in_no_theme_share"] == 0.025  # 5 of 200
    lines = "\n".join(format_quality(quality))
    assert "sentences in no theme: 2.5% (7.5% in no topic attached to their nearest theme)" in lines
    # Without the counts (or with no sentence) the figures are absent, not invented.
    for counts in (None, {"sentences": 0, "topic": 0, "nearest": 0}):
        assert "sentences_in_no_theme_share" not in run_quality([], [4], 4, 4, sentences_by_theme=counts)["themes"]


def test_run_quality_worst_firms_highest_first_and_at_most_ten():
    firms = [_firm(f"F{i}", 10, share) for i, share in enumerate([0.2, 0.9, 0.1, 0.7] + [0.05] * 10)]
    firms.append({"sentences": 5, "largest_topic_share": 1.0})  # no firm_id: not listed
    worst = run_quality(firms, [], 0, 0)["worst_firms"]
    assert len(worst) == 10
    assert [firm["firm_id"] for firm in worst[:4]] == ["F1", "F3", "F0", "F2"]
    assert worst[0] == {"firm_id": "F1", "largest_topic_share": 0.9, "unassigned_share": 0.0, "topics": 3}


def test_run_quality_empty_run():
    quality = run_quality([], [], 0, 0)
    assert quality["firms"]["firms"] == 0
    assert quality["firms"]["firms_with_catch_all"] == 0
    for key in ("mean_topics", "mean_largest_topic_share", "outlier_share", "nearest_share",
                "unassigned_share", "mean_coherence", "mean_diversity"):
        assert quality["firms"][key] is None
    assert quality["themes"]["largest_theme_share"] is None
    assert quality["themes"]["theme_sizes"] is None
    assert quality["worst_firms"] == []
    json.dumps(quality, allow_nan=False)


def test_run_quality_firms_without_sentences_do_not_divide_by_zero():
    quality = run_quality([_firm("A", 0, 0.0, topics=0)], [3], 3, 0)
    assert quality["firms"]["outlier_share"] is None
    assert quality["themes"]["largest_theme_share"] is None  # no topics


def test_run_quality_from_firm_quality_end_to_end():
    docs = ["revenue growth"] * 4
    firm = firm_quality([0, 0, 0, -1], [0, 0, 0, 0], [["revenue", "growth"]], docs)
    quality = run_quality([{**firm, "firm_id": 7}], [1], 1, 1)
    assert quality["firms"]["outlier_share"] == 0.25
    assert quality["firms"]["nearest_share"] == 0.25
    assert quality["firms"]["firms_with_catch_all"] == 1
    assert quality["worst_firms"][0]["firm_id"] == 7


# --- label_scores ----------------------------------------------------------------------

def test_label_scores_perfect_clustering():
    truth = ["sport", "sport", "tech", "tech", "politics"]
    scores = label_scores([0, 0, 1, 1, 2], truth)
    for key in ("nmi", "ari", "purity", "inverse_purity", "harmonic_purity"):
        assert scores[key] == 1.0
    assert (scores["n_clusters"], scores["n_classes"], scores["n"]) == (3, 3, 5)


def test_label_scores_permuted_perfect_clustering():
    scores = label_scores([2, 2, 0, 0, 1, 1], [0, 0, 1, 1, 2, 2])
    assert scores["nmi"] == scores["ari"] == scores["harmonic_purity"] == 1.0


def test_label_scores_one_big_cluster_of_two_equal_classes():
    scores = label_scores([0, 0, 0, 0], ["a", "a", "b", "b"])
    assert scores["purity"] == 0.5
    assert scores["inverse_purity"] == 1.0
    assert scores["harmonic_purity"] == round(2 / 3, 4)
    assert scores["ari"] == 0.0


def test_label_scores_hand_computed_purity():
    # cluster 0: a a b   -> best class a: 2
    # cluster 1: b b c   -> best class b: 2
    # cluster 2: c       -> best class c: 1       purity = 5/7
    # class a: in cluster 0 (2)           -> 2
    # class b: cluster 0 (1), cluster 1 (2) -> 2
    # class c: cluster 1 (1), cluster 2 (1) -> 1  inverse purity = 5/7
    predicted = [0, 0, 0, 1, 1, 1, 2]
    truth = ["a", "a", "b", "b", "b", "c", "c"]
    scores = label_scores(predicted, truth)
    assert scores["purity"] == round(5 / 7, 4)
    assert scores["inverse_purity"] == round(5 / 7, 4)
    assert scores["harmonic_purity"] == round(5 / 7, 4)


def test_label_scores_purity_and_inverse_purity_differ():
    # clusters {a}, {a}, {b, b}: purity 1.0; class a split in two -> 1, b -> 2: inverse 3/4
    scores = label_scores([0, 1, 2, 2], ["a", "a", "b", "b"])
    assert scores["purity"] == 1.0
    assert scores["inverse_purity"] == 0.75
    assert scores["harmonic_purity"] == round(2 * 1.0 * 0.75 / 1.75, 4)


def test_label_scores_unassigned_is_its_own_cluster_and_mixed_types_work():
    # None and -1 are two more clusters; each holds one item of one class.
    scores = label_scores(["x", "x", None, -1], ["a", "a", "b", "b"])
    assert scores["n_clusters"] == 3
    assert scores["purity"] == 1.0
    assert scores["inverse_purity"] == 0.75
    json.dumps(scores, allow_nan=False)


def test_run_quality_counts_the_firms_clustered_on_a_sample():
    firms = [_firm("A", 900, 0.3) | {"sample": 300}, _firm("B", 100, 0.3), _firm("C", 700, 0.4) | {"sample": 300}]
    assert run_quality(firms, theme_sizes=[2], linked_by_cluster=2, n_topics=2)["firms"]["firms_sampled"] == 2


def test_label_scores_rejects_different_lengths_and_handles_empty():
    with pytest.raises(ValueError):
        label_scores([0, 1], [0])
    scores = label_scores([], [])
    assert scores["n"] == 0 and scores["nmi"] is None and scores["harmonic_purity"] is None


# --- format_quality --------------------------------------------------------------------

def test_format_quality_contains_the_key_figures():
    quality = {
        "firms": {"firms": 12, "mean_topics": 6.25, "mean_largest_topic_share": 0.28, "firms_with_catch_all": 1,
                  "catch_all_share_threshold": 0.5, "outlier_share": 0.12, "nearest_share": 0.039,
                  "unassigned_share": 0.081, "mean_coherence": 0.1234, "mean_diversity": 0.8321},
        "themes": {"themes": 9, "topics": 53, "largest_theme_share": 0.2264,
                   "theme_sizes": {"min": 1, "median": 5.0, "max": 12},
                   "linked_by_cluster": 50, "unlinked": 3},
        "worst_firms": [{"firm_id": "ACME", "largest_topic_share": 0.62, "unassigned_share": 0.1, "topics": 3},
                        {"firm_id": "BETA", "largest_topic_share": 0.55, "unassigned_share": 0.0, "topics": 4}],
    }
    text = "\n".join(format_quality(quality))
    assert "12 firms" in text and "6.2 topics a firm" in text and "0.28" in text
    assert "1 firm with a catch-all topic (> 50%)" in text
    assert "8.1% unassigned" in text and "12.0% outliers" in text and "3.9% attached by nearness" in text
    assert "coherence (NPMI): 0.12" in text and "diversity: 0.83" in text
    assert "themes: 9, largest 23% of 53 topics" in text
    assert "linked 50 by cluster, 3 unlinked" in text
    assert "ACME (0.62), BETA (0.55)" in text
    assert all(line.startswith("  ") for line in format_quality(quality))


def test_format_quality_says_how_many_firms_were_clustered_on_a_sample():
    firms = {"firms": 3, "mean_topics": 5.0, "firms_with_catch_all": 0, "catch_all_share_threshold": 0.5}
    assert "clustered on a sample" not in "\n".join(format_quality({"firms": firms | {"firms_sampled": 0}}))
    assert "clustered on a sample" not in "\n".join(format_quality({"firms": firms}))  # recorded before the count
    assert ", 1 firm clustered on a sample" in format_quality({"firms": firms | {"firms_sampled": 1}})[0]
    assert ", 2 firms clustered on a sample" in format_quality({"firms": firms | {"firms_sampled": 2}})[0]


def test_format_quality_handles_none_and_empty():
    assert format_quality(None) == []
    assert format_quality({}) == []
    lines = format_quality(run_quality([], [], 0, 0))
    text = "\n".join(lines)
    assert "0 firms" in text and "n/a" in text
    assert "coherence (NPMI): n/a, diversity: n/a" in text
    assert "firms to look at" not in text
