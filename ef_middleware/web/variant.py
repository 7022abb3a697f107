"""What a visitor is shown for one loop, and the error for a visitor without a decision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ef_middleware.errors import EFError

if TYPE_CHECKING:
    from ef_middleware.decision import Decision

__all__ = ["NoDecisionError", "Variant"]


class NoDecisionError(EFError, LookupError):
    """This visitor has no valid decision for the loop (no cookie, or it is too old)."""

    code = "no_decision"


class Variant:
    """The variant shown to this visitor for one loop.

    ``str(variant)`` is the action id, so ``{{ ef.variant("hero") }}`` prints it and
    ``variant == "video"`` compares with an id.

    Attributes
    ----------
    loop, id, features
        The loop name, the chosen action's id and its features.
    event_id
        The logged decision's id (``None`` for default variants served to bots or on failure).
    probability
        The policy's propensity of this choice (``None`` for a sticky re-view), computed on
        first access.
    sticky
        Reused from an earlier decision of this visitor; no new decision was made.
    default
        The loop's default (first) variant served to a bot, an opted-out visitor or on failure.
    """

    __slots__ = ("_decision", "_probability", "default", "event_id", "features", "id", "loop",
                 "sticky")

    def __init__(self, loop: str, id: str, features: Mapping[str, Any], *,
                 event_id: str | None = None, probability: float | None = None,
                 sticky: bool = False, default: bool = False,
                 decision: Decision | None = None) -> None:
        self.loop = loop
        self.id = id
        self.features: Mapping[str, Any] = features
        self.event_id = event_id
        self._probability = probability
        self._decision = decision
        self.sticky = sticky
        self.default = default

    @property
    def probability(self) -> float | None:
        if self._probability is None and self._decision is not None:
            self._probability = self._decision.probability
        return self._probability

    @classmethod
    def from_decision(cls, decision: Decision, *, default: bool = False) -> Variant:
        """Wrap an engine decision (its event id only when it was logged)."""
        return cls(decision.loop, decision.action_id, decision.action.features,
                   event_id=decision.event_id if decision.logged else None,
                   default=default, decision=decision)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"Variant(loop={self.loop!r}, id={self.id!r}, sticky={self.sticky})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.id == other
        if isinstance(other, Variant):
            return (self.loop, self.id) == (other.loop, other.id)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (for API endpoints)."""
        return {"loop": self.loop, "id": self.id, "features": dict(self.features),
                "sticky": self.sticky, "default": self.default}
