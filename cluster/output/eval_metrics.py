"""Evaluation and rollout statistics: pure functions of plain Python values.

Nothing here touches a model, a file or a clock; the loop gathers texts, lengths, answers and
correctness flags and these functions turn them into the numbers written to `metrics.jsonl`.
Key names returned here are the ones `cluster.output.plots.plot_run` and `cluster.output.run_log.summary_line` read.

Inference-time scaling metrics (for a prompt with n samples, c of them correct):

- pass@k: the chance that at least one of k samples drawn without replacement from the n is
  correct, the unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, "Codex").
- maj@k: whether the most common answer among the first k samples is correct (the samples are
  i.i.d., so the first k are as good a draw as any k).
- acc@budget=B: greedy accuracy when generation is capped at B new tokens; with budget forcing
  (eval.force_answer), when the thinking is capped at B tokens and the model is then made to answer.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

# ---------------------------------------------------------------------------------------
# Training-time signals: reflection words, response lengths, reward groups.


@lru_cache(maxsize=32)
def _reflection_pattern(words: tuple[str, ...]) -> re.Pattern | None:
    """One case-insensitive regex matching any of `words` as a whole word or phrase.

    Inside a phrase any run of whitespace matches ("let  me\\ncheck"). The ends use
    lookarounds rather than \\b so a phrase that starts or ends with punctuation still works.
    """
    alternatives = [r"\s+".join(map(re.escape, w.split())) for w in words if w.strip()]
    if not alternatives:
        return None
    # Longest first so "let me check" is tried before a hypothetical "let".
    alternatives.sort(key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def reflection_rate(texts: Sequence[str], words: Sequence[str]) -> float:
    """Share of `texts` containing at least one reflection word or phrase (the recipe's
    `run.reflection_words`).

    Matching is case-insensitive and on whole words: "Wait," and "WAIT" count, "waiting",
    "awaited" and "verifying" do not, and neither does "waits" — inflected forms are not
    guessed; put them in `words` if they should count. Returns 0.0 for no texts.
    """
    if not texts:
        return 0.0
    pattern = _reflection_pattern(tuple(words))
    if pattern is None:
        return 0.0
    return sum(1 for t in texts if pattern.search(t)) / len(texts)


def response_stats(
    lengths: Sequence[int],
    max_new_tokens: int,
    finish_reasons: Sequence[str] | None = None,
) -> dict[str, float]:
    """Completion length statistics over one step's samples.

    lengths: completion token counts. finish_reasons: the engine's reason per sample; a
    sample is truncated when it is "length". Without reasons, a sample is truncated when it
    used the whole budget (length >= max_new_tokens) — the same thing for an engine that
    does not report reasons. No samples gives zeros.
    """
    if finish_reasons is not None and len(finish_reasons) != len(lengths):
        raise ValueError(f"{len(finish_reasons)} finish reasons for {len(lengths)} lengths")
    if not lengths:
        return {"response_length_mean": 0.0, "response_length_max": 0, "truncated_fraction": 0.0}
    if finish_reasons is None:
        truncated = sum(1 for n in lengths if n >= max_new_tokens)
    else:
        truncated = sum(1 for r in finish_reasons if r == "length")
    return {
        "response_length_mean": sum(lengths) / len(lengths),
        "response_length_max": int(max(lengths)),
        "truncated_fraction": truncated / len(lengths),
    }


def group_stats(rewards: Sequence[Sequence[float]]) -> dict[str, float]:
    """Reward statistics over one step's groups.

    rewards: one list per group (prompt), one reward per completion. Returns the mean and
    population std over all completions, and the fraction of groups whose rewards are all
    exactly equal: those get zero advantage under every estimator, so they teach nothing
    (DAPO's dynamic sampling drops them). A group of one counts as all-equal.
    """
    flat = [float(r) for group in rewards for r in group]
    if not flat:
        return {"reward_mean": 0.0, "reward_std": 0.0, "zero_adv_group_fraction": 0.0}
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((r - mean) ** 2 for r in flat) / len(flat))
    nonempty = [g for g in rewards if len(g)]
    flat_groups = sum(1 for g in nonempty if all(r == g[0] for r in g))
    return {
        "reward_mean": mean,
        "reward_std": std,
        "zero_adv_group_fraction": flat_groups / len(nonempty),
    }


def reward_failure_shares(names: Sequence[str], failures: Sequence[Mapping[str, str]]) -> dict[str, float]:
    """`reward_failures/<name>`: the share of one step's completions whose reward `name` failed.

    failures: one mapping per completion, reward name -> why it failed (absent: it scored).
    Every name gets a value, 0.0 included, so each component's curve is whole.
    """
    total = max(len(failures), 1)
    return {f"reward_failures/{name}": sum(name in f for f in failures) / total for name in names}


def reward_failure_warnings(step: int, failures: Sequence[Mapping[str, str]]) -> list[str]:
    """One line per reward that failed for more than half of a step's completions, with its
    most common reason: a reward that mostly fails makes the step's rewards meaningless."""
    reasons: dict[str, list[str]] = {}
    for failed in failures:
        for name, why in failed.items():
            reasons.setdefault(name, []).append(why)
    lines = []
    for name, whys in reasons.items():
        if 2 * len(whys) > len(failures):
            why = " ".join(Counter(whys).most_common(1)[0][0].split())[:200]  # one line, however long
            lines.append(f"[aha] warning: step {step}: reward '{name}' failed for {len(whys)} of "
                         f"{len(failures)} completions: {why}")
    return lines


def reward_time_warnings(step: int, metrics: Mapping[str, float]) -> list[str]:
    """One line when the driver spent most of a step waiting for scores (`time/score_wait`),
    naming the reward that kept the scorers busiest (`time/reward/<name>`, busy seconds summed
    over the reward workers): a slow reward, not generation, is then what sets the step's pace."""
    busy = {key.removeprefix("time/reward/"): seconds for key, seconds in metrics.items()
            if key.startswith("time/reward/")}
    step_s, wait_s = metrics.get("time/step", 0.0), metrics.get("time/score_wait", 0.0)
    if not busy or 2 * wait_s <= step_s:
        return []
    name = max(busy, key=busy.get)
    return [f"[aha] warning: step {step}: reward '{name}' took {busy[name]:.1f} s of scorer busy time in the "
            f"{step_s:.1f} s step, which waited {wait_s:.1f} s for scores: it is what the step waits for"]


# ---------------------------------------------------------------------------------------
# Inference-time scaling: pass@k, majority vote, token budget.


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k estimate from n samples of which c are correct.

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k/i): the binomials
    overflow floats for n in the hundreds, the product never leaves [0, 1].
    Raises ValueError unless 0 <= c <= n and 1 <= k <= n.
    """
    n, c = num_samples, num_correct
    if not 0 <= c <= n:
        raise ValueError(f"num_correct must be in [0, {n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, num_samples={n}], got {k}")
    if n - c < k:  # every draw of k contains a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def normalize_answer(answer: str | None) -> str | None:
    """An answer as majority voting compares it: stripped, inner whitespace collapsed to one
    space. Case is kept (in math "X" and "x" can differ). Empty or None means no answer."""
    if answer is None:
        return None
    text = " ".join(answer.split())
    return text or None


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common normalised answer; ties go to the answer that appeared first.

    None and empty answers (no answer extracted) never win; all of them gives None.
    """
    normalised = [a for a in map(normalize_answer, answers) if a is not None]
    if not normalised:
        return None
    counts = Counter(normalised)
    best = max(counts.values())
    # Counter keeps first-insertion order, so the first answer at the top count wins.
    return next(a for a, n in counts.items() if n == best)


def maj_at_k_correct(
    answers: Sequence[str | None],
    samples_correct: Sequence[bool],
    k: int | None = None,
    reference_match: Callable[[str], bool] | None = None,
) -> bool:
    """Whether the majority answer of the first k samples (all when k is None) is correct.

    With `reference_match` the winning answer is graded by it. Without it, the winner's
    correctness is read off the first sample that gave that answer — valid when correctness
    depends on the extracted answer only, as for math and arithmetic rewards; it saves the
    loop from grading answers twice. No answer at all is incorrect.
    """
    if len(answers) != len(samples_correct):
        raise ValueError(f"{len(answers)} answers for {len(samples_correct)} correctness flags")
    if k is not None and not 1 <= k <= len(answers):
        raise ValueError(f"k must be in [1, {len(answers)}], got {k}")
    answers = list(answers[:k])
    winner = majority_vote(answers)
    if winner is None:
        return False
    if reference_match is not None:
        return bool(reference_match(winner))
    first = next(i for i, a in enumerate(answers) if normalize_answer(a) == winner)
    return bool(samples_correct[first])


def aggregate_eval(
    per_prompt: Sequence[Mapping[str, object]],
    ks: Sequence[int] = (),
    *,
    prefix: str = "eval/",
) -> dict[str, float]:
    """Held-out metrics from per-prompt results.

    Each entry of `per_prompt` describes one held-out prompt:

    - "greedy_correct": bool — the greedy (temperature 0) completion was correct.
    - "samples_correct": list[bool] — one flag per sampled completion, in sampling order;
      needed for pass@k and maj@k, with at least max(ks) samples.
    - "sample_answers": list[str | None] — the answer extracted from each sample (None when
      none was found), same order and length; needed for maj@k.
    - "reference_match": optional callable str -> bool grading an answer (see
      `maj_at_k_correct`).

    Returns `{prefix}accuracy` (mean greedy correctness), `{prefix}pass@{k}` and, when every
    prompt has answers, `{prefix}maj@{k}` for each k, and `{prefix}num_prompts`. A metric
    is left out when its inputs are missing from any prompt; a prompt with fewer than k
    samples is a ValueError (a recipe asking for k above the sample count).
    """
    if not per_prompt:
        raise ValueError("aggregate_eval needs at least one prompt")
    out: dict[str, float] = {f"{prefix}num_prompts": len(per_prompt)}
    if all("greedy_correct" in p for p in per_prompt):
        out[f"{prefix}accuracy"] = _mean(bool(p["greedy_correct"]) for p in per_prompt)
    if not ks or not all("samples_correct" in p for p in per_prompt):
        return out
    with_answers = all("sample_answers" in p for p in per_prompt)
    for k in ks:
        flags = [list(p["samples_correct"]) for p in per_prompt]
        out[f"{prefix}pass@{k}"] = _mean(pass_at_k(len(f), sum(map(bool, f)), k) for f in flags)
        if with_answers:
            out[f"{prefix}maj@{k}"] = _mean(
                maj_at_k_correct(p["sample_answers"], p["samples_correct"], k, p.get("reference_match"))
                for p in per_prompt
            )
    return out


def budget_curve(results_by_budget: Mapping[int, Sequence[bool]], *, prefix: str = "eval/") -> dict[str, float]:
    """Accuracy against the max-new-token budget: `{prefix}acc@budget={B}` per budget B.

    results_by_budget maps a budget to the correctness flags of the prompts evaluated with
    that cap. A budget with no results is left out (its accuracy is undefined, not 0).
    """
    return {
        f"{prefix}acc@budget={budget}": _mean(map(bool, flags))
        for budget, flags in sorted(results_by_budget.items())
        if len(flags)
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------
# Self-verification: what a task's detector of checks and corrections found.


def check_stats(found: Sequence, correct: Sequence[bool], prefix: str = "") -> dict[str, float | None]:
    """Rates of checking and self-correction over completions, and accuracy split by checking.

    found: per completion, what the task's detector read (anything with `verified`,
    `corrected`, `checks` and `sound_checks`, e.g. cluster.inputs.pair_sum.Checks); correct:
    whether each completion's answer was right. `verify_rate` is the share that check at least
    once, `correction_rate` the share that correct themselves after a failed check,
    `sound_check_share` the share of all checks whose verdict was right, and
    `accuracy_verified` / `accuracy_unverified` the accuracy of each side (None where a side
    is empty, so a curve shows a gap rather than a made-up 0).
    """
    if len(found) != len(correct):
        raise ValueError(f"{len(found)} detector results for {len(correct)} completions")
    verified = [bool(f.verified) for f in found]
    checks = sum(f.checks for f in found)

    def accuracy(side: bool) -> float | None:
        picked = [c for c, v in zip(correct, verified) if v == side]
        return sum(picked) / len(picked) if picked else None

    total = max(len(found), 1)
    return {
        f"{prefix}verify_rate": sum(verified) / total,
        f"{prefix}correction_rate": sum(bool(f.corrected) for f in found) / total,
        f"{prefix}sound_check_share": sum(f.sound_checks for f in found) / checks if checks else None,
        f"{prefix}accuracy_verified": accuracy(True),
        f"{prefix}accuracy_unverified": accuracy(False),
    }
