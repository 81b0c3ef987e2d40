"""The `matryoshka` command line (`matryoshka.cli:main`) and `mexport`.

docs/design.md, "Errors". Importing this package registers every command on the group.
"""

from matryoshka.cli import (  # noqa: F401  (registers commands)
    bench,
    bundle,
    calibrate,
    imports,
    predict,
    search,
    train,
    tune,
)
from matryoshka.cli.core import cli
from matryoshka.cli.export import mexport


def main() -> None:
    cli()


def mexport_main() -> None:
    mexport()


__all__ = ["cli", "main", "mexport", "mexport_main"]
