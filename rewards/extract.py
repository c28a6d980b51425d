"""Pull the final answer out of a completion: `<answer>` tags, `\\boxed{}`, `#### 42`, last number.

Every function takes model-written text, so each one is linear in the text it looks at (plain
`str.find`/`rfind` or regexes without nested quantifiers) and bounds how much it looks at: a
10 MB completion costs milliseconds. Each returns the stripped answer text, or None.
"""

from __future__ import annotations

import re

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
# A final answer sits at the end of a completion; scanning only the tail bounds the work of
# the character-level scans whatever the completion's length.
BOXED_WINDOW_CHARS = 100_000
NUMBER_WINDOW_CHARS = 10_000

# `\boxed{`, `\fbox{` (spaces allowed before the brace), or a single brace.
_BRACE_TOKEN = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")
# A number: thousands-grouped (1,234,567.5), a fraction (-3/4), or plain/decimal (-12.5).
# A minus sign (ASCII or U+2212) only counts when it is not the binary minus of "5-3"
# (a letter, digit or ")" before it).
_NUMBER = re.compile(
    r"(?:(?<![\w)])[-\u2212])?"
    # Possessive groups plus "no digit next": 1,234 but not the 1,234 of 1,2345, and no
    # backtracking through a long run of groups.
    r"(?:\d{1,3}(?:,\d{3})++(?!\d)(?:\.\d+)?"
    r"|\d+/\d+"
    r"|\d+(?:\.\d+)?)",
    re.ASCII,
)


def answer_tag(text: str) -> str | None:
    """Content of the last complete `<answer>…</answer>` (stripped), or None.

    An `<answer>` without its closing tag (a truncated completion) does not count: a cut-off
    answer such as "12" of an intended "123" must not be graded.
    """
    close = text.rfind(ANSWER_CLOSE)
    if close < 0:
        return None
    start = text.rfind(ANSWER_OPEN, 0, close)
    if start < 0:
        return None
    return text[start + len(ANSWER_OPEN):close].strip()


def boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{…}` / `\\fbox{…}` (stripped), or None.

    Braces are matched with one forward pass and an explicit stack (no recursion, no
    backtracking), so 100k nested braces are as cheap as 100k characters. "Last" means the
    box that starts last among those whose braces close; for `\\boxed{\\boxed{1}}` that is
    the inner one. Only the last BOXED_WINDOW_CHARS characters are scanned.
    """
    window = text[-BOXED_WINDOW_CHARS:]
    if "\\boxed" not in window and "\\fbox" not in window:
        return None
    stack: list[int] = []  # content start of an open box, or -1 for a plain brace
    best: tuple[int, int] | None = None
    for match in _BRACE_TOKEN.finditer(window):
        token = match.group()
        if token == "}":
            if not stack:
                continue  # a stray closing brace belongs to nothing
            content_start = stack.pop()
            if content_start >= 0 and (best is None or content_start > best[0]):
                best = (content_start, match.start())
        else:
            stack.append(match.end() if token != "{" else -1)
    if best is None:
        return None
    return window[best[0]:best[1]].strip()


def gsm8k_final(text: str) -> str | None:
    """The answer after the last `####` marker (GSM8K style), to the end of its line, or None."""
    marker = text.rfind("####")
    if marker < 0:
        return None
    line_end = text.find("\n", marker)
    answer = text[marker + 4:line_end if line_end >= 0 else len(text)].strip()
    return answer or None


def last_number(text: str) -> str | None:
    """The last number in the text's last NUMBER_WINDOW_CHARS characters, as written, or None.

    Handles negatives (-3; a U+2212 minus comes back as "-"), decimals (2.5), thousands
    separators (1,234) and fractions (3/4).
    A comma list such as "1,2,3" is three numbers, not 123.
    """
    window = text[-NUMBER_WINDOW_CHARS:]
    found = None
    for found in _NUMBER.finditer(window):
        pass
    if found is None:
        return None
    cut = len(text) > len(window) and text[-len(window) - 1] in "0123456789,./-"
    if found.start() == 0 and cut:
        # The window cut a longer number in half; its tail alone is not that number.
        return None
    return found.group().replace("\u2212", "-")


def extract_final_answer(text: str, *, fallback_last_number: bool = True) -> str | None:
    """The completion's final answer text, or None.

    Order: the last `<answer>` block (a `\\boxed{}` inside it wins over the rest of its text),
    then the last `\\boxed{}`, then `#### …`, then (if `fallback_last_number`) the last
    number. A present answer tag is authoritative: an empty one gives None rather than a
    number from the reasoning before it.
    """
    if not isinstance(text, str):
        return None
    tag = answer_tag(text)
    if tag is not None:
        return boxed(tag) or tag or None
    for extractor in (boxed, gsm8k_final):
        found = extractor(text)
        if found:
            return found
    if fallback_last_number:
        return last_number(text)
    return None
