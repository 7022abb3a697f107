"""Every policy: probabilities form a distribution, and they are the real choice frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from ef_middleware.errors import ConfigurationError
from ef_middleware.model import ModelConfig, RewardNet, ServingModel
from ef_middleware.policies import POLICIES, Candidates, Thompson, base, make_policy
from ef_middleware.policies.base import resolve_choices
from ef_middleware.policies.winprob import (
    MAX_EXACT,
    beta_win_probabilities,
    beta_win_probabilities_wide,
    gaussian_win_probabilities,
    gaussian_win_probabilities_wide,
    live_actions,
)
from ef_middleware.posterior import LinearPosterior, with_bias

K = 4


def candidates(seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)
    net = RewardNet(ModelConfig(), seed=seed)
    model = ServingModel(net.config, net.params, version=1)
    hidden = rng.random((K, 64), dtype=np.float32)
    post = LinearPosterior(65)
    post.update(with_bias(hidden[:2]), np.array([0.3, 0.5], np.float32),
                np.array([0.2, 0.6], np.float32))
    mean = np.array([0.50, 0.55, 0.45, 0.30], np.float32)
    return Candidates(
        mean=mean,
        logits=np.log(mean / (1 - mean)),
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


@pytest.mark.parametrize("strategy", ["thompson", "laplace", "neural-linear"])
def test_few_actions_are_drawn_on_floats_exactly_as_numpy_would(
        strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With up to SMALL_K actions the Gaussian draw runs on Python floats, from normals drawn
    in chunks: the choices are the very ones of ``argmax(mean + sd * standard_normal(k))``
    with the generator's numbers in the same order, across chunk boundaries."""
    monkeypatch.setattr(base, "NORMALS_CHUNK", 10)  # 4 actions: a draw straddles chunks
    policy = make_policy(strategy, {"noise": 2.0} if strategy == "thompson" else {"scale": 4.0})
    c = candidates()
    rng, reference = np.random.default_rng(7), np.random.default_rng(7)
    choices = [policy.choose(c, rng) for _ in range(700)]
    mean, sd, small = c.memo[policy.name]
    assert small is not None  # the float path ran
    expected = [int(np.argmax(mean + sd * reference.standard_normal(K))) for _ in range(700)]
    assert [choice.index for choice in choices] == expected
    assert len(set(expected)) >= 2  # wide draws: not one sure winner
    assert all(choice.exact and choice.gaussian is not None for choice in choices)


def test_epsilon_greedy_propensities_are_exact() -> None:
    choice = make_policy("epsilon-greedy", {"epsilon": 0.2}).choose(
        candidates(), np.random.default_rng(0))
    np.testing.assert_allclose(choice.probabilities, [0.05, 0.85, 0.05, 0.05], rtol=1e-6)
    assert choice.exact


def test_squarecb_weights_the_inverse_gaps_exactly() -> None:
    c = candidates()  # means 0.50, 0.55 (best), 0.45, 0.30
    c.learned = 400  # gamma = 10 * 400 ** 0.5 = 200
    policy = make_policy("squarecb")
    choice = policy.choose(c, np.random.default_rng(0))
    others = [1 / (4 + 200 * 0.05), 1 / (4 + 200 * 0.10), 1 / (4 + 200 * 0.25)]
    expected = [others[0], 1 - sum(others), others[1], others[2]]
    np.testing.assert_allclose(choice.probabilities, expected, rtol=1e-5)
    assert choice.exact
    fresh = candidates()  # nothing learned yet: gamma = 0, a uniform split
    np.testing.assert_allclose(policy.choose(fresh, np.random.default_rng(0)).probabilities,
                               0.25, rtol=1e-6)


def test_uniform_and_ucb_are_exact() -> None:
    rng = np.random.default_rng(0)
    uniform = make_policy("uniform").choose(candidates(), rng)
    np.testing.assert_allclose(uniform.probabilities, 0.25)
    ucb = make_policy("ucb").choose(candidates(), rng)
    assert ucb.exact and sorted(ucb.probabilities.tolist()) == [0.0, 0.0, 0.0, 1.0]


def test_thompson_propensity_matches_the_two_arm_closed_form() -> None:
    # Two Gaussians: P(a beats b) = Phi((mu_a - mu_b) / sqrt(s_a^2 + s_b^2)).
    from math import erf, sqrt

    c = candidates()
    c2 = Candidates(np.array([0.5, 0.6], np.float32), np.zeros(2, np.float32), c.hidden[:2],
                    np.array([0.0, 3.0], np.float32), c.successes[:2], c.model, None)
    policy = make_policy("thompson", {"noise": 0.3, "rate_scaled": False})
    choice = policy.choose(c2, np.random.default_rng(1))
    s = sqrt(0.3**2 + (0.3 / 2) ** 2)
    p_first = 0.5 * (1 + erf((0.5 - 0.6) / s / sqrt(2)))
    assert choice.exact
    assert choice.probabilities[0] == pytest.approx(p_first, abs=5e-4)


@pytest.mark.parametrize("seed", range(6))
def test_gaussian_win_probabilities_match_monte_carlo(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = [2, 3, 5, 8, 12, 20][seed]
    mean = rng.normal(0.0, 1.0, k)
    sd = np.exp(rng.normal(-1.0, 1.5, k))  # widths spread over two orders of magnitude
    exact = gaussian_win_probabilities(mean, sd)
    m = 400_000
    draws = mean + sd * rng.standard_normal((m, k))
    empirical = np.bincount(draws.argmax(axis=1), minlength=k) / m
    assert exact.sum() == pytest.approx(1.0)
    # 5 standard errors of the Monte Carlo frequency, plus the integration error (< 1e-3)
    assert np.abs(exact - empirical).max() < 5 * np.sqrt(0.25 / m) + 1e-3


@pytest.mark.parametrize("seed", range(4))
def test_beta_win_probabilities_match_monte_carlo(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = [2, 4, 6, 10][seed]
    a = rng.integers(1, 300, k).astype(float)
    b = a + rng.integers(1, 3000, k)
    if seed == 0:
        a, b = np.ones(k), np.ones(k) + np.arange(k)  # flat and near-flat posteriors
    exact = beta_win_probabilities(a, b)
    m = 400_000
    empirical = np.bincount(rng.beta(a, b, (m, k)).argmax(axis=1), minlength=k) / m
    assert np.abs(exact - empirical).max() < 5 * np.sqrt(0.25 / m) + 1e-3


def _quadrature(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Each action's win probability by adaptive quadrature of its own integral."""
    from scipy.integrate import quad
    from scipy.special import log_ndtr
    from scipy.stats import norm

    out = []
    for a in range(mean.size):
        others = np.arange(mean.size) != a
        m, s = mean[others], sd[others]

        def integrand(x: float, a: int = a, m: np.ndarray = m, s: np.ndarray = s) -> float:
            return float(np.exp(norm.logpdf(x, mean[a], sd[a]) + log_ndtr((x - m) / s).sum()))

        out.append(quad(integrand, mean[a] - 9 * sd[a], mean[a] + 9 * sd[a], limit=400,
                        epsabs=1e-10, epsrel=1e-7)[0])
    return np.array(out)


@pytest.mark.parametrize("kind", ["alike", "widths", "leaders", "tried"])
def test_the_integral_over_many_actions_matches_quadrature(kind: str) -> None:
    """Above MAX_EXACT live actions the grid sits at the best score's quantiles: within 1e-3
    of adaptive quadrature, and within 5% for every probability above 1e-3. "tried": a
    catalogue whose well-tried actions (narrow scores) sit among new ones, where an action's
    whole mass fell in one or two of the grid's intervals (a review of 2026-12-05: 60% off;
    the narrow actions' own points now join the grid)."""
    rng = np.random.default_rng(11)
    k = {"alike": 150, "widths": 80, "leaders": 60, "tried": 100}[kind]
    if kind == "alike":  # Thompson early on: close means, widths from counts 0-3
        mean, sd = rng.uniform(0.3, 0.6, k), 0.5 / np.sqrt(rng.integers(0, 4, k) + 1.0)
    elif kind == "tried":  # Thompson's widths from counts of 1 to 8,000
        mean = rng.uniform(0.2, 0.9, k)
        sd = 0.5 / np.sqrt(np.floor(np.exp(rng.uniform(0.0, 9.0, k))) + 1.0)
        live = live_actions(mean, sd)
        mean, sd = mean[live], sd[live]
        assert mean.shape[0] > MAX_EXACT
    elif kind == "widths":  # widths over two orders of magnitude
        mean, sd = rng.normal(0.0, 1.0, k), np.exp(rng.uniform(np.log(0.01), 0.0, k))
    else:  # three clear leaders among many
        mean, sd = rng.normal(0.0, 0.3, k), rng.uniform(0.05, 0.5, k)
        mean[:3] += 1.0
    assert mean.shape[0] > MAX_EXACT
    _assert_near(gaussian_win_probabilities_wide(mean, sd), _quadrature(mean, sd), 1e-3)


def test_a_small_propensity_in_an_actions_upper_tail_is_not_overestimated() -> None:
    """An action that wins only in its upper tail: with one Simpson interval from 1.94 to 6
    standard deviations its probability was 1.44 times the truth here (0.00059 against
    0.00041 by quadrature and 1e7 draws; a review of 2026-12-05)."""
    mean = np.array([0.769, 0.542, 0.303, 0.373])
    sd = np.array([0.0635, 0.0238, 0.0169, 0.0177])
    reference = _quadrature(mean, sd)
    exact = gaussian_win_probabilities(mean, sd)
    assert 1e-4 < reference[1] < 1e-3
    assert exact[1] / reference[1] == pytest.approx(1.0, abs=0.05)
    assert np.abs(exact - reference).max() < 1e-4


def _assert_near(wide: np.ndarray, reference: np.ndarray, tolerance: float) -> None:
    """A distribution within ``tolerance`` of the reference, and within 5% of it for every
    probability above 1e-3."""
    assert wide.sum() == pytest.approx(1.0)
    assert np.abs(wide - reference).max() < tolerance
    big = reference > 1e-3
    assert (np.abs(wide - reference)[big] / reference[big]).max() < 0.05


def _beta_quadrature(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each action's win probability by adaptive quadrature of its own integral."""
    from scipy.integrate import quad
    from scipy.special import betainc
    from scipy.stats import beta

    out = []
    for i in range(a.size):
        others = np.arange(a.size) != i

        def integrand(x: float, i: int = i, oa: np.ndarray = a[others],
                      ob: np.ndarray = b[others]) -> float:
            with np.errstate(divide="ignore"):
                log_others = np.log(betainc(oa, ob, x)).sum()
            return float(np.exp(beta.logpdf(x, a[i], b[i]) + log_others))

        low, high = beta.ppf([1e-12, 1 - 1e-12], a[i], b[i])
        out.append(quad(integrand, low, high, limit=400, epsabs=1e-11, epsrel=1e-7,
                        points=[a[i] / (a[i] + b[i])])[0])
    return np.array(out)


@pytest.mark.parametrize("kind", ["early", "later"])
def test_the_beta_integral_over_many_actions_matches_quadrature(kind: str) -> None:
    rng = np.random.default_rng(5)
    k = 60
    if kind == "early":  # a few visitors each
        n = rng.integers(0, 6, k)
        wins = rng.binomial(n, 0.3)
    else:  # thousands each, close rates
        n = rng.integers(500, 3000, k)
        wins = rng.binomial(n, rng.uniform(0.04, 0.06, k))
    a, b = 1.0 + wins, 1.0 + n - wins
    _assert_near(beta_win_probabilities_wide(a, b), _beta_quadrature(a, b), 1.5e-3)


@pytest.mark.parametrize(("strategy", "count", "success"),
                         [("thompson", 1.0, 0.0), ("bernoulli-ts", 3.0, 1.0)])
def test_many_alike_actions_log_their_true_propensity_once_per_view(
        strategy: str, count: float, success: float) -> None:
    """200 actions alike: each is chosen with probability 1/200, and that is what is logged
    (a Monte Carlo estimate that counts the draw that chose logged 1/65 or more); decisions
    drawn from one view (bernoulli-ts: one published model) share one integral."""
    c = candidates()
    k = 200
    alike = Candidates(np.full(k, 0.4, np.float32), np.zeros(k, np.float32),
                       np.zeros((k, 4), np.float32), np.full(k, count, np.float32),
                       np.full(k, success, np.float32), c.model, None)
    policy, rng = make_policy(strategy), np.random.default_rng(3)
    choices = [policy.choose(alike, rng) for _ in range(5)]
    resolve_choices(choices)
    for choice in choices:
        assert choice.exact and choice.probabilities is choices[0].probabilities
        assert choice.probabilities[choice.index] == pytest.approx(1 / k, rel=1e-3)
        assert choice.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_gaussian_policy_prunes_hopeless_actions_and_ties_split_evenly() -> None:
    c = candidates()
    k = 60  # above MAX_EXACT: hopeless actions are pruned before integrating
    mean = np.full(k, 0.1, np.float32)
    mean[7] = 0.9
    far = Candidates(mean, np.zeros(k, np.float32), np.zeros((k, 4), np.float32),
                     np.full(k, 1e6, np.float32), np.zeros(k, np.float32), c.model, None)
    choice = make_policy("thompson").choose(far, np.random.default_rng(0))
    assert choice.index == 7 and choice.exact and choice.probabilities.sum() == 1.0
    tie = gaussian_win_probabilities(np.zeros(4), np.full(4, 0.2))
    np.testing.assert_allclose(tie, 0.25, atol=1e-9)


def test_unknown_strategy_is_a_configuration_error() -> None:
    from ef_middleware import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown strategy"):
        make_policy("softmax")
    with pytest.raises(ConfigurationError, match="bad options"):
        make_policy("epsilon-greedy", {"epsilon": 2.0})


def test_ucb_prefers_the_wider_posterior_at_equal_logits() -> None:
    """UCB adds ``alpha`` times the posterior width to the logit: of actions predicted alike,
    the one the model knows least about wins."""
    c = candidates()
    flat = Candidates(np.full(K, 0.5, np.float32), np.zeros(K, np.float32), c.hidden,
                      c.counts, c.successes, c.model, c.posterior)
    widths = flat.widths()
    assert widths.max() > widths.min() * 1.01  # not vacuous: the widths differ
    choice = make_policy("ucb").choose(flat, np.random.default_rng(0))
    assert choice.index == int(np.argmax(widths))
    # alpha weighs the bonus against the logits: at a tiny alpha the narrowest action, 0.1
    # ahead, wins.
    narrow = int(np.argmin(widths))
    ahead = flat.logits.copy()
    ahead[narrow] += 0.1
    lead = Candidates(flat.mean, ahead, c.hidden, c.counts, c.successes, c.model, c.posterior)
    tiny = make_policy("ucb", {"alpha": 1e-3}).choose(lead, np.random.default_rng(0))
    assert tiny.index == narrow


def test_ucb_without_a_posterior_prefers_the_least_tried_action() -> None:
    """Before a posterior exists UCB's bonus is ``alpha / sqrt(count + 1)``: at equal means
    the action with fewest samples wins."""
    c = candidates()  # counts 3, 2, 5, 0
    flat = Candidates(np.full(K, 0.5, np.float32), np.zeros(K, np.float32), c.hidden,
                      c.counts, c.successes, c.model, None)
    assert make_policy("ucb").choose(flat, np.random.default_rng(0)).index == 3
    fewer = Candidates(flat.mean, flat.logits, c.hidden, np.array([3, 2, 5, 4], np.float32),
                       c.successes, c.model, None)
    assert make_policy("ucb").choose(fewer, np.random.default_rng(0)).index == 1


def beta_win_frequencies(a: np.ndarray, b: np.ndarray, n: int = 400_000) -> np.ndarray:
    draws = np.random.default_rng(11).beta(a, b, size=(n, a.size))
    return np.bincount(draws.argmax(axis=1), minlength=a.size) / n


def test_bernoulli_ts_draws_from_beta_of_successes_and_failures() -> None:
    """Each action's rate is Beta(1 + successes, 1 + failures), failures = count - successes;
    the propensities follow each new view's counts, not the last view's cached Beta."""
    c = candidates()
    policy = make_policy("bernoulli-ts")
    counts = np.array([2, 40, 0, 6], np.float32)
    successes = np.array([1, 24, 0, 1], np.float32)
    view = Candidates(c.mean, c.logits, c.hidden, counts, successes, c.model, None)
    probs = policy.choose(view, np.random.default_rng(0)).probabilities
    expected = beta_win_frequencies(1 + successes, 1 + counts - successes)
    np.testing.assert_allclose(probs, expected, atol=0.006)
    swapped = Candidates(c.mean, c.logits, c.hidden, counts[::-1].copy(),
                         successes[::-1].copy(), c.model, None)
    again = policy.choose(swapped, np.random.default_rng(0)).probabilities
    np.testing.assert_allclose(again, expected[::-1], atol=0.006)


def test_documented_defaults_of_the_exploration_settings() -> None:
    """The defaults docs/design.md states: epsilon 0.05, thompson's noise 0.5 / sqrt(n + 1)
    times 2 sqrt(r (1 - r)) with r = (s + 1) / (n + 2), laplace's 0.35 x the width around the
    network's logit."""
    c = candidates()
    rng = np.random.default_rng(0)
    greedy = make_policy("epsilon-greedy").choose(c, rng)
    np.testing.assert_allclose(greedy.probabilities, [0.0125, 0.9625, 0.0125, 0.0125],
                               rtol=1e-6)
    make_policy("thompson").choose(c, rng)
    mean, sd, _ = c.memo["thompson"]
    np.testing.assert_allclose(mean, c.mean, rtol=1e-6)
    # counts 3, 2, 5, 0 with summed rewards 1, 1, 2, 0: rates 2/5, 2/4, 3/7 and 1/2
    widths = [2 * np.sqrt(r * (1 - r)) for r in (2 / 5, 2 / 4, 3 / 7, 1 / 2)]
    np.testing.assert_allclose(sd, 0.5 / np.sqrt([4, 3, 6, 1]) * widths, rtol=1e-6)
    make_policy("laplace").choose(c, rng)
    mean, sd, _ = c.memo["laplace"]
    np.testing.assert_allclose(mean, c.logits, rtol=1e-6)
    np.testing.assert_allclose(sd, 0.35 * c.widths(), rtol=1e-6)


def test_thompson_explores_rare_rewards_less_widely_than_coin_flips() -> None:
    """Thompson's noise shrinks with the action's reward rate: at 7 conversions in 100
    samples (rate 8 / 102) it is 2 sqrt(r (1 - r)) = 0.54 of the width of an action whose
    rewards are coin flips, and the same at a rate mirrored about one half; without data,
    and with ``rate_scaled=False``, the width is ``noise / sqrt(n + 1)`` alone."""
    policy = Thompson()
    counts = np.array([100, 100, 100, 0], np.float32)
    successes = np.array([7, 50, 93, 0], np.float32)
    sd = policy.widths(counts, successes)
    rare = 2 * np.sqrt(8 / 102 * (1 - 8 / 102))
    assert rare == pytest.approx(0.537, abs=1e-3)
    np.testing.assert_allclose(sd, [0.5 / np.sqrt(101) * rare, 0.5 / np.sqrt(101),
                                    0.5 / np.sqrt(101) * rare, 0.5], rtol=1e-5)
    flat = Thompson(rate_scaled=False)
    np.testing.assert_allclose(flat.widths(counts, successes), [0.5 / np.sqrt(101)] * 3 + [0.5],
                               rtol=1e-6)
    with pytest.raises(ConfigurationError, match="rate_scaled"):
        make_policy("thompson", {"rate_scaled": "yes"})


def test_thompson_derives_its_widths_once_per_published_counts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The widths depend on the counts alone, which every context's view of one published
    model shares: new counts (a new model, a per-call action list) derive them again."""
    policy = Thompson()
    calls: list[int] = []
    widths = policy.widths

    def counted(counts: np.ndarray, successes: np.ndarray) -> np.ndarray:
        calls.append(1)
        return widths(counts, successes)

    monkeypatch.setattr(policy, "widths", counted)
    first, second = candidates(0), candidates(1)  # other contexts: other means, hidden rows
    second.counts, second.successes = first.counts, first.successes
    rng = np.random.default_rng(0)
    a, b = policy.choose(first, rng), policy.choose(second, rng)
    assert len(calls) == 1
    assert a.gaussian is not None and b.gaussian is not None
    np.testing.assert_array_equal(a.gaussian[1], b.gaussian[1])
    policy.choose(candidates(2), rng)  # counts of their own
    assert len(calls) == 2


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_neural_linear_scales_the_posterior_sd(scale: float) -> None:
    """Neural-linear's scores are the linear head's posterior mean and ``scale`` times its
    sd for each action's features."""
    c = candidates()
    make_policy("neural-linear", {"scale": scale}).choose(c, np.random.default_rng(0))
    mean, sd, _ = c.memo["neural-linear"]
    phi = with_bias(c.hidden)
    assert c.posterior is not None and c.posterior.mean is not None
    np.testing.assert_allclose(mean, phi @ c.posterior.mean, rtol=1e-5)
    np.testing.assert_allclose(sd, scale * c.posterior.sd(phi), rtol=1e-5)


def test_the_integral_uses_simpsons_weights_on_each_interval() -> None:
    """On one interval the product of the other CDFs is averaged with Simpson's 1-4-1
    weights and multiplied by the action's exact CDF mass: for a uniform score (CDF x)
    against the best of two uniforms (CDF x^2) on [0, 1] that gives (0 + 4/4 + 1) = 2
    against (0 + 4/2 + 1) = 3, so (0.4, 0.6)."""
    from ef_middleware.policies.winprob import win_probabilities

    def cdf(x: np.ndarray) -> np.ndarray:
        return np.vstack([x, x**2])

    probs = win_probabilities(np.array([[0.0, 1.0], [0.0, 1.0]]), cdf)
    np.testing.assert_allclose(probs, [0.4, 0.6], rtol=1e-12)


def test_only_actions_beyond_seven_standard_deviations_are_pruned() -> None:
    """An action is dropped from the integral only when it cannot win: its top (mean + 7 sd)
    below the best floor (the highest mean - 7 sd). One 3 sd behind still wins often enough
    to matter and stays; at unit widths the cut falls between 13.9 and 14.1 behind."""
    from ef_middleware.policies.winprob import live_actions

    mean = np.array([0.0, -3.0, -13.9, -14.1])
    assert live_actions(mean, np.ones(4)).tolist() == [0, 1, 2]


def test_a_batch_of_integrals_gives_each_decisions_own_integral() -> None:
    """The learner's batched integral (many decisions at once) logs exactly the
    propensities of the per-decision integral, down to the tiniest."""
    from ef_middleware.policies.winprob import gaussian_win_probabilities_many

    mean = np.array([[0.0, -8.0, -3.0], [0.5, 0.4, -6.0]])
    sd = np.array([[1.0, 1.0, 0.5], [0.1, 2.0, 1.0]])
    many = gaussian_win_probabilities_many(mean, sd)
    single = np.array([gaussian_win_probabilities(m, s) for m, s in zip(mean, sd, strict=True)])
    assert single.min() < 1e-8  # hopeless actions included
    np.testing.assert_allclose(many, single, rtol=1e-12, atol=0)
