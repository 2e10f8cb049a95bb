"""The error a tracker raises when its package is missing (its own module: the trackers and the code that
builds them both need it)."""

from __future__ import annotations


class TrackerUnavailable(ValueError):
    """A tracker's package is not installed; the message says what to install."""
