"""Errors the CLI maps to exit codes: a usage error exits 2, a failed or diverged run exits 1."""

from __future__ import annotations

from types import ModuleType


class UsageError(Exception):
    """Bad input from the user (unknown name, bad value, incompatible choice, missing data).

    The CLI prints the message (one paragraph, no traceback) and exits with code 2.
    """


class RunFailed(Exception):
    """A run that started but could not finish (diverged, crashed). The CLI exits with code 1."""

    def __init__(self, message: str, status: str = "failed", run_dir: str | None = None):
        super().__init__(message)
        self.status = status
        self.run_dir = run_dir


def require_package(module: str, who: str, extra: str) -> ModuleType:
    """The optional package ``module``, or a `UsageError` saying that ``who`` needs it and which
    bioplaus extra installs it (``pip install 'bioplaus[EXTRA]'``)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{who} needs the '{module}' package: pip install 'bioplaus[{extra}]'.") from None


def check_choice(key: str, value: object, valid: tuple[str, ...]) -> str:
    """``value`` if it is one of ``valid``, else a `UsageError` naming the key and the valid values."""
    if value not in valid:
        raise UsageError(f"{key} must be one of {', '.join(valid)}; got {value!r}.")
    return str(value)
