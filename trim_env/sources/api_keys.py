"""What an ``api_key_env`` setting may hold: the name of an environment variable, never the key itself.

Kept apart from the HTTP backends (and their httpx dependency) because every Hydra app checks
its settings with it before anything is written (:mod:`trim_env.sources.config_guard`), whether
or not the run talks to a server.
"""

from __future__ import annotations

import re

#: A variable name as ``api_key_env`` takes it.
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: How API keys of common providers start (``sk-``, ``hf_``, ...): a value like this is a key, not a variable name.
_KEY_PREFIX = re.compile(r"(sk|pk|rk|hf|gsk|xai|key)[-_]", re.IGNORECASE)


#: What :mod:`trim_env.sources.config_guard` puts in place of a key given as ``api_key_env``.
REMOVED_SECRET = "<removed: an API key was given as this setting>"


def check_api_key_env(value: str | None) -> None:
    """Refuse an ``api_key_env`` that is not an environment variable's name (e.g. the key itself).

    The message never repeats the value: it may be a secret.
    """
    if not value:
        return
    if value == REMOVED_SECRET:
        raise ValueError(
            "api_key_env held an API key, not the name of an environment variable; it was removed from the run's config "
            "before anything was written. Put the key in an environment variable (export OPENAI_API_KEY=...) and give "
            "its name (api_key_env=OPENAI_API_KEY)"
        )
    looks_like_a_key = _KEY_PREFIX.match(value) is not None and not value.isupper()
    if _VARIABLE_NAME.fullmatch(value) is None or looks_like_a_key or len(value) > 64:
        raise ValueError(
            f"api_key_env = {value[:3]}… ({len(value)} characters) is not the name of an environment variable: it looks like "
            "an API key itself. Put the key in an environment variable (export OPENAI_API_KEY=...) and give its name "
            "(api_key_env=OPENAI_API_KEY); never pass a key as a setting, it would be recorded in run configs and logs"
        )
