"""Every policy: probabilities form a distribution, and they are the real choice frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from ef_middleware.model import ModelConfig, RewardNet, ServingModel
from ef_middleware.policies import POLICIES, Candidates, make_policy
from ef_middleware.posterior import LastLayerPosterior, with_bias

K = 4


def candidates(seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)
    net = RewardNet(ModelConfig(), seed=seed)
    model = ServingModel(net, version=1)
    hidden = rng.random((K, 64), dtype=np.float32)
    post = LastLayerPosterior(65)
    post.update(with_bias(hidden[:2]), np.array([0.2, 0.6], np.float32))
    return Candidates(
        mean=np.array([0.50, 0.55, 0.45, 0.30], np.float32),
        hidden=hidden,
        counts=np.array([3, 2, 5, 0], np.float32),
        successes=np.array([1, 1, 2, 0], np.float32),
        model=model,
        posterior=post.snapshot(),
    )


@pytest.mark.parametrize("strategy", sorted(POLICIES))
def test_probabilities_are_a_distribution_and_match_choice_frequencies(strategy: str) -> None:
    policy = make_policy(strategy)
    c = candidates()
    rng = np.random.default_rng(42)
    n = 3000
    chosen = np.zeros(K)
    probs_sum = np.zeros(K)
    for _ in range(n):
        choice = policy.choose(c, rng)
        assert choice.probabilities.shape == (K,)
        assert choice.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert (choice.probabilities >= 0).all()
        assert choice.probabilities[choice.index] > 0  # the logged propensity is never 0
        chosen[choice.index] += 1
        probs_sum += choice.probabilities
    empirical = chosen / n
    expected = probs_sum / n
    # binomial standard error of the empirical frequency, plus Monte Carlo noise of estimates
    tolerance = 4 * np.sqrt(expected * (1 - expected) / n) + 0.01
    assert np.all(np.abs(empirical - expected) <= tolerance), (strategy, empirical, expected)


def test_epsilon_greedy_propensities_are_exact() -> None:
    choice = make_policy("epsilon-greedy", {"epsilon": 0.2}).choose(
        candidates(), np.random.default_rng(0))
    np.testing.assert_allclose(choice.probabilities, [0.05, 0.85, 0.05, 0.05], rtol=1e-6)
    assert choice.exact


def test_uniform_and_ucb_are_exact() -> None:
    rng = np.random.default_rng(0)
    uniform = make_policy("uniform").choose(candidates(), rng)
    np.testing.assert_allclose(uniform.probabilities, 0.25)
    ucb = make_policy("ucb").choose(candidates(), rng)
    assert ucb.exact and sorted(ucb.probabilities.tolist()) == [0.0, 0.0, 0.0, 1.0]


def test_thompson_monte_carlo_matches_the_two_arm_closed_form() -> None:
    # Two Gaussians: P(a beats b) = Phi((mu_a - mu_b) / sqrt(s_a^2 + s_b^2)).
    from math import erf, sqrt

    c = candidates()
    c2 = Candidates(np.array([0.5, 0.6], np.float32), c.hidden[:2],
                    np.array([0.0, 3.0], np.float32), c.successes[:2], c.model, None)
    policy = make_policy("thompson", {"noise": 0.3, "samples": 20000})
    choice = policy.choose(c2, np.random.default_rng(1))
    s = sqrt(0.3**2 + (0.3 / 2) ** 2)
    p_first = 0.5 * (1 + erf((0.5 - 0.6) / s / sqrt(2)))
    assert choice.probabilities[0] == pytest.approx(p_first, abs=4 * sqrt(0.25 / 20000))


def test_unknown_strategy_is_a_configuration_error() -> None:
    from ef_middleware import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown strategy"):
        make_policy("softmax")
    with pytest.raises(ConfigurationError, match="bad options"):
        make_policy("epsilon-greedy", {"epsilon": 2.0})
