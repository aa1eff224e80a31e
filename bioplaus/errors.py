"""User-facing errors: one class whose message names the problem and the fix.

`bioplaus-run` prints a ConfigError as a single line and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class ConfigError(ValueError):
    """A mistake the user can fix: a bad config value, a missing data file, an unsupported pairing."""


class UnsupportedModelError(ConfigError):
    """A rule was paired with a model it cannot train."""
