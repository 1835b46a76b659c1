"""`cast-video` command line: one module per command under `cast_video.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets `func`.
Errors a user can fix (a bad config key, a missing file, a checkpoint or annotation that does not fit,
an unreadable video) are printed as one line naming the key or file, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CastVideoError

COMMANDS = ["info", "pretrain", "demo", "convert", "train", "eval", "predict", "benchmark", "data"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cast-video", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"cast_video.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (CastVideoError, FileNotFoundError) as err:
        print(f"cast-video {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
