"""Exceptions shared across the gateway."""

from __future__ import annotations


class HoopfastError(Exception):
    """Base of the gateway's own errors."""


class ConfigurationError(HoopfastError):
    """Settings or the TOML configuration are invalid."""
