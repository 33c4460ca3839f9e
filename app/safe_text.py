"""Text made safe to store and to show: no control character, terminal escape sequence,
bidirectional-override character or lone surrogate.

Such characters come from outside (an LLM's reply, a corpus) and do harm in two places:
PostgreSQL refuses NUL and lone surrogates in ``text`` and ``jsonb`` (the row, and with it
the firm or the run, fails), and a terminal obeys escape sequences and bidi overrides (a
name can clear the screen, retitle the window or show text reordered). ``clean`` removes
them from a value before it is stored; ``printable`` from a command's output before it is
printed.
"""

from __future__ import annotations

import re

# Terminal escape sequences, removed whole so that no "[31m" is left behind: CSI (7-bit
# ESC [ and 8-bit 0x9B), OSC / DCS / PM / APC strings up to their terminator (or the end),
# and any other ESC with its intermediate and final bytes.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]P^_X][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
# C0 and C1 controls and DEL (``keep`` adds back what a caller wants), the bidi controls
# (embeddings, overrides, isolates, marks) and lone surrogates.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}\ud800-\udfff]")


def _strip(text: str, keep: str) -> str:
    text = _ESCAPE_SEQUENCE.sub("", text)
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else "", text)


def clean(text: str) -> str:
    """``text`` without escape sequences, control, bidi or surrogate characters; the
    whitespace controls (tab, newlines) stay, for the caller to fold into spaces."""
    return _strip(text, "\t\n\r\x0b\x0c")


def printable(text: str) -> str:
    """``text`` fit for a terminal: as ``clean``, except that only tab and newline stay
    (a carriage return could overwrite what a line showed)."""
    return _strip(text, "\t\n")
