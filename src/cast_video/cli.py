"""`cast-video` command line: one module per command under `cast_video.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets `func`.
Modules are imported only when the command line is parsed, so `cast-video info` never imports the
training stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .config_utils import ConfigError

COMMANDS = ["info", "pretrain", "demo", "convert", "train", "eval", "predict", "benchmark"]


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
    except (ConfigError, FileNotFoundError) as err:
        print(f"cast-video {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
