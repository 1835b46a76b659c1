"""engine/metrics.py against hand computations and a brute-force ranking of every (verb, noun) pair."""

import numpy as np
import pytest

from cast_video.engine.metrics import (
    action_accuracy,
    classification_metrics,
    confusion_matrix,
    epic_submission,
    group_f1,
    harmonic_mean,
    mean_class_accuracy,
    per_class_prf,
    topk_accuracy,
)

# Six verbs and seven nouns, no ties among the best pairs. The pairs by p(verb) * p(noun), best first:
# 1 (0,0) .1400   2 (0,1) .1120   3 (1,0) .0875   4 (1,1) .0700   5 (0,2) .0640   6 (2,0) .0525   7 (2,1) .0420
VERB = np.array([0.40, 0.25, 0.15, 0.09, 0.06, 0.05])
NOUN = np.array([0.35, 0.28, 0.16, 0.09, 0.07, 0.03, 0.02])
# true (verb, noun) of five videos that all have these scores:
#   (0,2): 5th pair                       -> joint hit,  both in their top-5 -> official hit
#   (2,0): 6th pair                       -> joint miss, verb 3rd, noun 1st  -> official hit
#   (0,5): noun 5 is the 6th best noun     -> joint miss (.012)               -> official miss
#   (0,0): the best pair                  -> every rule hits, and top-1
#   (5,0): verb 5 is the 6th best verb     -> joint miss (.0175)              -> official miss
#   (0,1): the 2nd pair                   -> joint and official hit, top-1 miss
PAIRS = np.array([(0, 2), (2, 0), (0, 5), (0, 0), (5, 0), (0, 1)])


def _videos():
    n = len(PAIRS)
    return np.tile(VERB, (n, 1)), np.tile(NOUN, (n, 1)), PAIRS[:, 0], PAIRS[:, 1]


def test_action_top5_joint_and_official_by_hand():
    verb, noun, vl, nl = _videos()
    assert action_accuracy(verb, noun, vl, nl, k=1) == pytest.approx(100 * 1 / 6)  # only (0,0)
    assert action_accuracy(verb, noun, vl, nl) == pytest.approx(100 * 1 / 6)  # k=1 by default
    assert action_accuracy(verb, noun, vl, nl, k=2) == pytest.approx(100 * 2 / 6)  # and (0,1)
    assert action_accuracy(verb, noun, vl, nl, k=5) == pytest.approx(100 * 3 / 6)  # and (0,2)
    assert action_accuracy(verb, noun, vl, nl, k=5, rule="official") == pytest.approx(100 * 4 / 6)  # and (2,0)
    assert action_accuracy(verb, noun, vl, nl, k=6) == pytest.approx(100 * 4 / 6)  # (2,0) is the 6th pair
    with pytest.raises(ValueError, match="rule"):
        action_accuracy(verb, noun, vl, nl, k=5, rule="either")


def test_official_and_joint_top5_differ_on_one_video():
    """The 6th best pair: its verb and noun are each in their top five, the pair is not among the five best."""
    verb, noun = VERB[None], NOUN[None]
    assert action_accuracy(verb, noun, np.array([2]), np.array([0]), k=5) == 0.0
    assert action_accuracy(verb, noun, np.array([2]), np.array([0]), k=5, rule="official") == 100.0


def test_classification_metrics_reports_both_action_top5():
    verb, noun, vl, nl = _videos()
    m = classification_metrics({"verb": verb, "noun": noun}, {"verb": vl, "noun": nl})
    assert m["action/top1"] == pytest.approx(100 * 1 / 6)
    assert m["action/top5"] == pytest.approx(100 * 3 / 6)
    assert m["action/top5_official"] == pytest.approx(100 * 4 / 6)
    # verbs 0,2,0,0,5,0 (5 is the 6th best) and nouns 2,0,5,0,0,1 (5 is the 6th best); both argmaxes are 0
    assert m["verb/top1"] == pytest.approx(100 * 4 / 6) and m["verb/top5"] == pytest.approx(100 * 5 / 6)
    assert m["noun/top1"] == pytest.approx(100 * 3 / 6) and m["noun/top5"] == pytest.approx(100 * 5 / 6)


def _brute_force_joint_topk(v, n, vl, nl, k):
    ranked = sorted(((v[i] * n[j], i, j) for i in range(len(v)) for j in range(len(n))), reverse=True)
    return (vl, nl) in {(i, j) for _, i, j in ranked[:k]}


@pytest.mark.parametrize("k", [2, 5, 7])
def test_joint_topk_equals_a_brute_force_ranking_and_never_exceeds_official(k):
    rng = np.random.default_rng(k)
    verb, noun = rng.dirichlet(np.ones(6), 200), rng.dirichlet(np.ones(9), 200)
    vl, nl = rng.integers(0, 6, 200), rng.integers(0, 9, 200)
    expected = np.mean([_brute_force_joint_topk(*args, k) for args in zip(verb, noun, vl, nl, strict=True)]) * 100
    joint = action_accuracy(verb, noun, vl, nl, k=k)
    assert joint == pytest.approx(expected)
    assert 0 < joint < action_accuracy(verb, noun, vl, nl, k=k, rule="official")
    assert action_accuracy(verb, noun, vl, nl, k=6 * 9) == 100.0  # every pair: always a hit
    assert action_accuracy(verb, noun, vl, nl, k=100) == 100.0  # more than the pairs


def test_action_top1_per_video_and_ties_and_mismatched_lengths():
    verb = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    noun = np.array([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4]])
    # argmaxes per video (0, 1), (2, 0), (1, 0); over the whole array they would be verb 0 and noun 1
    assert action_accuracy(verb, noun, np.array([0, 2, 1]), np.array([1, 0, 0])) == 100.0
    assert action_accuracy(verb, noun, np.array([0, 2, 1]), np.array([1, 0, 1])) == pytest.approx(200 / 3)
    # three pairs tie at 1/3: the true pair is among the two best (nothing scores higher)
    tie_v, tie_n = np.full((1, 3), 1 / 3), np.array([[1.0, 0.0]])
    assert action_accuracy(tie_v, tie_n, np.array([2]), np.array([0]), k=2) == 100.0
    assert action_accuracy(tie_v, tie_n, np.array([2]), np.array([1]), k=2) == 0.0
    with pytest.raises(ValueError):
        action_accuracy(verb, noun, np.array([0, 2]), np.array([1, 0]), k=5)  # a label short: no silent zip


def test_topk_and_mean_class_accuracy_by_hand():
    scores = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.1, 0.6, 0.3]])
    labels = np.array([0, 2, 2, 1, 1])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(60.0)  # videos 0, 2, 4
    assert topk_accuracy(scores, labels, 2) == pytest.approx(100.0)
    assert topk_accuracy(scores, labels, 5) == 100.0  # more than the classes: all of them
    # recall per class: class 0 1/1, class 1 1/2, class 2 1/2; the mean over classes, not videos
    assert mean_class_accuracy(scores, labels) == pytest.approx((1 + 0.5 + 0.5) / 3 * 100)


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(np.array([1, 1, 2, 0]), np.array([0, 1, 1, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]] and cm.dtype == np.int64  # counts


def test_precision_recall_f1_and_group_f1_by_hand():
    # predictions 0, 0, 1, 1, 2, 0 for labels 0, 0, 0, 1, 1, 2
    scores = np.eye(4)[[0, 0, 1, 1, 2, 0]]
    labels = np.array([0, 0, 0, 1, 1, 2])
    prf = per_class_prf(scores, labels)
    # class 0: tp 2 of 3 predicted, 3 actual; class 1: tp 1 of 2, 2 actual; class 2: 0 of 1, 1 actual; class 3 unused
    np.testing.assert_allclose(prf["precision"], [2 / 3, 1 / 2, 0, 0])
    np.testing.assert_allclose(prf["recall"], [2 / 3, 1 / 2, 0, 0])
    np.testing.assert_allclose(prf["f1"], [2 / 3, 1 / 2, 0, 0])
    assert prf["support"].tolist() == [3, 2, 1, 0]
    groups = group_f1(scores, labels, {"ab": [0, 1], "c": [2], "empty": [3], "all": [0, 1, 2, 3]})
    assert groups["ab"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2) / 5 * 100)  # weighted by support, not a plain mean
    assert groups["c"] == 0.0
    assert "empty" not in groups  # no video of the group: no number rather than a 0
    assert groups["all"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2) / 6 * 100)


def test_f1_where_precision_and_recall_differ():
    scores = np.eye(2)[[0, 0, 0, 1]]
    labels = np.array([0, 1, 1, 1])
    prf = per_class_prf(scores, labels)
    # class 1: precision 1/1, recall 1/3 -> F1 = 2 * 1 * 1/3 / (4/3) = 0.5
    assert prf["f1"][1] == pytest.approx(0.5) and prf["precision"][0] == pytest.approx(1 / 3)


def test_harmonic_mean_by_hand():
    assert harmonic_mean([50, 100]) == pytest.approx(2 / (1 / 50 + 1 / 100))
    assert harmonic_mean([40.0, 60.0, 80.0]) == pytest.approx(3 / (1 / 40 + 1 / 60 + 1 / 80))
    assert harmonic_mean([0.0, 80.0]) == pytest.approx(0.0, abs=1e-9)  # a task at 0 % pulls it to 0, no error


def test_harmonic_mean_only_with_several_tasks():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    single = classification_metrics({"action": scores}, {"action": np.array([0, 0])})
    assert single == {"action/top1": 50.0, "action/top5": 100.0, "action/mean_class_acc": 50.0}
    two = classification_metrics({"a": scores, "b": scores}, {"a": np.array([0, 0]), "b": np.array([0, 1])},
                                 {"b": {"first": [0]}})
    assert two["harmonic_mean"] == pytest.approx(2 / (1 / 50 + 1 / 100))
    assert two["b/f1/first"] == 100.0 and "a/f1/first" not in two and "action/top1" not in two


def test_epic_submission_format():
    verb = np.array([[0.7, 0.3], [0.4, 0.6]])
    noun = np.array([[0.1234567, 0.8765433], [0.5, 0.5]])
    sub = epic_submission(["P01_1", "P01_2"], {"verb": verb, "noun": noun}, sls=(1, 2, 3))
    assert {k: sub[k] for k in ("version", "challenge", "sls_pt", "sls_tl", "sls_td")} == {
        "version": "0.2", "challenge": "action_recognition", "sls_pt": 1, "sls_tl": 2, "sls_td": 3}
    assert sub["results"]["P01_1"] == {"verb": {"0": 0.7, "1": 0.3}, "noun": {"0": 0.123457, "1": 0.876543}}
    assert sub["results"]["P01_2"]["verb"] == {"0": 0.4, "1": 0.6}
    default = epic_submission(["x"], {"verb": verb[:1], "noun": noun[:1]})
    assert (default["sls_pt"], default["sls_tl"], default["sls_td"]) == (2, 3, 3)
