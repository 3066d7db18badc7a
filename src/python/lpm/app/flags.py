"""argparse flags that fall back to environment variables, so the same binary reads a Deployment's env
or a developer's command line. `--help` shows both spellings and the default."""

from __future__ import annotations

import argparse
import os
from typing import Any


class EnvDefault(argparse.Action):
    """Take the value from `env` when the flag is absent; required flags may be satisfied by either."""

    def __init__(self, env: str, required: bool = False, default: Any = None, **kwargs: Any) -> None:
        if env in os.environ:
            raw = os.environ[env]
            conv = kwargs.get("type")
            default = conv(raw) if conv else raw
            required = False
        help_text = kwargs.get("help") or ""
        suffix = f"[env {env}" + (f"; default {default!r}]" if default not in (None, "") else "]")
        kwargs["help"] = f"{help_text} {suffix}".strip()
        self.env = env
        super().__init__(default=default, required=required, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)


def env_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_flag(parser: argparse.ArgumentParser | Any, flag: str, env: str, **kwargs: Any) -> None:
    parser.add_argument(flag, action=EnvDefault, env=env, **kwargs)


def add_switch(parser: argparse.ArgumentParser | Any, flag: str, env: str, help: str) -> None:
    """A boolean flag (`--x` / `--no-x`) with an env fallback."""
    default = env_bool(os.environ.get(env, "false"))
    parser.add_argument(
        flag, action=argparse.BooleanOptionalAction, default=default, help=f"{help} [env {env}; default {default}]"
    )
