"""What topic and theme keywords are made of: the words counted, and how they are weighed.

BERTopic gives a cluster its keywords by c-TF-IDF: words frequent in the cluster and rare
in the others. Two kinds of words win that way without saying what a cluster is about:

* **Who speaks.** A firm's own name (and its ticker) is in many of its sentences and in
  no other firm's, so across themes c-TF-IDF rewards it ("ameren" in a theme of utility
  rates), and within a firm it crowds its topics' keywords. The words of the run's firm
  names and ids are therefore left out, as are, across firms, words only one firm uses
  (its products, its people): a theme is about what firms say, not who says it. These
  lists are made from the names and texts of the run, never kept by hand.
* **What everyone says.** "million / quarter / year" is every earnings call. BERTopic's
  ``ClassTfidfTransformer(reduce_frequent_words=True)`` takes the square root of a word's
  frequency in a cluster, so a word frequent in every cluster weighs less against one
  frequent in a few.

Keywords may be two-word phrases (``ngram_range=(1, 2)``), so "supply chain" stays whole.
The choices are run settings (``RunSettings.keyword_ngrams``, ``reduce_frequent_words``,
``leave_out_firm_words``), measured in docs/quality.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from app.settings import RunSettings

TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern, the vectorizer's


@dataclass(frozen=True)
class KeywordModel:
    """How one clustering's keywords are made: phrase length, frequent-word weighting and
    the words left out besides English stop words."""

    ngrams: int = 1
    reduce_frequent_words: bool = False
    leave_out: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, settings: RunSettings, leave_out: Iterable[str] = ()) -> "KeywordModel":
        """The run's keyword model; ``leave_out`` is only used when the run leaves firm
        words out (``settings.leave_out_firm_words``)."""
        return cls(ngrams=settings.keyword_ngrams, reduce_frequent_words=settings.reduce_frequent_words,
                   leave_out=frozenset(leave_out) if settings.leave_out_firm_words else frozenset())

    def vectorizer(self) -> CountVectorizer:
        """The CountVectorizer BERTopic counts words with."""
        return CountVectorizer(stop_words=sorted(ENGLISH_STOP_WORDS | self.leave_out), ngram_range=(1, self.ngrams))

    def ctfidf(self):
        """The c-TF-IDF model BERTopic weighs the counts with."""
        from bertopic.vectorizers import ClassTfidfTransformer

        return ClassTfidfTransformer(reduce_frequent_words=self.reduce_frequent_words)

    def analyzer(self) -> Callable[[str], list[str]]:
        """Text to the terms the keywords are chosen from (for counting them in sentences)."""
        return self.vectorizer().build_analyzer()


def firm_words(names: Iterable[str | None]) -> set[str]:
    """The words of firm names and ids: each lower-cased token (as the vectorizer splits
    text) that is not an English stop word, and its plural ("amg", "amgs").

    Takes names and ids ("Ameren Corporation", "AEE"); returns the set of words."""
    words: set[str] = set()
    for name in names:
        for token in TOKEN.findall((name or "").lower()):
            if token not in ENGLISH_STOP_WORDS:
                words |= {token, token + "s"}
    return words


def single_firm_words(texts: list[str], firms: list[str], analyzer: Callable[[str], list[str]]) -> set[str]:
    """The terms of ``texts`` (one a topic) that the topics of only one firm use.

    Takes the texts, each one's firm, and the analyzer that splits them into terms;
    returns those terms. Used for theme keywords, which should be words several firms say."""
    first_firm: dict[str, str] = {}
    shared: set[str] = set()
    for text, firm in zip(texts, firms):
        for term in set(analyzer(text)):
            if first_firm.setdefault(term, firm) != firm:
                shared.add(term)
    return set(first_firm) - shared
