"""mfdr.metrics (SPEC §5): against scikit-learn, against MMSA's code, and hand-worked cases."""

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from mfdr import metrics as M


# ---------------------------------------------------------------------- emotion (IEMOCAP)
def test_emotion_hand_worked():
    # truth:  n n n n h h a s      pred: n n h a h h a n
    y_true = [0, 0, 0, 0, 1, 1, 2, 3]
    y_pred = [0, 0, 1, 2, 1, 1, 2, 0]
    m = M.emotion_metrics(y_true, y_pred)
    assert m["wa"] == pytest.approx(5 / 8)
    # recall: n 2/4, h 2/2, a 1/1, s 0/1 -> UA = 2.5 / 4
    assert m["ua"] == pytest.approx(0.625)
    # F1: n: P 2/3 R 1/2 -> 4/7; h: P 2/3 R 1 -> 4/5; a: P 1/2 R 1 -> 2/3; s: 0
    f1 = [4 / 7, 4 / 5, 2 / 3, 0.0]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["weighted_f1"] == pytest.approx(np.dot(f1, [4, 2, 1, 1]) / 8)
    assert m["confusion"] == [[2, 1, 1, 0], [0, 2, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    assert m["labels"] == [0, 1, 2, 3]


RNG = np.random.default_rng(0)
CASES = {
    "all-classes": (RNG.integers(0, 4, 200), RNG.integers(0, 4, 200)),
    "class-never-predicted": ([0, 1, 2, 3, 3, 2, 1, 0], [0, 1, 2, 2, 2, 2, 1, 0]),
    "class-only-predicted": ([0, 0, 1, 1, 2], [0, 3, 1, 1, 2]),
    "perfect": ([2, 1, 0, 3], [2, 1, 0, 3]),
    "one-class-truth": ([1, 1, 1, 1], [1, 0, 1, 2]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_emotion_matches_sklearn(case):
    y_true, y_pred = (np.asarray(x) for x in CASES[case])
    m = M.emotion_metrics(y_true, y_pred)
    assert m["wa"] == pytest.approx(accuracy_score(y_true, y_pred))
    with warnings.catch_warnings():  # scikit-learn warns about classes only predicted, then ignores them
        warnings.simplefilter("ignore")
        ua = balanced_accuracy_score(y_true, y_pred)
    assert m["ua"] == pytest.approx(ua)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(y_true, y_pred))


@pytest.mark.parametrize("case", sorted(CASES))
def test_emotion_with_fixed_labels_matches_sklearn(case):
    """labels=range(4): the confusion matrix is 4x4 and F1 averages over all four classes."""
    y_true, y_pred = (np.asarray(x) for x in CASES[case])
    m = M.emotion_metrics(y_true, y_pred, labels=range(4))
    labels = list(range(4))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro",
                                                   zero_division=0))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="weighted",
                                                      zero_division=0))
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(y_true, y_pred, labels=labels))


def test_emotion_accepts_tensors_and_strings():
    import torch

    m = M.emotion_metrics(torch.tensor([0, 1, 1]), torch.tensor([[0], [1], [0]]))
    assert m["wa"] == pytest.approx(2 / 3)
    s = M.emotion_metrics(["sad", "happy", "sad"], ["sad", "sad", "sad"])
    assert s["labels"] == ["happy", "sad"] and s["confusion"] == [[0, 1], [0, 2]]


@pytest.mark.parametrize("bad", [([0, 1], [0]), ([[0, 1], [1, 0]], [[0, 1], [1, 0]]), ([], [])])
def test_emotion_bad_input(bad):
    with pytest.raises(ValueError, match="same length|1-D|no samples"):
        M.emotion_metrics(*bad)


# ---------------------------------------------------------------------- sentiment (MOSI / MOSEI)
def mmsa_eval_mosei_regression(y_pred, y_true):
    """MMSA's MetricsTop.__eval_mosei_regression (thuiar/MMSA, metricsTop.py), transcribed with its
    scikit-learn calls, without the final rounding to 4 digits."""
    test_preds, test_truth = np.asarray(y_pred, float), np.asarray(y_true, float)
    test_preds_a7, test_truth_a7 = np.clip(test_preds, -3., 3.), np.clip(test_truth, -3., 3.)
    test_preds_a5, test_truth_a5 = np.clip(test_preds, -2., 2.), np.clip(test_truth, -2., 2.)
    mae = np.mean(np.absolute(test_preds - test_truth))
    corr = np.corrcoef(test_preds, test_truth)[0][1]
    mult_a7 = np.sum(np.round(test_preds_a7) == np.round(test_truth_a7)) / float(len(test_truth_a7))
    mult_a5 = np.sum(np.round(test_preds_a5) == np.round(test_truth_a5)) / float(len(test_truth_a5))
    non_zeros = np.array([i for i, e in enumerate(test_truth) if e != 0])
    non_zeros_binary_truth = (test_truth[non_zeros] > 0)
    non_zeros_binary_preds = (test_preds[non_zeros] > 0)
    non_zeros_acc2 = accuracy_score(non_zeros_binary_preds, non_zeros_binary_truth)
    non_zeros_f1_score = f1_score(non_zeros_binary_truth, non_zeros_binary_preds, average='weighted')
    binary_truth, binary_preds = (test_truth >= 0), (test_preds >= 0)
    acc2 = accuracy_score(binary_preds, binary_truth)
    f_score = f1_score(binary_truth, binary_preds, average='weighted')
    return {"has0_acc2": acc2, "has0_f1": f_score, "non0_acc2": non_zeros_acc2, "non0_f1": non_zeros_f1_score,
            "acc5": mult_a5, "acc7": mult_a7, "mae": mae, "corr": corr}


def test_sentiment_hand_worked():
    """Zeros in the truth, clipping, and rounding half to even, worked by hand."""
    y_true = [0.0, 1.2, -0.6, 0.0, 2.5]
    y_pred = [0.3, 0.8, 0.2, -0.1, 3.4]
    m = M.sentiment_metrics(y_true, y_pred)
    # Has0: truth >= 0 [T T F T T], pred >= 0 [T T T F T] -> 3/5
    assert m["has0_acc2"] == pytest.approx(0.6)
    # Non0 keeps samples 1, 2, 4: truth > 0 [T F T], pred > 0 [T T T] -> 2/3
    assert m["non0_acc2"] == pytest.approx(2 / 3)
    # weighted F1 over {False: support 1, F1 0; True: support 2, P 2/3 R 1 -> F1 0.8} -> 1.6 / 3
    assert m["non0_f1"] == pytest.approx(0.8 * 2 / 3)
    # Acc7: pred clipped 3.4 -> 3, rounded [0 1 0 -0 3]; truth rounded [0 1 -1 0 2] (2.5 -> 2) -> 3/5
    assert m["acc7"] == pytest.approx(0.6)
    # Acc5: both clipped to 2: pred [0 1 0 -0 2], truth [0 1 -1 0 2] -> 4/5 (clipping made 3.4 right)
    assert m["acc5"] == pytest.approx(0.8)
    assert m["mae"] == pytest.approx((0.3 + 0.4 + 0.8 + 0.1 + 0.9) / 5)
    assert m["corr"] == pytest.approx(np.corrcoef(y_pred, y_true)[0, 1])


def test_sentiment_rounds_half_to_even_like_mmsa():
    """np.round: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0 (not half away from zero)."""
    m = M.sentiment_metrics([0.5, 1.5, 2.5, -0.5, -1.5], [0.0, 2.0, 2.0, 0.0, -2.0])
    assert m["acc7"] == 1.0 and m["acc5"] == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_sentiment_matches_mmsa(seed):
    rng = np.random.default_rng(seed)
    n = 60
    # MOSEI-like labels: multiples of 1/3 in [-3, 3], many exact zeros; predictions may overshoot.
    y_true = np.round(rng.uniform(-3, 3, n) * 3) / 3
    y_true[rng.random(n) < 0.2] = 0.0
    y_pred = y_true + rng.normal(0, 1.0, n)
    ours, theirs = M.sentiment_metrics(y_true, y_pred), mmsa_eval_mosei_regression(y_pred, y_true)
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, abs=1e-12), k


def test_sentiment_degenerate_cases_are_nan():
    m = M.sentiment_metrics([0.0, 0.0, 0.0], [0.5, 0.5, 0.5])  # no non-zero truth; constant prediction
    assert math.isnan(m["non0_acc2"]) and math.isnan(m["non0_f1"]) and math.isnan(m["corr"])
    assert m["has0_acc2"] == 1.0


@pytest.mark.parametrize("bad", [([1.0, 2.0], [1.0]), ([1.0, float("nan")], [0.0, 0.0]), ([], [])])
def test_sentiment_bad_input(bad):
    with pytest.raises(ValueError, match="same length|finite|no samples"):
        M.sentiment_metrics(*bad)


def test_task_metrics_dispatch():
    assert "wa" in M.task_metrics("classification", [0, 1], [0, 1], num_classes=4)
    assert "acc7" in M.task_metrics("regression", [0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="task"):
        M.task_metrics("ranking", [0], [0])


# ---------------------------------------------------------------------- fold tables
def fold(name, wa, ua):
    return {"fold": name, "test_groups": [name], "n_test": 10, "best_epoch": 3,
            "test": {"wa": wa, "ua": ua, "macro_f1": ua, "weighted_f1": wa, "loss": 1.0}}


def test_summarize_folds_mean_and_sample_std():
    s = M.summarize_folds([fold("a", 0.70, 0.60), fold("b", 0.80, 0.70), fold("c", 0.75, 0.80)],
                          task="classification", protocol="speaker", select="ua")
    assert s["metrics"] == ["wa", "ua", "macro_f1", "weighted_f1"]
    assert s["mean"]["wa"] == pytest.approx(0.75)
    assert s["std"]["wa"] == pytest.approx(np.std([0.7, 0.8, 0.75], ddof=1))
    assert s["std"]["ua"] == pytest.approx(0.1)
    md = M.results_markdown(s, "T")
    assert "| **mean ± std** | | | | 75.00 ± 5.00 | 70.00 ± 10.00 |" in md
    assert md.count("\n| a |") == 1 and "## T" in md


def test_fmt():
    assert M.fmt("wa", 0.78432) == "78.43"
    assert M.fmt("mae", 0.71234, 0.01) == "0.7123 ± 0.0100"
    assert M.fmt("corr", float("nan")) == "–" and M.fmt("wa", None) == "–"
