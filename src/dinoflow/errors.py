"""User-facing errors: the CLI prints these without a traceback and exits non-zero.

Messages are bounded (`MAX_MESSAGE_CHARS`): an error built from hostile input (a huge YAML
value, a long list of bad files) must not itself become the problem.
"""

from __future__ import annotations

MAX_MESSAGE_CHARS = 4000


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to at most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    note = f" … [{len(text) - limit} more characters]"
    return text[: max(0, limit - len(note))] + note


class DinoflowError(RuntimeError):
    """A problem the user can fix (bad input, unreachable service, missing file); the message says how.

    `exit_code` is what the CLI exits with when this error ends a stage.
    """

    exit_code = 1

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(bounded(str(message)), *args)


class ConfigError(DinoflowError, ValueError):
    """A configuration problem, phrased for the person who wrote params.yaml (exit code 2)."""

    exit_code = 2
