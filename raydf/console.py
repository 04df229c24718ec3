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

from raydf.tracking import raydf_home

__all__ = ["setup", "restore", "terminal", "log_path", "quiet_ray_kwargs", "terminate_on_sigterm"]

_QUIET_ENV = {
    "OPENCV_LOG_LEVEL": "OFF",
    "OPENCV_FFMPEG_LOGLEVEL": "-8",  # AV_LOG_QUIET
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "View run ... at: URL" lines
    "RAY_AIR_NEW_OUTPUT": "0",
}  # set for a quiet command when the user has not set them (restore() unsets them again)
_STATE: dict[str, Any] = {"verbose": False, "log_file": None, "terminal": None, "saved": None}


def terminal() -> Any:
    """The stream that reaches the person at the terminal (stderr before :func:`setup` quietened it)."""
    return _STATE["terminal"] or sys.stderr


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
    return raydf_home() / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def setup(command: str, *, verbose: bool, log_file: Path | None) -> None:
    """Configure logging and warnings for one command (see the module docstring)."""
    root = logging.getLogger()
    if _STATE["saved"] is None:  # what restore() puts back (the first setup of a process or after a restore)
        _STATE["saved"] = {"handlers": list(root.handlers), "level": root.level, "excepthook": sys.excepthook,
                           "sigterm": signal.getsignal(signal.SIGTERM), "showwarning": warnings.showwarning,
                           "filters": list(warnings.filters), "env": []}  # fmt: skip
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger: the log file, or -v
    warnings.simplefilter("default")
    if not verbose:
        _quiet_stderr(log_file)
    console = logging.StreamHandler(terminal())
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
        # found" on a bad file). Their errors reach the user as raydf's one-line error instead. Tune's
        # result loggers stay on: result.json is what ExperimentAnalysis and a resumed sweep read.
        for key, value in _QUIET_ENV.items():
            if key not in os.environ:
                os.environ[key] = value
                _STATE["saved"]["env"].append(key)


def restore() -> None:
    """Undo :func:`setup` in this process: fd 2, ``sys.excepthook``, logging, warnings and SIGTERM as before.

    The ``raydf`` console script does not call it (the process ends with the command); in-process
    callers of :func:`raydf.cli.main` (a notebook, a test) get their stderr back through it.
    """
    saved = _STATE["saved"]
    if saved is None:
        return
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        if h not in saved["handlers"]:
            h.close()
    for h in saved["handlers"]:
        root.addHandler(h)
    root.setLevel(saved["level"])
    logging.captureWarnings(False)
    warnings.showwarning = saved["showwarning"]
    warnings.filters[:] = saved["filters"]
    sys.excepthook = saved["excepthook"]
    for key in saved["env"]:
        os.environ.pop(key, None)
    signal.signal(signal.SIGTERM, saved["sigterm"])
    term = _STATE["terminal"]
    if term is not None:
        term.flush()
        sys.stderr.flush()
        os.dup2(term.fileno(), 2)  # the original stderr again
        term.close()
    _STATE.update(verbose=False, log_file=None, terminal=None, saved=None)


def _quiet_stderr(log_file: Path | None) -> None:
    """Point file descriptor 2 at the log file (or /dev/null) and keep the terminal for raydf.

    Ray's, MLflow's and FFmpeg's own output -- Python handlers bound to ``sys.stderr``, C++ logs of
    Ray's core worker, native libraries, and the Ray processes this command starts -- writes to
    fd 2, so it lands in the log file; raydf's console lines, progress bars and errors use
    :func:`terminal`, a copy of the original stderr. An uncaught exception still reaches the
    terminal, as one line naming the log file (its traceback is in the file).
    """
    if _STATE["terminal"] is not None:
        return
    sys.stderr.flush()
    keep = os.dup(2)
    _STATE["terminal"] = os.fdopen(keep, "w", buffering=1, encoding="utf-8", errors="replace")
    log_file_path = log_file if log_file is not None else Path(os.devnull)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    target = os.open(log_file_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 2)
    os.close(target)
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        previous(kind, exc, tb)  # the traceback, to fd 2: the log file
        where = f" (details in {log_file})" if log_file is not None else " (run with -v for details)"
        print(f"raydf: internal error: {kind.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}", file=terminal())

    sys.excepthook = hook


def quiet_ray_kwargs() -> dict[str, Any]:
    """``ray.init`` arguments for the console: workers' output to Ray's log files unless ``-v``."""
    return {"log_to_driver": bool(_STATE["verbose"]), "logging_level": logging.DEBUG if _STATE["verbose"] else logging.WARNING}


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks and atexit hooks (Ray's shutdown, servers
    a command started) run when a command is stopped like Ctrl-C stops it."""

    def _exit(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
