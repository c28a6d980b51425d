"""The `"format"` and `"format_strict"` rewards: R1-Zero's `<think>…</think><answer>…</answer>`.

The r1_zero prompt template ends with `Assistant: <think>`, so a completion normally starts
*inside* the think block and has no opening `<think>` of its own. Both variants accept that:
a completion without `<think>` is read as if it began with one. A completion that does write
`<think>` must write it once, before `</think>`.

Only `str.count`/`str.find` are used: linear in the completion, no regex to backtrack.
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def format_reward(completion: str, **fields: object) -> float:
    """Lenient R1-Zero format: 1.0 or 0.0.

    Passes when the completion has exactly one `</think>`, then only whitespace, then exactly
    one `<answer>…</answer>`, then only whitespace to the end; at most one `<think>`, and it
    comes before `</think>` (text before it is allowed). The text inside the blocks is not
    checked (it may be empty). Row fields are ignored.
    """
    if not isinstance(completion, str):
        return 0.0
    counts = {tag: completion.count(tag) for tag in TAGS}
    if counts[THINK_OPEN] > 1 or any(counts[tag] != 1 for tag in TAGS[1:]):
        return 0.0
    think_close = completion.find(THINK_CLOSE)
    if counts[THINK_OPEN] == 1 and completion.find(THINK_OPEN) > think_close:
        return 0.0
    answer_open = completion.find(ANSWER_OPEN)
    answer_close = completion.find(ANSWER_CLOSE)
    if not think_close < answer_open < answer_close:
        return 0.0
    between = completion[think_close + len(THINK_CLOSE):answer_open]
    after = completion[answer_close + len(ANSWER_CLOSE):]
    return 1.0 if not between.strip() and not after.strip() else 0.0


def format_strict_reward(completion: str, **fields: object) -> float:
    """Strict R1-Zero format (DeepSeek's newline layout): 1.0 or 0.0.

    The completion, with `<think>` put in front when it does not start with one (see the
    module docstring), must be exactly

        <think>\\n{reasoning}\\n</think>\\n<answer>\\n{answer}\\n</answer>

    plus optional trailing whitespace: nothing before `<think>`, each tag once, and
    non-blank reasoning and answer. Row fields are ignored.
    """
    if not isinstance(completion, str):
        return 0.0
    text = completion if completion.startswith(THINK_OPEN) else THINK_OPEN + completion
    if any(text.count(tag) != 1 for tag in TAGS):
        return 0.0
    middle = "\n" + THINK_CLOSE + "\n" + ANSWER_OPEN + "\n"
    ending = "\n" + ANSWER_CLOSE
    if not text.startswith(THINK_OPEN + "\n"):
        return 0.0
    split = text.find(middle)
    end = text.rfind(ending)
    if split < 0 or end < split + len(middle) or text[end + len(ending):].strip():
        return 0.0
    reasoning = text[len(THINK_OPEN) + 1:split]
    answer = text[split + len(middle):end]
    return 1.0 if reasoning.strip() and answer.strip() else 0.0
