"""User-facing errors: the CLI prints these without a traceback and exits non-zero."""


class DinoflowError(RuntimeError):
    """A problem the user can fix (bad input, unreachable service, missing file); the message says how."""
