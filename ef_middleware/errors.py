"""One error tree for the package, rooted at :class:`EFError`.

Every error carries a short machine-readable ``code`` (the web layer turns it into a JSON error
body) and the context a caller needs to act on it.
"""

from __future__ import annotations


class EFError(Exception):
    """Root of every error ef_middleware raises on purpose."""

    code = "ef_error"


class ConfigurationError(EFError, ValueError):
    """A loop, engine or store was configured wrongly; the message says how to fix it."""

    code = "configuration"


class InvalidInputError(EFError, ValueError):
    """A context, an action list or a reward value has the wrong type or shape."""

    code = "invalid_input"


class UnknownLoopError(EFError, KeyError):
    """No loop of that name exists in the engine."""

    code = "unknown_loop"

    def __init__(self, loop: str) -> None:
        super().__init__(f"no loop named {loop!r}; create it with engine.loop({loop!r}, ...)")
        self.loop = loop

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownEventError(EFError, KeyError):
    """A reward names an event this loop never logged, or one whose record has expired."""

    code = "unknown_event"

    def __init__(self, loop: str, event_id: str) -> None:
        super().__init__(f"loop {loop!r} has no open decision with event id {event_id!r}")
        self.loop = loop
        self.event_id = event_id

    def __str__(self) -> str:
        return str(self.args[0])


class RewardError(EFError, ValueError):
    """A reward was refused; nothing was stored or learned from it."""

    code = "reward_rejected"

    def __init__(self, message: str, *, loop: str, event_id: str) -> None:
        super().__init__(message)
        self.loop = loop
        self.event_id = event_id


class RewardOutOfRangeError(RewardError):
    """The reward is not a finite number inside the loop's ``reward_range``."""

    code = "reward_out_of_range"


class DuplicateRewardError(RewardError):
    """The event already has its reward (aggregation ``earliest``) or was already learned."""

    code = "duplicate_reward"


class EngineClosedError(EFError, RuntimeError):
    """The engine was closed: its loops neither rank, take rewards nor learn any more."""

    code = "engine_closed"


class StoreError(EFError):
    """The state store failed; the caller falls back to the default variant."""

    code = "store"


class EmbedderError(EFError, RuntimeError):
    """The embedder returned what no vector may be (the wrong shape, NaN or infinity): nothing
    of that batch is kept, so one bad vector cannot reach the store, the model or a snapshot."""

    code = "embedder"
