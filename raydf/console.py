"""What the ``raydf`` commands print: a short, readable stream for people; everything else in a log file.

At default verbosity the terminal gets raydf's own warnings and errors (one line each),
the live progress bars of :mod:`raydf.progress` (drawn only on a terminal) and what each
command prints on purpose. Everything else -- raydf's INFO lines, Ray's, Ray Data's,
MLflow's and PyTorch's logs, Python warnings -- goes to the command's log file
(``<RAYDF_HOME>/logs/<command>-<time>.log``) when the command writes anything at all.
``-v`` shows all of it on the terminal too. Read-only commands (``detect``) write no log file.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["setup", "log_path", "quiet_ray_kwargs", "terminate_on_sigterm"]

_STATE: dict[str, Any] = {"verbose": False, "log_file": None}


class _OwnWarnings(logging.Filter):
    """raydf's own records only (the console at default verbosity)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "raydf" or record.name.startswith("raydf.")


class _Plain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "error" if record.levelno >= logging.ERROR else "warning"
        return f"{level}: {record.getMessage()}"


def log_path(command: str) -> Path:
    """Where a command's log file goes (not created here)."""
    from raydf.tracking import raydf_home

    return raydf_home() / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def setup(command: str, *, verbose: bool, log_file: Path | None) -> None:
    """Configure logging and warnings for one command (see the module docstring)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger: the log file, or -v
    warnings.simplefilter("default")
    console = logging.StreamHandler(sys.stderr)
    if verbose:
        console.setLevel(logging.DEBUG)
        console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        console.setLevel(logging.WARNING)
        console.addFilter(_OwnWarnings())
        console.setFormatter(_Plain())
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
    for noisy in ("urllib3", "botocore", "s3fs", "fsspec", "matplotlib", "PIL", "alembic", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _STATE.update(verbose=verbose, log_file=log_file)
    if not verbose:
        # Native libraries print straight to stderr: OpenCV's own log and FFmpeg's inside it ("moov atom not
        # found" on a bad file). Their errors reach the user as raydf's one-line error instead.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def quiet_ray_kwargs() -> dict[str, Any]:
    """``ray.init`` arguments for the console: workers' output to Ray's log files unless ``-v``."""
    return {"log_to_driver": bool(_STATE["verbose"]), "logging_level": logging.DEBUG if _STATE["verbose"] else logging.WARNING}


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks and atexit hooks (Ray's shutdown, servers
    a command started) run when a command is stopped like Ctrl-C stops it."""

    def _exit(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
