"""Backends by name, imported only when params choose them.

A registry maps a params value (``generate.backend: template``) to a ``Backend``: the ``module:attr`` that
implements it and the data it reads beyond its stage's own inputs. Nothing is imported until ``load``, so
a stage's code is exactly what its params select: the demo's backends (``vital.demo``) are neither
imported nor a DVC dependency of a stage in a profile that does not use them (see ``vital.dag``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vital.params import ParamsError, unknown_name


class UnknownBackend(ParamsError):
    """A params value that names no registered backend; the message names the parameter and the choices."""


@dataclass(frozen=True)
class Backend:
    target: str  # "package.module:attribute"
    reads: tuple[str, ...] = ()  # repository paths this backend reads (DVC deps of its stage)
    # talks to a model API through vital/llm (a key in vital.llm.client.CLIENT_BACKENDS): paid requests,
    # so client.max_failed_share applies and a dry run estimates the cost
    api: bool = False

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


def choose(registry: Mapping[str, Backend], name: str, param: str) -> Backend:
    try:
        return registry[name]
    except KeyError:
        raise UnknownBackend(unknown_name(param, name, registry)) from None
