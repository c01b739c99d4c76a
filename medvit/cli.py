"""``medvit <command>``: a thin argparse layer over the library.

Each sub-command lives in ``medvit/commands/<area>.py`` and calls one library function; this module
only builds the parser, sets up logging and turns errors into exit code 1: the user's errors
(:data:`medvit.errors.USER_ERRORS`) print one line, any other exception (a bug) one line naming its type with a
hint; ``-v`` shows the traceback of both.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from medvit import __version__
from medvit.commands import COMMAND_MODULES
from medvit.errors import USER_ERRORS

_logger = logging.getLogger("medvit")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``medvit`` parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="medvit",
        description="Transfer learning with pyramid vision transformers for medical imaging.",
    )
    parser.add_argument("--version", action="version", version=f"medvit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of any error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"medvit.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medvit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except Exception as error:
        if args.verbose:
            raise  # -v: the traceback, for the user's errors too
        if isinstance(error, USER_ERRORS):
            print(f"medvit {args.command}: error: {error}", file=sys.stderr)
        else:
            print(
                f"medvit {args.command}: internal error: {type(error).__name__}: {error} "
                f"(a bug; `medvit -v {args.command} ...` shows the traceback)",
                file=sys.stderr,
            )
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
