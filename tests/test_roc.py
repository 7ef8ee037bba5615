"""Low-FPR statistics of identity attacks (privbench.roc)."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from privbench import roc


def brute_force_tpr(match: np.ndarray, score: np.ndarray, limit: float) -> float:
    """The best TPR over every threshold 'score >= t' whose FPR is at most ``limit``."""
    best = 0.0
    for t in np.concatenate([np.unique(score), [np.inf]]):
        flagged = score >= t
        fpr = (flagged & ~match).sum() / (~match).sum()
        if fpr <= limit:
            best = max(best, (flagged & match).sum() / match.sum())
    return best


@pytest.mark.parametrize("seed", range(5))
def test_statistics_on_random_scores_match_independent_definitions(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    match = rng.random(n) < 0.1
    score = rng.normal(size=n) + 1.5 * match
    score[rng.random(n) < 0.2] = np.round(score[rng.random(n) < 0.2].mean(), 1)  # some ties
    scores = roc.IdentityScores(np.arange(n), ["t"] * n, ["c"] * n, score, match)
    stats = roc.statistics(scores)
    # AUC is the Mann-Whitney U statistic over (match, non-match) pairs, ties counting one half
    u = scipy.stats.mannwhitneyu(score[match], score[~match]).statistic
    assert stats["auc"] == pytest.approx(u / (match.sum() * (~match).sum()), abs=1e-12)
    for name, limit in roc.FPRS.items():
        assert stats[f"tpr_at_{name}_fpr"] == pytest.approx(brute_force_tpr(match, score, limit), abs=1e-12)
    assert (stats["n_positive"], stats["n_negative"]) == (match.sum(), (~match).sum())
    assert 0.7 < stats["auc"] < 0.95 and stats["tpr_at_1pct_fpr"] > stats["tpr_at_0_fpr"]


def test_a_tie_between_a_match_and_a_non_match_cannot_be_split():
    match = np.array([True, False, True, False])
    scores = roc.IdentityScores(np.arange(4), list("abcd"), list("abcd"), np.array([0.9, 0.9, 0.5, 0.1]), match)
    stats = roc.statistics(scores)
    assert stats["tpr_at_0_fpr"] == 0.0  # flagging the first match flags the tied non-match too
    assert stats["tpr_at_1pct_fpr"] == 0.0
    assert stats["auc"] == pytest.approx((0.5 + 1 + 1) / 4)


def test_identity_scores_take_each_identity_best_allowed_item():
    sim = np.array([[0.9, 0.2, 0.4, 0.7],
                    [0.1, 0.8, 0.3, 0.6]])
    exclude = np.array([[True, False, False, False],  # probe 0 was made from item 0
                        [False, False, False, False]])
    out = roc.identity_scores(sim, ["p", "q"], ["p", "q", "p", "r"], exclude)
    frame = out.frame()
    assert frame.to_dict("list") == {"request": [0, 0, 0, 1, 1, 1],
                                     "request_identity": ["p", "p", "p", "q", "q", "q"],
                                     "candidate_identity": ["p", "q", "r", "p", "q", "r"],
                                     "score": [0.4, 0.2, 0.7, 0.3, 0.8, 0.6],
                                     "match": [1, 0, 0, 0, 1, 0]}
    stats = roc.statistics(out)
    assert stats["tpr_at_0_fpr"] == 0.5  # q is found above every non-match, p is beaten by r
    assert stats["auc"] == pytest.approx(6 / 8)  # 0.8 beats all four non-matches, 0.4 two of them


def test_nothing_to_tell_apart_gives_none_not_a_number():
    scores = roc.IdentityScores(np.arange(2), ["a", "a"], ["a", "a"], np.array([0.3, 0.2]), np.array([True, True]))
    stats = roc.statistics(scores)
    assert stats["auc"] is None and stats["tpr_at_1pct_fpr"] is None and stats["n_negative"] == 0


def test_non_finite_scores_and_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        roc.identity_scores(np.array([[np.nan, 0.1]]), ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="does not match"):
        roc.identity_scores(np.zeros((2, 2)), ["a"], ["a", "b"])


def test_raw_scores_are_saved_for_anyone_to_recompute(tmp_path):
    rng = np.random.default_rng(0)
    sim = rng.random((5, 6))
    out = roc.identity_scores(sim, list("abcde"), list("abcdef"))
    clean = roc.identity_scores(sim + 2 * np.eye(5, 6), list("abcde"), list("abcdef"))
    stats = roc.report({"requests": out, "clean": clean}, tmp_path, "demo", "demo")
    assert stats["clean"]["tpr_at_0_fpr"] == 1.0 and stats["clean"]["auc"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(roc.files("demo").values())
    saved = pd.read_csv(tmp_path / "demo_scores.csv")
    again = saved[saved.scored == "requests"]
    rebuilt = roc.IdentityScores(again.request.to_numpy(), list(again.request_identity),
                                 list(again.candidate_identity), again.score.to_numpy(), again.match.to_numpy() == 1)
    assert roc.statistics(rebuilt) == roc.statistics(out) == stats["requests"]
    assert len(again) == 30 and again.match.sum() == 5
