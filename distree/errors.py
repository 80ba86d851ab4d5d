"""The one error type a user can cause; the CLI turns it into a one-line message and exit code 2."""


class DistreeError(Exception):
    """Bad input from the user: a missing file, a mismatched run, an impossible setting."""
