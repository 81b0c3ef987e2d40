"""The one exception family every part of matryoshka raises for a user's mistake.

docs/design.md, "Errors": the CLI turns any of these into one `error: ...` line and exit 2 (or 1
where the environment or the work itself failed, not the user). This module imports nothing,
so the runtime may use it without pulling in torch.
"""


class MatryoshkaError(Exception):
    """Base of every user-facing error in matryoshka."""

    exit_code = 2  # what the CLI exits with: a user's mistake


class ConfigError(MatryoshkaError, ValueError):
    """A configuration or argument that cannot be used (bad levels, bad option)."""


class DataError(MatryoshkaError, ValueError):
    """Input data of the wrong kind: a missing key, a wrong shape or dtype, NaN."""


class ArtifactError(MatryoshkaError):
    """A checkpoint or export folder that is incomplete or corrupt."""


class MissingArtifactError(ArtifactError, FileNotFoundError):
    """A checkpoint, export folder or data file that does not exist."""


class ValidationError(MatryoshkaError):
    """An exported graph disagrees with torch beyond tolerance: the export fails."""

    exit_code = 1  # not a usage mistake: the export itself failed


class LockTimeout(MatryoshkaError, TimeoutError):
    """Another writer held an export folder's lock for longer than we would wait."""

    exit_code = 1  # the environment (another process), not the user's arguments


class TrainingError(MatryoshkaError):
    """Training diverged (a non-finite loss); no checkpoint is written."""

    exit_code = 1


def not_a_folder(path, what: str) -> MatryoshkaError:
    """The error for a folder argument that is not a folder: missing (not found), or a file
    that exists but is not the folder that was asked for."""
    from pathlib import Path

    if Path(path).exists():
        return ConfigError(f"{what} {path} is a file, not a folder")
    return MissingArtifactError(f"{what} not found: {path}")


def not_a_file(path, what: str) -> MatryoshkaError:
    """The error for a file argument that is not a regular file: missing, or a folder."""
    from pathlib import Path

    if Path(path).is_dir():
        return ConfigError(f"{what} {path} is a folder, not a file")
    if Path(path).exists():
        return ConfigError(f"{what} {path} is not a regular file")
    return MissingArtifactError(f"{what} not found: {path}")
