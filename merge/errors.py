"""One exception tree for the merge stage.

Every error a user can cause derives from `MergeError`; the CLI prints its message on one line and exits
non-zero, without a traceback. A message says what is wrong and what to do about it.
"""

from __future__ import annotations


class MergeError(Exception):
    """Base of every expected failure of the merge stage."""

    exit_code: int = 2


class RecipeError(MergeError):
    """The recipe file is invalid (names the field and the fix)."""


class ParentError(MergeError):
    """A parent checkpoint cannot be used: missing, unreadable, or incompatible with the others."""


class CheckpointError(MergeError):
    """A safetensors checkpoint is malformed: truncated file, bad header, missing shard, index mismatch."""


class VerifyError(CheckpointError):
    """A checkpoint failed `chimera-merge verify`; the message names the tensor."""


class OutputError(MergeError):
    """The output directory cannot be written: exists with another build, disk full, permissions."""


class DeviceError(MergeError):
    """The requested compute device is unavailable (e.g. --device cuda on a machine without CUDA)."""


class PublishError(MergeError):
    """A build cannot be published: unfinished, damaged, or the hub refused the upload."""
