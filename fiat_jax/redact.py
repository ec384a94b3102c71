"""Values that look like secrets (API keys, tokens) never reach a terminal, a log or a file.

A key pasted where a variable's *name* belongs (``--gin.TEACHER_API_KEY_ENV=sk-...``) would otherwise be echoed
back by the very error that reports it.
"""

from __future__ import annotations

import re

# Well-known key prefixes (OpenAI, Anthropic, Hugging Face, GitHub, Slack, AWS, Google, Stripe), or a long run of
# letters and digits mixing both (a random token; ordinary words, paths and numbers are not).
_PREFIXED = re.compile(r"\b(?:sk|pk|rk)[-_][A-Za-z0-9_\-]{8,}|\bsk-ant-[A-Za-z0-9_\-]{8,}|\bhf_[A-Za-z0-9]{16,}"
                       r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bxox[abprs]-[A-Za-z0-9\-]{10,}|\bAKIA[A-Z0-9]{16}\b"
                       r"|\bAIza[A-Za-z0-9_\-]{30,}")
_TOKEN = re.compile(r"(?<![A-Za-z0-9_/.\-])[A-Za-z0-9_\-]{32,}(?![A-Za-z0-9_/.\-])")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MASK = "***"


def _random_looking(token: str) -> bool:
    return (any(c.isdigit() for c in token) and any(c.isupper() for c in token)
            and any(c.islower() for c in token))


def looks_like_secret(value: object) -> bool:
    """True for a value shaped like an API key or token."""
    text = str(value)
    return bool(_PREFIXED.search(text)) or any(_random_looking(m.group(0)) for m in _TOKEN.finditer(text))


def redact(text: str) -> str:
    """``text`` with every secret-looking token replaced by ``***``."""
    text = _PREFIXED.sub(MASK, str(text))
    return _TOKEN.sub(lambda m: MASK if _random_looking(m.group(0)) else m.group(0), text)


def is_env_name(value: object) -> bool:
    """True for a valid environment variable name (``OPENAI_API_KEY``)."""
    return isinstance(value, str) and bool(_ENV_NAME.match(value))
