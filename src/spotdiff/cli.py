"""The `spotdiff` command line: `detect`, and one sub-command per pipeline stage.

Each command lives in its own module under `spotdiff.commands` and exposes `register(app)`; this
file only discovers them and turns a `SpotdiffError` into one line on stderr and exit code 2.
Command modules import heavy libraries (torch, mlflow, …) inside their functions so that
`spotdiff --help` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from spotdiff.errors import SpotdiffError

app = typer.Typer(
    name="spotdiff",
    help="Spot the differences between two images, and run the pipeline that trains the learned detector.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    import spotdiff.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"spotdiff.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except SpotdiffError as exc:
        print(f"spotdiff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spotdiff: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # typer/click exits (e.g. --help)
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # click usage errors arrive as click exceptions
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return 2
        if isinstance(exc, click.exceptions.Abort):
            return 1
        raise
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
