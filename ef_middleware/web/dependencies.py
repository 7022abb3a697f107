"""A FastAPI dependency (a plain function, so FastAPI itself is not imported here)."""

from __future__ import annotations

from starlette.requests import Request

from ef_middleware.errors import ConfigurationError

from .personalization import Personalization

__all__ = ["personalization"]


def personalization(request: Request) -> Personalization:
    """The request's :class:`Personalization`, for ``Depends(personalization)``.

    Raises
    ------
    ConfigurationError
        :class:`~ef_middleware.web.PersonalizationMiddleware` is not installed.

    Examples
    --------
    >>> @app.get("/api/hero")                                        # doctest: +SKIP
    ... def hero(ef: Personalization = Depends(personalization)) -> dict[str, object]:
    ...     return ef.variant("homepage-hero").to_dict()
    """
    ef = request.scope.get("ef")
    if not isinstance(ef, Personalization):
        raise ConfigurationError(
            "PersonalizationMiddleware is not installed on this app (no scope['ef'])"
        )
    return ef
