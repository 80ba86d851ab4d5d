"""The one error type a user can cause; the CLI turns it into a one-line message and exit code 2."""


class DistreeError(Exception):
    """Bad input from the user: a missing file, a mismatched run, an impossible setting."""


def option_name(keyword: str) -> str:
    """A command-line option's name from its keyword: reference_samples -> --reference-samples."""
    return "--" + keyword.replace("_", "-")


def check_counts(**counts: int | None) -> None:
    """A DistreeError naming the option of the first count below 0 (None: not given)."""
    for keyword, value in counts.items():
        if value is not None and value < 0:
            raise DistreeError(f"{option_name(keyword)} must be 0 or more, got {value}")


def check_fraction(**fractions: float | None) -> None:
    """A DistreeError naming the option of the first fraction outside (0, 1] (None: not given)."""
    for keyword, value in fractions.items():
        if value is not None and not 0 < value <= 1:
            raise DistreeError(f"{option_name(keyword)} must be a fraction in (0, 1], got {value:g}")
