"""Exception types shared across rpg.

Every error a user can cause derives from :class:`RPGError`, so applications can catch one type;
input errors are also ``ValueError`` so that they behave like the standard library's.
"""

from __future__ import annotations


class RPGError(Exception):
    """Base class of every error rpg raises on purpose."""


class SplitRatioError(RPGError, ValueError):
    """A split-ratio string is malformed or does not match its prompts."""


class PlannerError(RPGError):
    """A planner could not produce a valid plan.

    ``raw`` holds the model's last reply (empty when there was none), so the caller can show or
    log exactly what the model said.
    """

    def __init__(self, message: str, *, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


class ConfigurationError(RPGError, ValueError):
    """A setting is missing or invalid (an API key, a host, an unknown name)."""


class ModelNotFoundError(RPGError, FileNotFoundError):
    """A model cannot be found locally and may not be downloaded."""


class RegistryError(RPGError, ValueError):
    """A plugin registry was asked for an unknown name or given a duplicate one."""
