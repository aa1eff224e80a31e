"""User-facing errors: one class whose message names the problem and the fix.

`bioplaus-run` prints a ConfigError as a single line and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class ConfigError(ValueError):
    """A mistake the user can fix: a bad config value, a missing data file, an unsupported pairing."""


class DivergedError(ConfigError):
    """Training diverged (a non-finite value, or a loss that blew up): the run stops with status `diverged`."""


class UnsupportedModelError(ConfigError):
    """A rule was paired with a model it cannot train."""


def require(module: str, who: str, install: str):
    """Import an optional dependency, or raise one ConfigError saying who needs it and how to install it.

        require("torch_geometric", "graph models and PyG data need", "pip install -e '.[graph]'")"""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{who} {module.split('.')[0]}, which is not installed: {install}") from None
