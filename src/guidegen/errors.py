"""Exceptions that user-facing entry points turn into one-line messages.

`InputError` is raised for anything wrong with what the user gave us (a file, a prompt, an option).
The CLI prints ``error: <path>: <problem>`` and exits with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

from pathlib import Path


class GuideGenError(Exception):
    """Base class of every error GuideGen raises on purpose."""


class InputError(GuideGenError, ValueError):
    """Bad user input: names the offending file (or option) and the problem in one line."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")


class OutputExistsError(InputError):
    """An output would overwrite an existing file or folder without ``overwrite=True``."""

    def __init__(self, path: str | Path):
        super().__init__(path, "already exists (use --overwrite to replace it)")
