"""Errors that users see. Each message names what is wrong, where (file, row) and how to fix it."""


class KitError(Exception):
    """Base class: the CLI prints these as one clean message, never as a stack trace."""


class DataError(KitError):
    """A competition folder, metadata file or image is malformed."""


class ImageError(DataError):
    """An image file cannot be decoded (missing, truncated, not an image)."""


class WeightsError(KitError):
    """Model weights are missing, half-loaded or cannot be found."""


class SubmissionError(KitError):
    """A submission file is malformed (the Kaggle metric's ParticipantVisibleError)."""


class ConfigError(KitError):
    """A config file or a --set override is malformed."""


class OutputError(KitError):
    """An output path (--out, --report, --provenance) cannot be written; raised before any work."""


class KitWarning(UserWarning):
    """A problem the run works around (an unwritable cache); the CLI prints it as one line."""


class DecisionsError(KitError):
    """A decisions.json (kit review's export, or any tool's) does not fit the competition it is applied to."""
