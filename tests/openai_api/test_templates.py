"""Chat templates: the checkpoint's Jinja template when it has one, else the default lines."""

from __future__ import annotations

import json

import pytest

from abtest.errors import ValidationError
from abtest.openai.templates import Templates, default_render

MESSAGES = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a colour."}]


def test_default_template() -> None:
    assert default_render(MESSAGES) == "system: Be terse.\nuser: Name a colour.\nassistant:"


def test_checkpoint_template_is_used_and_can_refuse(tmp_path) -> None:
    template = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
                "{{ raise_exception('system must come first') }}{% endif %}"
                "<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "eos_token": {"content": "</s>"}}))
    templates = Templates(lambda engine: str(tmp_path) if engine == "chatty" else None)
    assert templates.render("chatty", MESSAGES) == "<|system|>Be terse.</s><|user|>Name a colour.</s><|assistant|>"
    assert templates.render("plain", MESSAGES) == default_render(MESSAGES)  # no checkpoint template
    with pytest.raises(Exception, match="system must come first"):
        templates.render("chatty", [*MESSAGES, {"role": "system", "content": "late"}])


def test_a_refusing_template_is_a_400_naming_messages(tmp_path) -> None:
    from abtest.openai.serving import OpenAIServing

    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{{ raise_exception('roles must alternate') }}"}))
    serving = OpenAIServing.__new__(OpenAIServing)  # only its template plumbing is exercised
    serving.templates = Templates(lambda engine: str(tmp_path))
    with pytest.raises(ValidationError) as info:
        serving._renderer("chatty")(MESSAGES)
    assert info.value.field == "messages" and "roles must alternate" in info.value.message
