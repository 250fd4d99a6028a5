"""The `spotdiff` command line: `detect`, and one sub-command per pipeline stage.

Each pipeline stage's command is in its stage module (`spotdiff.stages.<name>`, listed in
`spotdiff.stages.STAGES`), every other command in its own module under `spotdiff.commands`; each
module exposes `register(app)`. This file only collects them and turns a `SpotdiffError` into one
line on stderr and exit code 2. Those modules import heavy libraries (torch, mlflow, …) and the rest
of spotdiff inside their functions so that `spotdiff --help` stays fast.
"""

from __future__ import annotations

import errno
import importlib
import os
import pkgutil
import sys
import warnings
from typing import Optional

# OpenCV's C++ logger writes "[ WARN ]" lines straight to stderr; the command line speaks in one line
# per error. Set before any command imports cv2 (a user's own setting wins).
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import typer  # noqa: E402

from spotdiff import __version__  # noqa: E402
from spotdiff.errors import SpotdiffError  # noqa: E402

app = typer.Typer(
    name="spotdiff",
    help="Spot the differences between two images, and run the pipeline that trains the learned detector.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spotdiff {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Spot the differences between two images, and run the pipeline that trains the learned detector."""


def _register_commands() -> None:
    import spotdiff.commands as commands
    from spotdiff.stages import STAGES

    names = [f"spotdiff.stages.{stage}" for stage in STAGES]
    names += [f"spotdiff.commands.{info.name}"
              for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name)]
    for name in names:
        register = getattr(importlib.import_module(name), "register", None)
        if register is not None:
            register(app)


_register_commands()


def _click_classes(name: str) -> tuple[type, ...]:
    """`name` from every click this process may raise: typer's bundled copy (typer >= 0.26 raises
    `typer._click.exceptions.*`, not click's) and click itself, when installed."""
    found = []
    for module in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


_WRITE_ERRNOS = {errno.EFBIG: "the file-size limit (ulimit -f) was reached",
                 errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is full",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}


_INTERRUPTED = "interrupted (Ctrl-C); nothing half-written was kept, rerun to start again"


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _error(message: str) -> None:
    print(f"spotdiff: error: {_first_line(message)}", file=sys.stderr)


def _run(argv: list[str] | None) -> int:
    usage, no_args = _click_classes("UsageError"), _click_classes("NoArgsIsHelpError")
    click_exc, aborts = _click_classes("ClickException"), _click_classes("Abort")
    exits = _click_classes("Exit")
    try:
        rv = app(args=argv, standalone_mode=False)
    except SpotdiffError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        _error(_INTERRUPTED)
        return 130
    except SystemExit as exc:  # typer/click exits (e.g. --help)
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # noqa: BLE001 - the boundary: every class below is a user's doing
        if no_args and isinstance(exc, no_args):  # bare `spotdiff` / a group without a command
            typer.echo(exc.ctx.get_help() if getattr(exc, "ctx", None) else str(exc))
            return 2
        if usage and isinstance(exc, usage):
            ctx = getattr(exc, "ctx", None)
            where = f"`{ctx.command_path} --help`" if ctx is not None else "`spotdiff --help`"
            _error(f"{_first_line(exc.format_message()).rstrip('.')}; see {where}")
            return 2
        if click_exc and isinstance(exc, click_exc):
            _error(exc.format_message())
            return getattr(exc, "exit_code", 1) or 1
        if aborts and isinstance(exc, aborts):
            _error(f"aborted{': ' + _first_line(str(exc)) if str(exc) else ''}; rerun when ready")
            return 1
        if exits and isinstance(exc, exits):
            if isinstance(exc.__cause__, KeyboardInterrupt):
                _error(_INTERRUPTED)
            return int(getattr(exc, "exit_code", 0) or 0)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            name = exc.filename or "an output file"
            _error(f"{name}: cannot write ({_WRITE_ERRNOS[exc.errno]}); free space, raise the limit or "
                   "choose another output location, then rerun")
            return 2
        raise
    if rv == 130:  # typer (non-standalone) turns Ctrl-C into Exit(130) and returns its code
        _error(_INTERRUPTED)
    return rv if isinstance(rv, int) else 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: a user's mistake is one stderr line and exit 2, never a traceback.

    Python warnings raised while a command runs (torch, Lightning, OpenCV's Python side) are held back:
    after a success they are printed, one `spotdiff: warning:` line each (repeats once); after an
    error only the error line is printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            code = _run(argv)
        except BaseException:
            caught.clear()
            raise
    if code == 0:
        seen = set()
        for w in caught:
            text = f"{w.category.__name__}: {_first_line(str(w.message))}"
            if text not in seen:
                seen.add(text)
                print(f"spotdiff: warning: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
