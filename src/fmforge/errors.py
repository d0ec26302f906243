"""The one line between a user's mistake and a bug of ours.

A ``UserError`` carries a message a user can act on (a config key, a file, a
command to run, bad input data): the command line prints it as one line and
exits with status 2. Anything else that escapes a command is a bug of ours and
keeps its traceback.

Each module's named errors subclass ``UserError`` beside the builtin they have
always been (``class ConfigError(UserError, ValueError)``), so code that catches
``ValueError`` or ``FileNotFoundError`` still catches them.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix, with a message that says what and where."""


class InputFileMissing(UserError, FileNotFoundError):
    """A file or directory fmforge needs is not there: one the user named (a model
    directory, a data pattern, a task folder) or one an installed package should
    hold. The message says where it looked and what to do. (A stage's artifact
    not made yet is ``rundir.ArtifactMissingError``.)"""


class MissingDependencyError(UserError, ImportError):
    """A package an optional feature needs is not installed; the message names the
    feature and the ``pip install 'fmforge[extra]'`` that brings it."""


def require(module: str, extra: str, feature: str):
    """Import ``module`` for ``feature``, or raise the error that says which extra
    to install (``import fmforge`` stays light: optional packages are imported where
    a feature first needs them)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the {module.split('.')[0]} package, which is not installed: "
            f"pip install 'fmforge[{extra}]' ({exc})") from exc
