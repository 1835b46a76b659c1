"""The metrics the paper reports, computed from per-video scores.

Scores are probabilities averaged over views (softmax per view, then the mean). EK100's action is
the (verb, noun) pair: top-1 needs both right. Action top-5 has two definitions in use, both reported:
`action/top5` ranks the V x N pairs by the joint score p(verb) * p(noun) and asks for the true pair among
the five best (the EPIC-KITCHENS leaderboard's rule); `action/top5_official` asks for the true verb among
the five best verbs AND the true noun among the five best nouns (the official CAST code's final test,
`compute_video` in its engine_for_compomodel.py), i.e. the pair among 25. Any pair in the joint top five
is in the official 5 x 5 grid, so `top5_official >= top5`.
"""

from __future__ import annotations

import numpy as np


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(B,) bool: the label is among the k best-scored classes (all of them when there are fewer than k)."""
    top = np.argsort(-scores, axis=1)[:, :min(k, scores.shape[1])]
    return (top == labels[:, None]).any(1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    return float(topk_hits(scores, labels, k).mean() * 100)


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in `labels` of their recall."""
    pred = scores.argmax(1)
    return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]) * 100)


def per_class_prf(scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    n = scores.shape[1]
    pred = scores.argmax(1)
    cm = confusion_matrix(pred, labels, n)
    tp = np.diag(cm).astype(float)
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(n), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=precision + recall > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predictions."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


def group_f1(scores: np.ndarray, labels: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float]:
    """Support-weighted mean F1 of each group of classes (Figure 5's noun super-categories)."""
    prf = per_class_prf(scores, labels)
    out = {}
    for name, classes in groups.items():
        support = prf["support"][classes]
        if support.sum() > 0:
            out[name] = float((prf["f1"][classes] * support).sum() / support.sum() * 100)
    return out


def harmonic_mean(values: list[float]) -> float:
    return float(len(values) / sum(1 / max(v, 1e-12) for v in values))


def action_accuracy(verb_scores, noun_scores, verb_labels, noun_labels, k: int = 1, rule: str = "joint") -> float:
    """EK100 action accuracy. k=1: both argmaxes right. k>1, rule "joint": the true pair among the k best
    pairs by p(verb) * p(noun), i.e. fewer than k pairs score higher (a tie counts for the video);
    rule "official": the true verb among the k best verbs and the true noun among the k best nouns
    (the official CAST evaluation)."""
    if rule not in ("joint", "official"):
        raise ValueError(f"action accuracy rule must be 'joint' or 'official', got {rule!r}")
    if k == 1:
        return float(((verb_scores.argmax(1) == verb_labels) & (noun_scores.argmax(1) == noun_labels)).mean() * 100)
    if rule == "official":
        verb_hit = topk_hits(verb_scores, verb_labels, k)
        return float((verb_hit & topk_hits(noun_scores, noun_labels, k)).mean() * 100)
    hits = [(np.outer(v, n) > v[vl] * n[nl]).sum() < k  # (V, N) joint scores above the true pair's
            for v, n, vl, nl in zip(verb_scores, noun_scores, verb_labels, noun_labels, strict=True)]
    return float(np.mean(hits) * 100)


def classification_metrics(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                           groups: dict[str, dict[str, list[int]]] | None = None) -> dict[str, float]:
    """Top-1/5 and mean class accuracy per task; EK100 action accuracy (top-1, both top-5 rules) when verb
    and noun are both there; the harmonic mean of the tasks' top-1 (Table 2's H.M.)."""
    out: dict[str, float] = {}
    for task in scores:
        s, y = scores[task], labels[task]
        out[f"{task}/top1"] = topk_accuracy(s, y, 1)
        out[f"{task}/top5"] = topk_accuracy(s, y, 5)
        out[f"{task}/mean_class_acc"] = mean_class_accuracy(s, y)
        for name, value in group_f1(s, y, (groups or {}).get(task, {})).items():
            out[f"{task}/f1/{name}"] = value
    top1 = [out[f"{t}/top1"] for t in scores]
    if {"verb", "noun"} <= set(scores):
        args = (scores["verb"], scores["noun"], labels["verb"], labels["noun"])
        out["action/top1"] = action_accuracy(*args, k=1)
        out["action/top5"] = action_accuracy(*args, k=5)
        out["action/top5_official"] = action_accuracy(*args, k=5, rule="official")
    if len(top1) > 1:
        out["harmonic_mean"] = harmonic_mean(top1)
    return out


def epic_submission(ids: list[str], scores: dict[str, np.ndarray], sls: tuple[int, int, int] = (2, 3, 3)) -> dict:
    """The EPIC-KITCHENS-100 action recognition challenge file: verb and noun scores per narration id.
    `sls` are the supervision levels (pre-training, training labels, training data) the entry claims."""
    results = {
        i: {task: {str(c): round(float(v), 6) for c, v in enumerate(scores[task][row])} for task in ("verb", "noun")}
        for row, i in enumerate(ids)
    }
    return {"version": "0.2", "challenge": "action_recognition", "sls_pt": sls[0], "sls_tl": sls[1],
            "sls_td": sls[2], "results": results}
