"""Chat templates: a conversation (``messages``) rendered as the prompt an engine completes.

An engine whose checkpoint's ``tokenizer_config.json`` has a ``chat_template`` (a Jinja
template, as Hugging Face tokenizers carry it) gets its messages rendered with it, in a
sandboxed Jinja environment, with ``add_generation_prompt`` true and the checkpoint's
``bos_token`` / ``eos_token``. Any other engine (the demo checkpoints have none) gets
:data:`DEFAULT_TEMPLATE`: one line per message, ``<role>: <content>``, then ``assistant:``::

    system: You are terse.
    user: Name a colour.
    assistant:

The template is read from the checkpoint directory this process sees (``ABTEST_CHECKPOINT_DIR``),
once per engine.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Templates", "default_render", "DEFAULT_TEMPLATE"]

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{role}: {content}\\n per message, then 'assistant:'"
Messages = Sequence[Mapping[str, str]]


def default_render(messages: Messages) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _token(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _jinja(config: Mapping[str, Any]) -> Callable[[Messages], str] | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, Mapping) and t.get("name") == "default"),
                        None)
    if not isinstance(template, str) or not template.strip():
        return None
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:  # what Hugging Face templates call to refuse input
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)
    bos, eos = _token(config.get("bos_token")), _token(config.get("eos_token"))

    def render(messages: Messages) -> str:
        return compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=True,
                               bos_token=bos, eos_token=eos)

    return render


class Templates:
    """``templates.render(engine, messages)``; ``checkpoints`` maps an engine to its checkpoint
    directory (None or missing: the default template)."""

    def __init__(self, checkpoints: Callable[[str], str | None]) -> None:
        self._checkpoints = checkpoints
        self._cache: dict[str, Callable[[Messages], str]] = {}
        self._lock = threading.Lock()

    def renderer(self, engine: str) -> Callable[[Messages], str]:
        found = self._cache.get(engine)
        if found is None:
            found = self._load(engine)
            with self._lock:
                self._cache[engine] = found
        return found

    def render(self, engine: str, messages: Messages) -> str:
        return self.renderer(engine)(messages)

    def _load(self, engine: str) -> Callable[[Messages], str]:
        path = self._checkpoints(engine)
        config_file = Path(path) / "tokenizer_config.json" if path else None
        if config_file is None or not config_file.is_file():
            return default_render
        try:
            render = _jinja(json.loads(config_file.read_text()))
        except Exception as exc:  # noqa: BLE001 - a broken template: say so once, use the default
            log.warning("engine %s: chat template unusable (%s); using the default template", engine,
                        type(exc).__name__)
            return default_render
        return render or default_render
