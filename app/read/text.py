"""Text shared by the read commands: a value clipped to a width, and the quality
figures of a run (``app.quality.run_quality``'s dict) as readable lines.

Kept apart from ``app.quality``, which computes the figures with scikit-learn: a command
that only prints them starts without importing it."""

from __future__ import annotations


def clip(text: str, width: int) -> str:
    """``text`` on one line (runs of white space folded to one space), cut to ``width``
    characters with an ellipsis when longer."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_quality(quality: dict | None) -> list[str]:
    """A few readable lines summarising a ``run_quality`` dict (for ``firmtopics status``).

    Takes the dict (or ``None``); returns the lines, indented by two spaces, with "n/a"
    for any figure that is missing; ``[]`` when there is nothing to report.
    """
    if not quality:
        return []
    firms = quality.get("firms") or {}
    themes = quality.get("themes") or {}
    worst = quality.get("worst_firms") or []
    lines = []

    if firms:
        n_firms = firms.get("firms", 0)
        catch_all = firms.get("firms_with_catch_all", 0)
        threshold = firms.get("catch_all_share_threshold")
        sampled = firms.get("firms_sampled") or 0
        lines.append(
            f"  quality: {n_firms} {_plural(n_firms, 'firm')}, {_num(firms.get('mean_topics'), 1)} topics a firm, "
            f"largest topic {_num(firms.get('mean_largest_topic_share'), 2)} of a firm's sentences (mean), "
            f"{catch_all} {_plural(catch_all, 'firm')} with a catch-all topic (> {_pct(threshold, 0)})"
            + (f", {sampled} {_plural(sampled, 'firm')} clustered on a sample" if sampled else "")
        )
        lines.append(
            f"  sentences: {_pct(firms.get('unassigned_share'))} unassigned "
            f"({_pct(firms.get('outlier_share'))} outliers, {_pct(firms.get('nearest_share'))} attached by nearness)"
        )
        lines.append(
            f"  coherence (NPMI): {_num(firms.get('mean_coherence'), 2)}, "
            f"diversity: {_num(firms.get('mean_diversity'), 2)}"
        )
    if themes:
        lines.append(
            f"  themes: {themes.get('themes', 0)}, largest {_pct(themes.get('largest_theme_share'), 0)} "
            f"of {themes.get('topics', 0)} topics; linked {themes.get('linked_by_cluster', 0)} by cluster, "
            f"{themes.get('unlinked', 0)} unlinked"
        )
        if themes.get("sentences_in_no_theme_share") is not None:
            lines.append(
                f"  sentences in no theme: {_pct(themes.get('sentences_in_no_theme_share'))} "
                f"({_pct(themes.get('sentences_attached_share'))} in no topic attached to their nearest theme)"
            )
    if worst:
        shown = ", ".join(f"{firm.get('firm_id')} ({_num(firm.get('largest_topic_share'), 2)})" for firm in worst[:5])
        lines.append(f"  firms to look at: {shown}")
    return lines


def _num(value, decimals: int) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}"


def _pct(value, decimals: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{decimals}f}%"


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"
