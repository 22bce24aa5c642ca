"""Errors raised by zoo. Each message says what went wrong and what to do about it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """Base class: the CLI prints these without a traceback."""


class UnknownModelError(ZooError, KeyError):
    """A model name (or name.tag) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(ZooError, ValueError):
    """A config field that does not exist or a value it cannot take."""


class CheckpointError(ZooError, ValueError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class InputError(ZooError, ValueError):
    """Model input that cannot be used: a missing or unreadable image or video, prompts and media that disagree."""


class HubError(ZooError, OSError):
    """The Hugging Face Hub could not give us what we asked for."""


class PushError(HubError):
    """A push that still failed after its retries: `reason` is why the last attempt failed, `attempts` how many ran."""

    def __init__(self, message: str, reason: str, attempts: int):
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The registered names most similar to `name`, best first."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    prefix = [c for c in candidates if c.startswith(name.split("-")[0]) and c not in matches]
    return (matches + prefix)[:n]


def shorten(items: Iterable[str], limit: int = 10) -> str:
    """A comma-separated list of at most `limit` items, with a count of the rest."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
