"""Keywords say what is said, not who says it: the words of firm names and ids, and at
theme level the words only one firm uses, are no keyword; frequent words weigh less."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from app.backend import CPU
from app.clustering import cluster_firm, theme_keywords
from app.keywords import KeywordModel, firm_words, single_firm_words
from app.settings import RunSettings
from app.themes import theme_keyword_model
from test_topic_quality import generated_firm


def test_firm_words_are_the_tokens_of_names_and_ids_and_their_plurals():
    words = firm_words(["Ameren Corporation", "AEE", None, "The AES Corporation"])
    assert {"ameren", "amerens", "corporation", "aee", "aes"} <= words
    assert "the" not in words  # an English stop word is left out anyway


def test_single_firm_words_are_those_only_one_firms_topics_use():
    texts = ["rates storm cardiomems", "rates solar", "rates storm libre", "libre users"]
    analyzer = KeywordModel().analyzer()
    assert single_firm_words(texts, ["ABT", "AEE", "DXC", "DXC"], analyzer) == {"cardiomems", "solar", "libre",
                                                                                  "users"}


@pytest.fixture(scope="module")
def named_firm(embedder):
    """A firm whose name is said in every sentence about one of its subjects."""
    texts, subjects = generated_firm({"supply chain": 60, "cloud and ai": 60, "emissions": 60})
    texts = [t[:-1] + " at Contoso." if s == "supply chain" else t for t, s in zip(texts, subjects)]
    return texts, embedder.encode(texts)


def all_keywords(clustering) -> set[str]:
    return {word for cluster in clustering.clusters for word in cluster.keywords}


@pytest.mark.results
def test_a_firms_name_is_no_keyword_of_its_topics(named_firm):
    texts, embeddings = named_firm
    names = ("CTSO", "Contoso Pharmaceuticals")
    kept = cluster_firm(texts, embeddings, dataclasses.replace(RunSettings(), leave_out_firm_words=False), CPU,
                        names=names)
    assert "contoso" in all_keywords(kept)  # the name would be a keyword
    left_out = cluster_firm(texts, embeddings, RunSettings(), CPU, names=names)
    assert left_out.clusters and not any("contoso" in word for word in all_keywords(left_out))


def theme_rows(firms):
    return [{"firm_id": firm, "firm_name": name} for firm, name in firms]


def test_theme_keywords_leave_out_firm_names_and_words_of_one_firm():
    firms = [("AEE", "Ameren Corporation"), ("AEE", "Ameren Corporation"), ("XEL", "Xcel Energy"),
             ("ABT", "Abbott Laboratories"), ("AFL", "Aflac")]
    docs = ["rates storm ameren missouri", "rates storm ameren customers", "rates storm customers xcel",
            "dividend buyback shareholders cardiomems", "dividend buyback shareholders"]
    vectors = np.eye(5, dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    plain = theme_keywords(docs, vectors, labels, top_n=4)
    assert "ameren" in plain[0] and "cardiomems" in plain[1]
    model, drop = theme_keyword_model(theme_rows(firms), docs, dataclasses.replace(RunSettings(), keyword_ngrams=1))
    words = theme_keywords(docs, vectors, labels, 4, model, drop)
    assert {"rates", "storm", "customers"} <= set(words[0]) and {"dividend", "buyback"} <= set(words[1])
    said_by_one = {"ameren", "xcel", "missouri", "cardiomems"}
    assert not said_by_one & (set(words[0]) | set(words[1])), words


def test_phrases_stay_whole_and_frequent_words_weigh_less():
    docs = ["supply chain million quarter", "supply chain freight million quarter million",
            "dividend million quarter million", "dividend buyback million quarter"]
    vectors, labels = np.eye(4, dtype=np.float32), np.array([0, 0, 1, 1])
    assert theme_keywords(docs, vectors, labels, 3, KeywordModel(ngrams=2))[0][0] == "supply chain"
    plain = theme_keywords(docs, vectors, labels, 6)
    reduced = theme_keywords(docs, vectors, labels, 6, KeywordModel(reduce_frequent_words=True))
    # "million", said in every document, falls behind the words of the theme
    assert plain[1][:2] == ["dividend", "million"] and reduced[1][:2] == ["dividend", "buyback"]
