"""The backend tables of the model-facing roles: the params value that names a backend -> what implements it,
the data it reads and what it can do.

params.py takes each role's choices (its ``Literal``) from these tables, ``vital.llm.client`` its API clients,
the stages their registries and ``vital.dag`` their deps, so a new provider is its code plus one row here.
Nothing is imported until params choose a backend (``Backend.load``); this module imports nothing of vital,
so params.py can read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backend:
    target: str  # "package.module:attribute"
    reads: tuple[str, ...] = ()  # repository paths this backend reads (DVC deps of its stage)
    # talks to a model API through vital/llm: paid requests, so client.max_failed_share applies and a dry run
    # estimates the cost; ``client`` is the "module:function" (ClientParams, key, section) -> AsyncOpenAI
    api: bool = False
    client: str = ""

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module the backend runs (a DVC dep of its stage): its own and its API client's."""
        return (self.module, self.client.partition(":")[0]) if self.client else (self.module,)

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


OPENAI = "vital.llm.client:openai_client"
AZURE = "vital.llm.client:azure_client"

GENERATE: dict[str, Backend] = {
    "template": Backend("vital.demo.template_generator:TemplateBackend", reads=("data/corpus/truth.jsonl",)),
    "openai": Backend("vital.generate:OpenAIBackend", api=True, client=OPENAI),
    "azure": Backend("vital.generate:OpenAIBackend", api=True, client=AZURE),
}

JUDGE: dict[str, Backend] = {
    "heuristic": Backend("vital.demo.heuristic_judge:HeuristicBackend"),
    "openai": Backend("vital.judge:OpenAIJudge", api=True, client=OPENAI),
    "azure": Backend("vital.judge:OpenAIJudge", api=True, client=AZURE),
}

CHAT_EVAL: dict[str, Backend] = {
    "heuristic": Backend("vital.demo.reference_judge:HeuristicChatJudge"),
    "openai": Backend("vital.chat_eval:EngineChatJudge", api=True, client=OPENAI),
    "azure": Backend("vital.chat_eval:EngineChatJudge", api=True, client=AZURE),
}


def api_clients() -> dict[str, str]:
    """Every API backend's name -> its client factory, over the roles (a name means one provider)."""
    return {name: b.client for table in (GENERATE, JUDGE, CHAT_EVAL) for name, b in table.items() if b.api}
