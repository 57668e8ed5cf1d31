"""Client construction for every model-facing call (a registry of backends, not if/else).

``openai`` covers api.openai.com and any OpenAI-compatible server (vLLM, …) through
``client.base_url``; ``azure`` is Azure OpenAI (``base_url`` = the resource endpoint,
``api_version`` required, ``model`` = the deployment name). The API key is read only from the
environment variable named by ``client.api_key_env`` and is never logged or stored.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
from urllib.parse import urlparse

from openai import AsyncAzureOpenAI, AsyncOpenAI

from vital.backends import api_clients
from vital.params import ClientParams, ParamsError, unknown_name


class ConfigError(ParamsError):
    """A configuration problem found before any paid request; the message names what to fix."""


def api_key(cp: ClientParams, section: str) -> str:
    key = os.environ.get(cp.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"{section}.client.api_key_env: environment variable {cp.api_key_env} is not set; "
            f"export it (the key is read only from the environment, never from params)"
        )
    return key


def openai_client(cp: ClientParams, key: str, section: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=cp.base_url, timeout=cp.timeout_s, max_retries=0)


def azure_client(cp: ClientParams, key: str, section: str) -> AsyncOpenAI:
    if not cp.base_url:
        raise ConfigError(
            f"{section}.client.base_url: Azure needs the resource endpoint (https://<name>.openai.azure.com)"
        )
    if not cp.api_version:
        raise ConfigError(f"{section}.client.api_version: Azure needs an API version (e.g. 2024-10-21)")
    return AsyncAzureOpenAI(
        azure_endpoint=cp.base_url,
        api_version=cp.api_version,
        api_key=key,
        timeout=cp.timeout_s,
        max_retries=0,
    )


CLIENT_BACKENDS: dict[str, str] = api_clients()  # name -> "module:function", from vital/backends.py


def make_client(backend: str, cp: ClientParams, section: str) -> AsyncOpenAI:
    """Build the SDK client with the SDK's own retries off: the engine retries so the limiter sees them."""
    if backend not in CLIENT_BACKENDS:
        raise ConfigError(unknown_name(f"{section}.backend", backend, CLIENT_BACKENDS))
    module, _, attr = CLIENT_BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), attr)(cp, api_key(cp, section), section)


def endpoint(cp: ClientParams) -> str:
    return cp.base_url or "https://api.openai.com/v1"


def limiter_scope(backend: str, cp: ClientParams) -> str:
    """Callers that share a scope share one rate limiter (same endpoint, same key)."""
    return f"{backend}|{endpoint(cp)}|{cp.api_key_env}"


def check_reachable(cp: ClientParams, section: str, timeout: float = 5.0) -> None:
    """Open (and close) a TCP connection to the endpoint: no request, no cost."""
    url = urlparse(endpoint(cp))
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{section}.client.base_url: {cp.base_url!r} is not an http(s) URL")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        raise ConfigError(
            f"{section}.client.base_url: cannot reach {url.scheme}://{url.hostname}:{port} ({e.__class__.__name__}: {e}); "
            "check the URL and that the server is running"
        ) from None


def refusal_message(
    section: str, status: int, detail: str, model: str, cp: ClientParams | None, repeated: int = 1
) -> str:
    """One line for a refusal every further request would repeat, naming the setting to fix."""
    var = cp.api_key_env if cp is not None else "the key variable"
    where = endpoint(cp) if cp is not None else "the server"
    if status == 401:
        fix = (
            f"{where} rejected the API key; check that {section}.client.api_key_env ({var}) "
            "holds a valid key for this endpoint"
        )
    elif status == 403:
        fix = (
            f"the key in {var} ({section}.client.api_key_env) may not use model {model!r} ({section}.model) "
            f"at {where}"
        )
    elif status == 404:
        fix = (
            f"{where} does not serve model {model!r}; check {section}.model (Azure: the deployment name) "
            f"and {section}.client.base_url"
        )
    elif status == 405:
        fix = (
            f"{where} does not accept chat completions (POST .../chat/completions); check "
            f"{section}.client.base_url (an OpenAI-compatible server's URL usually ends in /v1)"
        )
    elif status in (400, 422):
        fix = (
            f"{where} refused {repeated} requests in a row the same way, so every request would be refused; "
            f"check {section}.model ({model!r}) and the request settings of the {section} section "
            f"(max_tokens, temperature, structured output) against what {section}.client.base_url serves"
        )
    else:
        fix = f"{where} refused the request"
    return f"{section}: {fix} (HTTP {status}: {detail})"


_SECRETISH = re.compile(r"(sk-[A-Za-z0-9_\-*]{4,}|Bearer\s+\S+)")


def redact(text: str, cp: ClientParams | None = None) -> str:
    """Remove the API key (and anything key-shaped) from text bound for logs, metrics or errors."""
    if cp is not None:
        key = os.environ.get(cp.api_key_env, "").strip()
        if key:
            text = text.replace(key, "***")
    return _SECRETISH.sub("***", text)
