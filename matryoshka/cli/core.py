"""The `matryoshka` command line: one click group, every heavy import done lazily.

docs/design.md, "Errors": every failure prints one `error: ...` line, exit 2 for the user's mistake
and 1 for the environment, with no traceback (--debug shows it). `matryoshka predict` must run
where torch is not installed, so nothing here imports torch at module level. One module per
command; this one holds the group and the error handling they share.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import click

from matryoshka import __version__
from matryoshka.errors import MatryoshkaError

DEMO_CHECKPOINT = "artifacts/demo/checkpoint"
DEMO_EXPORT = "artifacts/demo/export"


def _standalone(command: click.Command, args, prog_name, extra) -> None:
    """Run a click command so that every failure, click's own included, is one `error:` line:
    exit 2 for a user's mistake, 1 for the environment (a full disk, a permission) or a bug
    of ours. --debug (or MATRYOSHKA_DEBUG=1) lets the traceback through instead."""
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args or os.environ.get("MATRYOSHKA_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]  # accepted before or after the command name
    try:
        rv = click.Command.main(command, args=args, prog_name=prog_name, standalone_mode=False,
                                **extra)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _say_error(e.format_message())
        sys.exit(2)
    except MatryoshkaError as e:
        if debug:
            raise
        _say_error(str(e))
        sys.exit(e.exit_code)
    except OSError as e:
        if debug:
            raise
        _say_error(_os_message(e))
        sys.exit(1)
    except Exception as e:  # a bug of ours: still one line, the traceback behind --debug
        if debug:
            raise
        _say_error(f"internal error ({type(e).__name__}: {e}); rerun with --debug for the "
                   "traceback")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


def _os_message(e: OSError) -> str:
    """'No space left on device: artifacts/demo/export/manifest.json' and the like."""
    what = e.strerror or str(e)
    return f"{what}: {e.filename}" if e.filename else what


RANK_GRACE_S = 2.0  # how long another rank waits for rank 0 to speak before it exits


def _say_error(message: str) -> None:
    """Print the error once, on one line: under torchrun every rank fails alike, so rank 0
    alone speaks. torchrun stops every rank as soon as one exits, so the others first leave
    rank 0 the time to print (without it, rank 1 failing first left no line at all)."""
    if os.environ.get("RANK", "0") == "0":
        click.echo("error: " + " ".join(str(message).split()), err=True)
    else:
        time.sleep(RANK_GRACE_S)


def debug_option(f):
    """--debug is read by `_standalone` before click parses anything; this only documents it."""
    return click.option("--debug", is_flag=True, expose_value=False,
                        help="Show the traceback of a failure.")(f)


class Group(click.Group):
    def main(self, args=None, prog_name=None, **extra):  # noqa: D102
        _standalone(self, args, prog_name, extra)


class Command(click.Command):
    def main(self, args=None, prog_name=None, **extra):  # noqa: D102
        _setup_logging(False)
        _standalone(self, args, prog_name, extra)


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter())
    root = logging.getLogger("matryoshka")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False


@click.group(cls=Group)
@click.version_option(__version__, prog_name="matryoshka")
@debug_option
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Train one nested-width Transformer, export one ONNX graph per level, run the cascade."""
    _setup_logging(verbose)


def text_columns(f):
    """The options that say how raw text data is read: --text-column, --label-column and
    --split-seed (train and import take the same)."""
    options = [
        click.option("--text-column", default="text", show_default=True,
                     help="Raw text: the column holding the text."),
        click.option("--label-column", default="label", show_default=True,
                     help="Raw text: the column holding the label."),
        click.option("--split-seed", type=int, default=0, show_default=True,
                     help="Raw text in one file: seed of its 80/10/10 train/val/test split."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"needs comma-separated numbers, got {text!r}",
                                 param_hint=what) from None


def parse_label_map(text: str | None) -> dict[str, str] | None:
    """--label-map "pos=POSITIVE,neg=NEGATIVE": data class name -> model class name."""
    if text is None:
        return None
    pairs = [p for p in text.split(",") if p.strip()]
    out: dict[str, str] = {}
    for pair in pairs:
        data, sep, model = pair.partition("=")
        if not sep or not data.strip() or not model.strip():
            raise click.BadParameter(f"needs DATA=MODEL pairs separated by commas, got "
                                     f"{pair!r}", param_hint="--label-map")
        if data.strip() in out:
            raise click.BadParameter(f"names the data class {data.strip()!r} twice",
                                     param_hint="--label-map")
        out[data.strip()] = model.strip()
    if not out:
        raise click.BadParameter("needs at least one DATA=MODEL pair", param_hint="--label-map")
    if len(set(out.values())) != len(out):
        raise click.BadParameter("maps two data classes to one model class",
                                 param_hint="--label-map")
    return out


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"needs comma-separated integers, got {text!r}",
                                 param_hint=what) from None
    if not values:
        raise click.BadParameter("needs at least one value", param_hint=what)
    return values


def check_destination(option: str, target: str | None) -> None:
    """A file to write later: its folder must exist now, and it must not be a folder."""
    from pathlib import Path

    from matryoshka.errors import ConfigError

    if target is None:
        return
    path = Path(target)
    if path.is_dir():
        raise ConfigError(f"{option} {target} is a folder; name a file")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {target}: the folder {path.parent} does not exist")
