"""A loop's settings, validated when the loop is created (with messages that say the fix)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ._types import STRATEGIES, Aggregation, Strategy
from .errors import ConfigurationError
from .model import ModelConfig

CORRECTION_RATE = 2.0  # the fast correction's step, unless the strategy has its own:
# laplace and ucb explore by the network's own uncertainty, blind to the correction's
# offsets, and with it they locked onto one action on some seeds (docs/benchmarks.md,
# "Strategies that lock on with the correction"); thompson-dropout's draws never add them.
CORRECTION_RATES: Mapping[str, float] = {"laplace": 0.0, "ucb": 0.0, "thompson-dropout": 0.0}
# Half-lives of the exploration counts, by strategy; the others count forever (math.inf).
# thompson's noise, scaled by the reward rate, needs them to look again after a shift (with
# its unscaled noise, rate_scaled=False, it counts forever: the half-life cost it
# conversions there); bernoulli-ts, with no context, lost conversions by them (docs/design.md,
# "Choice of the default strategy").
COUNT_HALF_LIVES: Mapping[str, float] = {"thompson": 5000.0}


@dataclass(frozen=True)
class LoopSettings:
    """How one personalization loop explores, when it considers a decision final, and learns.

    Parameters
    ----------
    strategy
        Exploration policy: ``thompson`` (default: Thompson sampling with noise that shrinks
        with each variant's data), ``laplace`` (on a Bayesian last layer), ``thompson-dropout``,
        ``neural-linear``, ``ucb``, ``squarecb``, ``epsilon-greedy``, ``uniform`` (A/B split) or
        ``bernoulli-ts`` (no context).
    strategy_options
        Keyword options of the policy, e.g. ``{"epsilon": 0.1}`` or ``{"noise": 0.2}``.
    reward_range
        ``(low, high)``: rewards outside are refused; inside they are mapped to [0, 1].
    default_reward
        Reward of a decision that got none within ``reward_wait`` seconds (a non-conversion).
    reward_wait
        Seconds a decision waits for rewards before it is learned.
    max_pending
        Decisions that may wait for their reward at once. Past it the oldest are learned
        early, with the reward they have (a later reward for one is ``unknown_event``): a
        decision waiting holds about 0.6 KB, so memory is the decision rate times
        ``reward_wait`` (1,000 a second for 10 minutes: 600,000 decisions) up to this bound.
    aggregation
        ``earliest``: the first reward is final and learned at once; ``sum``: rewards add up
        (clipped to the range) until ``reward_wait`` is over.
    learning
        ``False`` freezes the model: decisions are logged, nothing is trained, and the
        published model (with the rankings cached from it) stays as it is.
    model
        Network shape and optimiser (:class:`~ef_middleware.model.ModelConfig`).
    embedding_scale
        Multiplies the pooled embeddings (the context's after centring): unit vectors have
        entries near 0.05, far below the unit scale Xavier initialisation expects.
    batch_size
        Samples per optimiser step.
    replay_ratio
        Gradient visits each learned sample earns: every ``batch_size / replay_ratio`` new
        samples buy one optimiser step on them plus samples replayed from the buffer. The
        default, 4, replaced 8: more conversions on the web simulator and half the learner's
        work a reward, for less margin on MAGIC and Mushroom (docs/benchmarks.md, "Fresh sets
        for replay_ratio=4").
    min_batch_size
        Lets a young loop take smaller, more frequent steps: with n samples learned a step
        takes ``min(batch_size, max(min_batch_size, n // 4))`` samples (default: always
        ``batch_size``; smaller steps early cost a third of the lift on the web simulator).
    replay_backlog
        Samples waiting to be learned up to which each earns the full ``replay_ratio`` (and
        its boost). More waiting means rewards come faster than the learner learns them: until
        it has caught up, the boost is dropped and the ratio falls to ``replay_ratio *
        replay_backlog / waiting`` (at least 1):
        every sample is still learned, and the wait stops growing once the ratio is low
        enough for the learner to keep up, instead of growing for as long as the rate lasts
        (docs/design.md, "Learning"). ``None``: always the full ratio, boosted too (a learner
        whose rewards are predictable then learns up to ``replay_boost`` times fewer a
        second, and falls behind where it would have kept up). The default, 2,048,
        is under a second of the learner's work at the full ratio.
    replay_boost, replay_boost_start, replay_boost_full
        The replay ratio follows how much of the reward the network predicts: it is
        multiplied by up to ``replay_boost`` as the network's relative information gain on
        samples it has not learned yet (:mod:`~ef_middleware.gain`: ``1 -`` its log loss over
        a constant's) rises from ``replay_boost_start`` to ``replay_boost_full``, log-linearly
        between. Rewards the context explains (MAGIC: gains near 0.1) are then learned with
        more replay, and rare, noisy conversions (the web simulator: gains near 0), where more
        replay teaches the network the noise, keep ``replay_ratio``. The default boost, 4,
        took MAGIC's regret from 43.6 to 39.2 on development seeds and from 43.9 to 39.2 on
        fresh ones, where the web simulator's conversions moved by -0.4 ± 0.9 (a first
        version with a boost of 8 gave 37.0 on MAGIC's development seeds and left the web
        simulator's as they were, at up to eight times the learner's work a reward;
        docs/design.md, "Replay that follows the signal"). ``1`` turns it off.
    replay_size
        Most recent samples kept for replay (the network's memory).
    replay_recency
        Mean age, in samples, of the samples replayed (ages drawn from an exponential
        distribution): recent samples are replayed more, so the network follows a changing
        population sooner while older samples still hold it steady. ``None`` (default) draws
        uniformly from the whole buffer (a mean age of 1,000 helped on development seeds and
        not on held-out ones: docs/design.md).
    correction_rate
        Step size of the fast correction (:mod:`~ef_middleware.correction`): a logit offset per
        (context text, action), learned online from the network's errors, so that a new
        campaign or a segment whose taste changed is followed within hundreds of visitors,
        not the thousands the replayed network needs. The step is shared among a sample's
        cells (one per context text, one for the action). ``0`` turns it off. ``None`` (the
        default) takes the strategy's own: 2 (it replaced 4, which locked Mushroom onto one
        action on 2 of 20 fresh seeds: docs/benchmarks.md, "Fresh sets for
        correction_rate=2"), and 0 for ``laplace`` and ``ucb``, which explore by the
        network's own uncertainty, blind to the offsets: with the correction they locked onto
        one action on 1-2 of 5 seeds of Mushroom and MAGIC (docs/benchmarks.md, "Strategies
        that lock on with the correction"), and for ``thompson-dropout``, whose draws are
        dropout passes of the network alone (the offsets would be learned for nothing).
    correction_half_life
        Samples learned after which an offset of the correction that got no sample of its own
        counts half (``None``: offsets last until their next sample). The correction learns
        only from the chosen action, so without it an offset that pushed an action below the
        others could keep it there for good.
    count_half_life
        Samples learned after which an action's count counts half, for the policies whose
        exploration shrinks with it (``thompson``'s noise, ``bernoulli-ts``'s Beta posterior,
        ``ucb``'s bonus before its posterior exists; :mod:`~ef_middleware.counts`): exploration then
        never fades below the level of about ``count_half_life / ln 2`` samples, and a population
        that shifts after months is still looked at. ``math.inf``: counted forever. ``None`` (the
        default) takes the strategy's own: 5,000 for ``thompson``, whose noise is scaled by each
        action's reward rate and explores rare conversions less (counted forever, that noise was
        too narrow to find the new favourites after the web simulator's shift), and forever for
        the others and for ``thompson`` with ``rate_scaled=False`` (with that unscaled noise,
        5,000 had cost 0.5% of the web simulator's conversions, and ``bernoulli-ts`` lost 2%
        with it; docs/design.md, "Choice of the default strategy").
    snapshot_every
        Optimiser steps between saved snapshots.
    posterior_every, posterior_window
        The Bayesian last layer is rebuilt every ``posterior_every`` samples from the last
        ``posterior_window`` ones (its memory; between rebuilds each sample is folded in).
    """

    strategy: Strategy = "thompson"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    reward_range: tuple[float, float] = (0.0, 1.0)
    default_reward: float | None = None
    reward_wait: float = 600.0
    max_pending: int = 1_000_000
    aggregation: Aggregation = "earliest"
    learning: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    embedding_scale: float = 20.0
    batch_size: int = 64
    replay_ratio: float = 4.0
    replay_backlog: int | None = 2048
    min_batch_size: int = 64
    replay_boost: float = 4.0
    replay_boost_start: float = 0.02
    replay_boost_full: float = 0.10
    replay_size: int = 5_000
    replay_recency: float | None = None
    correction_rate: float | None = None  # None: CORRECTION_RATES, by strategy
    correction_half_life: float | None = None
    count_half_life: float | None = None  # None: COUNT_HALF_LIVES, by strategy
    snapshot_every: int = 100
    posterior_every: int = 256
    posterior_window: int = 2048

    def __post_init__(self) -> None:
        self._check_types()
        try:
            self._check_values()
        except ConfigurationError:
            raise
        except (TypeError, ValueError) as exc:  # a shape the checks below did not foresee
            raise ConfigurationError(f"a loop setting has the wrong type or shape: {exc}"
                                     ) from exc

    def _check_types(self) -> None:
        """Each number setting a real number (bools refused), each count an int; the range a
        pair of numbers; the options a mapping."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            kind = _NUMBER_KINDS.get(str(spec.type))
            if kind is None or (value is None and str(spec.type).endswith("| None")):
                continue
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ConfigurationError(f"{spec.name} must be {_KIND_NAMES[kind]}, not "
                                         f"{value!r}")
        if not isinstance(self.strategy_options, Mapping):
            raise ConfigurationError("strategy_options is a mapping of the policy's options, "
                                     f"e.g. {{'epsilon': 0.1}}, not {self.strategy_options!r}")
        pair = self.reward_range
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(
                isinstance(x, numbers.Real) and not isinstance(x, bool) for x in pair)):
            raise ConfigurationError(f"reward_range is a pair of numbers (low, high), e.g. "
                                     f"(0, 1), not {pair!r}")
        object.__setattr__(self, "reward_range", (float(pair[0]), float(pair[1])))
        if not isinstance(self.model, ModelConfig):
            raise ConfigurationError("model is an ef_middleware.model.ModelConfig, e.g. "
                                     f"ModelConfig(hidden=(256, 128, 64)), not {self.model!r}")

    def _check_values(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigurationError(f"strategy {self.strategy!r} is unknown; use one of "
                                     f"{', '.join(STRATEGIES)}")
        if self.strategy == "thompson-dropout":
            # MC dropout samples the posterior only if the network trains with the same dropout
            # (Gal & Ghahramani 2016): the policy's rate and the model's are one setting.
            rate = float(self.strategy_options.get("rate", self.model.dropout or 0.1))
            object.__setattr__(self, "model", replace(self.model, dropout=rate))
            object.__setattr__(self, "strategy_options", {**self.strategy_options, "rate": rate})
        low, high = self.reward_range
        # high - low finite too: (-1e308, 1e308) overflowed, and every reward scaled to 0
        # (a review of 2026-12-05)
        if not (math.isfinite(low) and math.isfinite(high) and low < high
                and math.isfinite(high - low)):
            raise ConfigurationError(
                f"reward_range must be two finite numbers (low, high) with low < high, "
                f"got {self.reward_range!r}"
            )
        if not (math.isfinite(self.embedding_scale) and self.embedding_scale > 0):
            raise ConfigurationError("embedding_scale must be a finite number > 0, e.g. 20")
        if self.default_reward is None:
            object.__setattr__(self, "default_reward", float(low))
        elif not low <= self.default_reward <= high:
            raise ConfigurationError(
                f"default_reward {self.default_reward} lies outside reward_range {low}..{high}"
            )
        if not self.reward_wait > 0:
            raise ConfigurationError("reward_wait is in seconds and must be positive, e.g. 600")
        if self.aggregation not in ("earliest", "sum"):
            raise ConfigurationError("aggregation must be 'earliest' or 'sum'")
        for name in ("batch_size", "min_batch_size", "replay_size", "snapshot_every",
                     "posterior_every", "posterior_window", "max_pending"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
        if self.replay_recency is not None and not self.replay_recency > 0:
            raise ConfigurationError("replay_recency is a mean age in samples and must be "
                                     "positive, e.g. 1000 (or None: uniform)")
        step = self.correction_rate
        if step is None:
            step = CORRECTION_RATES.get(self.strategy, CORRECTION_RATE)
            object.__setattr__(self, "correction_rate", step)
        if not (math.isfinite(step) and step >= 0):
            raise ConfigurationError("correction_rate must be a finite number >= 0, e.g. 2 "
                                     "(0 turns the correction off)")
        half = self.correction_half_life
        if half is not None and not (math.isfinite(half) and half > 0):
            raise ConfigurationError("correction_half_life is a number of samples and must be "
                                     "positive, e.g. 2000 (or None: offsets do not fade)")
        half = self.count_half_life
        if half is None:
            half = COUNT_HALF_LIVES.get(self.strategy, math.inf)
            if not self.strategy_options.get("rate_scaled", True):  # thompson's old noise (a
                half = math.inf  # value the policy refuses fails when the loop builds it)
            object.__setattr__(self, "count_half_life", half)
        if not half > 0:
            raise ConfigurationError("count_half_life is a number of samples and must be "
                                     "positive, e.g. 5000 (math.inf: counts do not fade; None: "
                                     "the strategy's own)")
        if not 0 < self.replay_ratio <= 1024:
            raise ConfigurationError("replay_ratio must be in (0, 1024], e.g. 4")
        if not (math.isfinite(self.replay_boost) and 1 <= self.replay_boost <= 64):
            raise ConfigurationError("replay_boost must be in [1, 64], e.g. 4 (1: the replay "
                                     "ratio does not follow the network's gain)")
        if not (0 <= self.replay_boost_start < self.replay_boost_full <= 1):
            raise ConfigurationError("replay_boost_start and replay_boost_full are information "
                                     "gains with 0 <= start < full <= 1, e.g. 0.02 and 0.1")
        if self.replay_backlog is not None and self.replay_backlog < 1:
            raise ConfigurationError("replay_backlog is a number of samples and must be at "
                                     "least 1, e.g. 2048 (or None: never shed replay)")
        if not 1 <= self.min_batch_size <= self.batch_size:
            raise ConfigurationError("min_batch_size must be between 1 and batch_size")

    def boost(self, gain: float | None) -> float:
        """The replay ratio's multiplier at the network's information ``gain`` on fresh
        samples (``None``: not measured yet, no boost)."""
        if gain is None or self.replay_boost == 1:
            return 1.0
        share = (gain - self.replay_boost_start) / (self.replay_boost_full
                                                    - self.replay_boost_start)
        return float(self.replay_boost ** min(1.0, max(0.0, share)))

    def replay_ratio_at(self, waiting: int, gain: float | None = None) -> float:
        """The replay ratio of samples learned while ``waiting`` samples wait to be learned,
        at the network's information ``gain`` on fresh samples (see :meth:`boost`). A learner
        that is behind drops the boost first: the boost is for spare time (shedding from the
        boosted ratio let 9,620 samples wait at 8,000 rewards/s where 1,801 waited without
        the boost, a review of 2026-12-06)."""
        limit = self.replay_backlog
        if limit is None or waiting <= limit:
            return self.replay_ratio * self.boost(gain)
        return max(min(1.0, self.replay_ratio), self.replay_ratio * limit / waiting)

    def clip(self, value: float) -> float:
        """``value`` clipped to ``reward_range`` (a 'sum' of rewards)."""
        low, high = self.reward_range
        return min(high, max(low, value))

    def normalise(self, value: float) -> float:
        """Map a reward in ``reward_range`` to [0, 1]."""
        low, high = self.reward_range
        return (value - low) / (high - low)

    def denormalise(self, value: float) -> float:
        low, high = self.reward_range
        return low + value * (high - low)


# Annotations of LoopSettings' number fields, and the type their values must have.
_NUMBER_KINDS: dict[str, type] = {
    "float": numbers.Real, "float | None": numbers.Real,
    "int": numbers.Integral, "int | None": numbers.Integral,
}
_KIND_NAMES: dict[type, str] = {numbers.Real: "a number", numbers.Integral: "a whole number"}
