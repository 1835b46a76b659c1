"""The library's errors: one small hierarchy, so that the command line can print any of them as one line.

Every error a user can act on derives from `CastVideoError`; its message names the file, line or key
at fault. The CLI prints it as `cast-video COMMAND: error: MESSAGE` and exits with status 2. Each class
also derives from the built-in exception it replaces, so `except ValueError` in user code still works.
"""

from __future__ import annotations


class CastVideoError(Exception):
    """Base of every error the library raises on purpose; the message names what is at fault."""

    on_every_rank = False  # raised by every rank of a torchrun group at the same point (the CLI then waits)


class ConfigError(CastVideoError, ValueError):
    """A config key or value that does not fit the schema; the message names the dotted key."""


class DataError(CastVideoError):
    """Data that cannot be used: a video, a frame folder or an annotation file."""


class AnnotationError(DataError, ValueError):
    """A malformed annotation; the message names the file, line and field."""


class VideoReadError(DataError, RuntimeError):
    """A video (or frame folder) that cannot give the requested frames; the message names the file."""


class WeightsError(CastVideoError, ValueError):
    """A checkpoint that cannot be read or does not fit: the message names the file and the key."""


class CheckpointError(CastVideoError, ValueError):
    """A training checkpoint that cannot be loaded safely or does not match the run; names the file."""


class NonFiniteLoss(CastVideoError, RuntimeError):
    """A NaN or infinite loss; the message names the rank, the value and the checkpoint to resume from.
    The ranks share their losses before deciding, so every rank raises it at the same step."""

    on_every_rank = True
