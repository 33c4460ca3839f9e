"""The offline namer: names from keywords, deterministic, never empty."""

from app.naming import MemberTopic, OfflineNamer, ThemeToName, TopicToName, keyword_name


def topic(keywords, sentences=("Freight costs rose.",)):
    return TopicToName("F", "Firm Inc.", 0, list(keywords), list(sentences), [1], 42)


async def test_topic_label_from_keywords():
    namer = OfflineNamer()
    label = await namer.name_topic(topic(["freight", "supplier", "costs", "ports"]))
    assert label.name == "freight / supplier / costs"
    assert label.source == "keywords"
    assert "42 sentences" in label.summary and "Freight costs rose." in label.summary
    assert namer.usage()["topics_named"] == 1


async def test_empty_keywords_still_give_a_name():
    label = await OfflineNamer().name_topic(topic([], sentences=()))
    assert label.name == "unnamed topic"
    assert label.summary


async def test_theme_label_mentions_members():
    theme = ThemeToName(3, ["cloud", "software"], [MemberTopic("A", "cloud revenue", "s")], n_topics=5, n_firms=4)
    label = await OfflineNamer().name_theme(theme)
    assert label.name == "cloud / software"
    assert "5 firm topics from 4 firms" in label.summary and "cloud revenue" in label.summary


def test_keyword_name_skips_empty_keywords():
    assert keyword_name(["a", "", "b"]) == "a / b"


async def test_long_example_sentences_are_shortened():
    label = await OfflineNamer().name_topic(topic(["x"], sentences=("word " * 200,)))
    assert label.summary.endswith('..."')
    assert len(label.summary) < 300
