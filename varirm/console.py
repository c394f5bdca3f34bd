"""What a ``varirm`` command prints: quiet by default, everything with ``--verbose``.

Quiet means: varirm's own lines (data counts, set-up notes, results), progress bars and errors
stay; third-party noise goes: Lightning's advertising tips and hardware banner, deprecation and
future warnings, transformers' per-load weight reports and loading bars (varirm says in one line
when a new reward model's score head is initialised, which is expected), datasets' info messages.
``varirm --verbose ...`` or ``VARIRM_VERBOSE=1`` shows everything.

Two steps, because libraries can print while they are imported: :func:`quiet_third_party` runs
before any heavy import (environment variables the libraries read at import, warning filters, and
Python's last-resort logging handler raised to errors: a library's ``logger.warning`` through a
logger that no handler serves otherwise reaches stderr);
:func:`configure` runs after the imports (Lightning's own handlers, transformers' and datasets'
verbosity and loading bars). The root logger gets no handler: Lightning adds its own console
handler only when the root has none, and varirm's data lines go through it.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "VARIRM_VERBOSE"

# Lightning info lines that say nothing about this run's data or results.
LIGHTNING_NOISE = ("Tip:", "GPU available:", "TPU available:", "HPU available:", "LOCAL_RANK:", "Seed set to",
                   "Using bfloat16 Automatic Mixed Precision", "Using 16bit Automatic Mixed Precision",
                   "Loading `train_dataloader` to estimate", "`Trainer.fit` stopped:")


class DropNoise(logging.Filter):
    """Drops log records whose message contains one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


# Read by the libraries when they are imported: their own log level and advisory warnings.
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
             "DATASETS_VERBOSITY": "error", "HF_HUB_VERBOSITY": "error"}


def quiet_third_party() -> None:
    """The part of quieting that must come before third-party imports (see the module docstring).
    Idempotent; does nothing when verbose. The caller's own environment settings win."""
    if verbose():
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # every other library warning (Lightning's PossibleUserWarning, "modules in eval mode" for a
    # frozen reference policy, ...); varirm's own warnings stay
    warnings.filterwarnings("ignore", module=r"^(?!varirm)")
    # a record that no handler of its logger or its parents took (e.g. a library's logger.warning at
    # import time) ends at logging.lastResort, which writes WARNING and up to stderr: errors only now
    if logging.lastResort is not None:
        logging.lastResort.setLevel(logging.ERROR)


def configure() -> None:
    """Quiet third-party output unless verbose (see the module docstring). Idempotent; call it
    after Lightning and transformers are imported (their handlers exist then)."""
    if verbose():
        return
    quiet_third_party()
    noise = DropNoise(LIGHTNING_NOISE)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if not any(isinstance(f, DropNoise) for f in target.filters):
                target.addFilter(noise)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars on every model load
    datasets.utils.logging.set_verbosity_error()
