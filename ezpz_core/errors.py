"""Errors that reach the user as one line, not a traceback."""

from __future__ import annotations


class EzpzError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits non-zero."""


class ConfigError(EzpzError):
    """A bad configuration key or value."""


class DataError(EzpzError):
    """Missing, empty or malformed training data."""


class PluginError(EzpzError):
    """A plugin that cannot be loaded, registered or run."""
