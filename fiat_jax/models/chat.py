"""Chat formatting for instruction-tuned models, from the jinja template the model ships with.

GGUF files carry HF's template as ``tokenizer.chat_template``; we render it with jinja2 in a sandbox, with the
same globals transformers provides (``raise_exception``, ``bos_token``, ``eos_token``, ``add_generation_prompt``),
so the prompt the model sees is byte-for-byte what it was trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2.exceptions import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from fiat_jax.errors import UserError
from fiat_jax.models.checkpoint_gguf import GGUFFile

Message = Mapping[str, str]


def _raise(message: str) -> None:
    raise UserError(f"chat template: {message}")


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent, ensure_ascii=False)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as err:
        raise UserError(f"chat template does not parse: {err}") from err


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A jinja chat template plus the special-token strings it may refer to."""

    template: str
    bos_token: str = ""
    eos_token: str = ""

    def format(self, messages: Sequence[Message] | str, *, add_generation_prompt: bool = True,
               **extra: Any) -> str:
        """Render ``messages`` ([{"role": "user", "content": ...}, ...]; a str is one user message)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        for i, m in enumerate(messages):
            if "role" not in m or "content" not in m:
                raise UserError(f"chat message {i} needs 'role' and 'content' keys, got {sorted(m)}")
        return _compile(self.template).render(messages=[dict(m) for m in messages],
                                              add_generation_prompt=add_generation_prompt,
                                              bos_token=self.bos_token, eos_token=self.eos_token, **extra)


def template_from_gguf(gguf_file: Any) -> ChatTemplate:
    """The chat template stored in a GGUF file (``tokenizer.chat_template``), with its bos / eos strings."""
    g = gguf_file if isinstance(gguf_file, GGUFFile) else GGUFFile(gguf_file)
    template = g.get("tokenizer.chat_template")
    if not template:
        raise UserError(f"{g.path}: has no chat template (tokenizer.chat_template); it is not an instruct model")
    tokens = g.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str:
        i = g.get(key)
        return str(tokens[int(i)]) if i is not None and int(i) < len(tokens) else ""

    return ChatTemplate(str(template), bos_token=token("tokenizer.ggml.bos_token_id"),
                        eos_token=token("tokenizer.ggml.eos_token_id"))
