"""Backends by name, imported only when params choose them.

A registry maps a params value (``generate.backend: template``) to a ``Backend``: the ``module:attr`` that
implements it and the data it reads beyond its stage's own inputs. Nothing is imported until ``load``, so
a stage's code is exactly what its params select: the demo's backends (``vital.demo``) are neither
imported nor a DVC dependency of a stage in a profile that does not use them (see ``vital.dag``).
"""

from __future__ import annotations

from collections.abc import Mapping

from vital.backends import Backend
from vital.params import ParamsError, unknown_name

__all__ = ["Backend", "UnknownBackend", "choose"]


class UnknownBackend(ParamsError):
    """A params value that names no registered backend; the message names the parameter and the choices."""


def choose(registry: Mapping[str, Backend], name: str, param: str) -> Backend:
    try:
        return registry[name]
    except KeyError:
        raise UnknownBackend(unknown_name(param, name, registry)) from None
