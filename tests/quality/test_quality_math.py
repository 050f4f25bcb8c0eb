"""The scoring math against independent computations (scipy), and the sampling rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax, rel_entr
from scipy.stats import binomtest, entropy

from abtest.services.quality import PairScore, compare, sampled, text_similarity
from engines.types import ScoreResult


def score(logits: np.ndarray, ids: list[int], tokenizer: str = "tok-a") -> ScoreResult:
    logp = log_softmax(logits, axis=1).astype("<f4")
    return ScoreResult(tuple(ids), logp.tobytes(), logp.shape[1], tokenizer, prompt_tokens=3)


def test_agreement_and_kl_match_scipy_on_random_distributions() -> None:
    rng = np.random.default_rng(7)
    for case in range(50):
        n, vocab = int(rng.integers(1, 30)), int(rng.integers(2, 200))
        g_logits = rng.normal(0, rng.uniform(0.1, 4), (n, vocab))
        s_logits = g_logits + rng.normal(0, rng.uniform(0.01, 3), (n, vocab))
        ids = [int(i) for i in rng.integers(0, vocab, n)]
        got = compare(score(g_logits, ids), score(s_logits, ids))
        # independent: explicit float32-rounded distributions, scipy's KL and a plain loop
        p = np.exp(log_softmax(g_logits, axis=1).astype(np.float32).astype(np.float64))
        q = np.exp(log_softmax(s_logits, axis=1).astype(np.float32).astype(np.float64))
        kl_entropy = sum(entropy(p[i], q[i]) for i in range(n))
        kl_rel = float(rel_entr(p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)).sum())
        agree = sum(1 for i in range(n) if int(np.argmax(s_logits[i])) == ids[i])
        assert got.tokens == n and got.agree == agree, case
        assert got.kl_sum == pytest.approx(kl_entropy, rel=1e-4, abs=1e-6), case
        assert got.kl_sum == pytest.approx(kl_rel, rel=1e-4, abs=1e-6), case
        assert got.agreement == agree / n and got.kl == pytest.approx(kl_entropy / n, rel=1e-4, abs=1e-6)


def test_greedy_tokens_of_the_same_model_agree_fully_with_zero_kl() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (12, 50))
    ids = [int(i) for i in logits.argmax(1)]
    assert compare(score(logits, ids), score(logits, ids)) == PairScore(12, 12, 0.0)


def test_padded_vocabularies_compare_on_the_shared_ids_renormalised() -> None:
    rng = np.random.default_rng(3)
    g, s = rng.normal(0, 1, (5, 40)), rng.normal(0, 1, (5, 48))  # the scorer's vocabulary is padded
    ids = [1, 5, 7, 39, 0]
    got = compare(score(g, ids), score(s, ids))
    p = np.exp(log_softmax(g, axis=1).astype(np.float32).astype(np.float64))
    q = np.exp(log_softmax(s, axis=1).astype(np.float32).astype(np.float64))[:, :40]
    assert got.kl_sum == pytest.approx(sum(entropy(p[i], q[i]) for i in range(5)), rel=1e-4)
    assert got.agree == sum(int(np.argmax(s[i, :40]) == ids[i]) for i in range(5))


def test_a_completion_cut_shorter_by_one_engine_compares_the_common_prefix() -> None:
    rng = np.random.default_rng(4)
    g, s = rng.normal(0, 1, (6, 20)), rng.normal(0, 1, (4, 20))
    ids = [3, 1, 4, 1, 5, 9]
    got = compare(score(g, ids), score(s, ids[:4]))
    assert got.tokens == 4
    assert got.agree == sum(int(np.argmax(s[i]) == ids[i]) for i in range(4))


def test_different_tokenizers_or_tokens_are_refused() -> None:
    logits = np.zeros((2, 8))
    with pytest.raises(ValueError, match="tokenizers"):
        compare(score(logits, [1, 2]), score(logits, [1, 2], tokenizer="tok-b"))
    with pytest.raises(ValueError, match="different tokens"):
        compare(score(logits, [1, 2]), score(logits, [1, 3]))
    empty = ScoreResult((), b"", 8, "tok-a", 3)
    assert compare(empty, empty) == PairScore(0, 0, 0.0) and PairScore(0, 0, 0.0).agreement is None


def test_score_result_travels_as_json_and_back() -> None:
    s = score(np.arange(12.0).reshape(3, 4), [0, 1, 2])
    back = ScoreResult.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s


def test_text_similarity_is_difflib_ratio() -> None:
    assert text_similarity("abc", "abc") == 1.0 and text_similarity("", "") == 1.0
    assert text_similarity("abcd", "abxy") == pytest.approx(0.5)
    assert text_similarity("abc", "xyz") == 0.0


def test_sampling_is_deterministic_nested_and_has_the_requested_share() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    tenth = [i for i in ids if sampled(i, 0.1)]
    assert tenth == [i for i in ids if sampled(i, 0.1)]  # a replay agrees
    assert set(tenth) <= {i for i in ids if sampled(i, 0.5)}  # a larger share keeps the smaller's
    assert binomtest(len(tenth), len(ids), 0.1).pvalue > 1e-4
    assert all(sampled(i, 1.0) for i in ids[:100]) and not any(sampled(i, None) for i in ids[:100])
