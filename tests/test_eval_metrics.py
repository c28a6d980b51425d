"""Evaluation statistics, checked against values worked out by hand."""

import math

import pytest

from cluster.output.eval_metrics import (
    aggregate_eval,
    budget_curve,
    group_stats,
    maj_at_k_correct,
    majority_vote,
    pass_at_k,
    reflection_rate,
    response_stats,
)
from cluster.recipe.schema import RunConfig

WORDS = RunConfig().reflection_words  # the recipe's default list


# -- pass@k ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 0.4),  # c/n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (5, 2, 4, 1.0),  # n - c < k: every draw of 4 holds a correct one
        (5, 0, 3, 0.0),
        (5, 5, 1, 1.0),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (1, 1, 1, 1.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows a float; the product form must still give 1 - C(990,10)/C(1000,10).
    expected = 1 - math.comb(990, 10) / math.comb(1000, 10)
    assert pass_at_k(1000, 10, 10) == pytest.approx(expected, rel=1e-12)
    assert 0.0 <= pass_at_k(1000, 3, 500) <= 1.0


@pytest.mark.parametrize("n, c, k", [(3, 1, 4), (3, 1, 0), (3, 4, 1), (3, -1, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# -- majority vote -------------------------------------------------------------------------

def test_majority_vote_picks_most_common_normalised_answer():
    assert majority_vote(["4", " 5 ", "5", "4 ", "5"]) == "5"
    assert majority_vote(["x  +  1", "x + 1\n", "y"]) == "x + 1"


def test_majority_vote_tie_goes_to_first_seen():
    assert majority_vote(["7", "3", "3", "7"]) == "7"
    assert majority_vote(["3", "7", "7", "3"]) == "3"


def test_majority_vote_ignores_missing_answers():
    assert majority_vote([None, None, "2", None]) == "2"
    assert majority_vote([None, "", "   "]) is None
    assert majority_vote([]) is None


def test_maj_at_k_reads_correctness_of_winning_answer():
    answers = ["3", "5", "5", None]
    correct = [True, False, False, False]
    assert maj_at_k_correct(answers, correct, k=1) is True  # only "3"
    assert maj_at_k_correct(answers, correct, k=2) is True  # tie 3/5, "3" first
    assert maj_at_k_correct(answers, correct, k=3) is False  # "5" wins 2-1
    assert maj_at_k_correct([None, None], [False, False]) is False


def test_maj_at_k_with_reference_matcher():
    # The matcher grades the winner itself (here numeric equality, so "5.0" matches "5").
    assert maj_at_k_correct(["5.0", "5.0", "4"], [False, False, False], reference_match=lambda a: float(a) == 5)
    assert not maj_at_k_correct(["4", "4"], [True, True], reference_match=lambda a: a == "5")


def test_maj_at_k_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        maj_at_k_correct(["1", "2"], [True])


# -- aggregate_eval and budget curve --------------------------------------------------------

def test_aggregate_eval_hand_values():
    per_prompt = [
        # 4 samples, 2 correct; answers 1,1,2,2 -> maj@4 is "1" (first of the tie) -> correct
        {"greedy_correct": True, "samples_correct": [True, True, False, False], "sample_answers": ["1", "1", "2", "2"]},
        # 4 samples, 0 correct
        {"greedy_correct": False, "samples_correct": [False] * 4, "sample_answers": ["9", None, "9", "8"]},
    ]
    out = aggregate_eval(per_prompt, ks=(1, 2, 4))
    assert out["eval/num_prompts"] == 2
    assert out["eval/accuracy"] == pytest.approx(0.5)
    assert out["eval/pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["eval/pass@2"] == pytest.approx((1 - 1 / 6 + 0.0) / 2)  # 1 - C(2,2)/C(4,2)
    assert out["eval/pass@4"] == pytest.approx(0.5)
    assert out["eval/maj@1"] == pytest.approx(0.5)
    assert out["eval/maj@4"] == pytest.approx(0.5)


def test_aggregate_eval_leaves_out_what_it_cannot_compute():
    out = aggregate_eval([{"greedy_correct": True, "samples_correct": [False, True]}], ks=(2,), prefix="")
    assert out == {"num_prompts": 1, "accuracy": 1.0, "pass@2": 1.0}  # no answers: no maj@k
    with pytest.raises(ValueError):
        aggregate_eval([{"greedy_correct": True, "samples_correct": [True]}], ks=(2,))
    with pytest.raises(ValueError):
        aggregate_eval([])


def test_budget_curve():
    out = budget_curve({256: [True, True, False, True], 64: [False, True], 128: []})
    assert out == {"eval/acc@budget=64": 0.5, "eval/acc@budget=256": 0.75}
    assert list(out) == ["eval/acc@budget=64", "eval/acc@budget=256"]  # ascending budget


# -- training-time signals ------------------------------------------------------------------

def test_reflection_rate_whole_words_and_phrases():
    texts = [
        "Wait, that is wrong.",  # counts
        "I am waiting for the answer.",  # "waiting" does not
        "The result was long awaited.",  # "awaited" does not
        "Let me\n  CHECK this again",  # phrase across whitespace, any case
        "He waits.",  # inflected forms are not guessed
        "so 3+4=7. recheck: ok",  # counts
        "verifying is not verify-ing",  # "verify" before "-" is a whole word: counts
        "letme check",  # not the phrase
        "We await it.",  # "wait" inside "await" does not
        "unverify",  # nor inside a longer word at its end
    ]
    assert reflection_rate(texts, WORDS) == pytest.approx(4 / 10)


def test_reflection_rate_edges():
    assert reflection_rate([], WORDS) == 0.0
    assert reflection_rate(["wait"], ()) == 0.0
    assert reflection_rate(["hmm, ok", "HMM"], ["hmm"]) == 1.0
    assert reflection_rate(["a.b"], ["a.b"]) == 1.0  # regex characters in a word are literal
    assert reflection_rate(["axb"], ["a.b"]) == 0.0


def test_response_stats():
    out = response_stats([10, 20, 30, 40], 40, ["stop", "length", "stop", "length"])
    assert out == {"response_length_mean": 25.0, "response_length_max": 40, "truncated_fraction": 0.5}
    # Without finish reasons, using the whole budget is truncation.
    assert response_stats([10, 40, 40, 5], 40)["truncated_fraction"] == 0.5
    assert response_stats([], 40)["truncated_fraction"] == 0.0
    with pytest.raises(ValueError):
        response_stats([1, 2], 4, ["stop"])


def test_group_stats():
    out = group_stats([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 1.0]])
    flat = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0.5, 0.5, 1]
    mean = sum(flat) / 12
    assert out["reward_mean"] == pytest.approx(mean)
    assert out["reward_std"] == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in flat) / 12))
    assert out["zero_adv_group_fraction"] == pytest.approx(0.5)
    assert group_stats([[2.0]]) == {"reward_mean": 2.0, "reward_std": 0.0, "zero_adv_group_fraction": 1.0}
