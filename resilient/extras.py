"""The optional integrations, and what an import without its extra says.

``resilient.httpx``, ``resilient.otel`` and ``resilient.redis`` need packages
that ``pip install resilient-toolkit`` does not bring: each comes with an
extra (``pip install 'resilient-toolkit[httpx]'``). Imported without it, the
integration raises :class:`MissingExtraError`, which names the extra.
``resilient.asgi`` needs nothing beyond the standard library.
"""

from __future__ import annotations

import importlib

__all__ = ["MissingExtraError", "require_extra"]


class MissingExtraError(ModuleNotFoundError):
    """An integration was imported without the extra that installs what it needs.

    A :class:`ModuleNotFoundError` (an :class:`ImportError`), so code that
    tries an optional import keeps working. ``name`` is the missing package,
    ``module`` the integration, ``extra`` the extra to install.
    """

    def __init__(self, module: str, extra: str, missing: str | None) -> None:
        super().__init__(
            f"{module} needs the {extra} extra ({missing!r} is not installed): "
            f"pip install 'resilient-toolkit[{extra}]' (from a clone: pip install -e '.[{extra}]')",
            name=missing,
        )
        self.module = module
        self.extra = extra


def require_extra(module: str, extra: str, *packages: str) -> None:
    """Import ``packages`` for the integration ``module``, or raise :class:`MissingExtraError` naming ``extra``.

    An integration calls it first thing, so that a missing package gives the
    install command instead of a bare :class:`ModuleNotFoundError` from
    somewhere inside the integration.
    """
    for package in packages:
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as exc:
            raise MissingExtraError(module, extra, exc.name) from exc
