"""The offline namer: names from keywords, deterministic, never empty."""

from app.naming import Label, MemberTopic, OfflineNamer, ThemeToName, TopicToName, distinct_names, keyword_name


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


def test_keyword_name_skips_words_a_phrase_before_said():
    assert keyword_name(["supply chain", "supply", "chain", "freight", "ports"]) == "supply chain / freight / ports"


async def test_long_example_sentences_are_shortened():
    label = await OfflineNamer().name_topic(topic(["x"], sentences=("word " * 200,)))
    assert label.summary.endswith('..."')
    assert len(label.summary) < 300


# --- names a reader can tell apart ----------------------------------------------------


def keyword_label(keywords):
    return Label(keyword_name(keywords), "s", "keywords")


def test_themes_whose_keywords_collide_take_the_next_distinguishing_keyword():
    keywords = [["musk", "elon", "twitter", "deal", "board"], ["musk", "elon", "twitter", "tesla", "cars"],
                ["freight", "ports", "costs"]]
    names = [label.name for label in distinct_names([keyword_label(k) for k in keywords], keywords)]
    assert names == ["musk / elon / twitter / deal", "musk / elon / twitter / tesla", "freight / ports / costs"]


def test_a_keyword_shared_by_the_colliding_themes_does_not_distinguish_them():
    keywords = [["rates", "rate", "missouri", "energy", "storm"], ["rates", "rate", "missouri", "energy", "solar"]]
    names = [label.name for label in distinct_names([keyword_label(k) for k in keywords], keywords)]
    assert names == ["rates / rate / missouri / storm", "rates / rate / missouri / solar"]


def test_names_stay_apart_when_the_keywords_run_out_and_for_llm_names():
    keywords = [["cloud", "software"], ["cloud", "software"], ["cloud", "software", "saas"]]
    labels = [keyword_label(k) for k in keywords] + [Label("Cloud growth", "s", "llm"), Label("Cloud growth", "s", "llm")]
    keywords += [["cloud", "growth", "azure"], ["cloud", "growth", "aws"]]
    names = [label.name for label in distinct_names(labels, keywords)]
    assert len(set(names)) == len(names), names
    assert names[3:] == ["Cloud growth (azure)", "Cloud growth (aws)"]


def test_distinct_names_leave_distinct_names_alone():
    labels = [keyword_label(["a", "b", "c"]), Label("Cloud growth", "s", "llm")]
    assert distinct_names(labels, [["a", "b", "c"], ["cloud"]]) == labels


def test_themes_with_the_same_keywords_are_numbered():
    labels = distinct_names([keyword_label(["cloud", "software"])] * 2, [["cloud", "software"]] * 2)
    assert [label.name for label in labels] == ["cloud / software (1)", "cloud / software (2)"]
