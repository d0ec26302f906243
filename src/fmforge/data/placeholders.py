"""Placeholders in source paths: ``{python_stdlib}``, ``{site_packages}``,
``{home}`` and ``{config_dir}``.

They let one config describe a corpus that exists on every machine (the running
interpreter's own files) or that sits next to the YAML file, without hard-coding
absolute paths. Unknown names are an error, never left in a pattern where they
would silently match nothing.
"""

from __future__ import annotations

import os
import re
import sysconfig
from pathlib import Path

from fmforge.data.problems import UnknownPlaceholderError

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholder_values(config_dir: str | None) -> dict[str, str]:
    """The value of every known placeholder for this interpreter and config."""
    paths = sysconfig.get_paths()
    values = {
        "python_stdlib": paths["stdlib"],
        "site_packages": paths["purelib"],
        "home": str(Path.home()),
    }
    if config_dir is not None:
        values["config_dir"] = str(config_dir)
    return values


KNOWN_PLACEHOLDERS = ("python_stdlib", "site_packages", "home", "config_dir")


def substitute_placeholders(
    pattern: str, *, source: str, config_dir: str | None, what: str = "paths"
) -> str:
    """Replace every ``{name}`` in ``pattern`` (and a leading ``~``); unknown names raise."""
    values = placeholder_values(config_dir)

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in values:
            return values[name]
        if name == "config_dir":
            raise UnknownPlaceholderError(
                f"source {source!r}: {what} pattern {pattern!r} uses {{config_dir}}, but this "
                "config was not loaded from a file; use an absolute path or load the YAML file"
            )
        known = ", ".join("{" + k + "}" for k in KNOWN_PLACEHOLDERS)
        # A preset leaves {your_corpus} for the user: say what to write there, not
        # only that the name is unknown (which reads as a typo of a known one).
        raise UnknownPlaceholderError(
            f"source {source!r}: {what} pattern {pattern!r} uses {{{name}}}, which fmforge does "
            f"not fill in: write the location of your files in its place (a local path or an "
            f"fsspec URL) in the config, or use a placeholder fmforge knows: {known}"
        )

    return os.path.expanduser(_PLACEHOLDER.sub(sub, pattern))


def resolve_pattern(pattern: str, *, source: str, config_dir: str | None, what: str = "paths") -> str:
    """Substitute placeholders and make the pattern absolute.

    Relative patterns are taken relative to the config file's directory when the
    config came from a file, else to the current directory. The result uses
    forward slashes so glob and exclude matching agree on every platform.
    """
    resolved = substitute_placeholders(pattern, source=source, config_dir=config_dir, what=what)
    if not os.path.isabs(resolved):
        base = config_dir if config_dir is not None else os.getcwd()
        resolved = os.path.join(base, resolved)
    return Path(os.path.normpath(resolved)).as_posix()
