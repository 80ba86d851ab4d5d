"""The exporters' narration off: a CLI export prints one line per artifact, not pages of progress."""
import contextlib
import io
import logging
import warnings

NARRATORS = ("torch.onnx", "onnxscript", "onnx_ir")  # loggers that report every export step


@contextlib.contextmanager
def quiet():
    """Silences the exporters' stdout progress lines, their INFO/WARNING logs and torch's FutureWarnings."""
    loggers = [logging.getLogger(name) for name in NARRATORS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
