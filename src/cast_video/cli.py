"""`cast-video` command line: one module per command under `cast_video.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets `func`.
Errors a user can fix (a bad config key, a missing file, a checkpoint or annotation that does not fit,
an unreadable video) are printed as one line naming the key or file, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import CastVideoError

COMMANDS = ["info", "pretrain", "demo", "convert", "train", "eval", "predict", "benchmark", "data",
            "explain", "features", "compare", "export", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cast-video", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"cast_video.commands.{name}").register(sub)
    return parser


def one_line(err: BaseException) -> str:
    """The error's message on one line (a message quoting a multi-line cause keeps every part)."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


class _ConsoleHandler(logging.Handler):
    """The library's log records (`logging`, as library code must use) on stderr, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _show_library_log() -> None:
    log = logging.getLogger("cast_video")
    if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
        log.addHandler(_ConsoleHandler())
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_library_log()
    try:
        return args.func(args) or 0
    except (CastVideoError, OSError) as err:  # OSError: a missing, unreadable or unwritable path the user gave
        print(f"cast-video {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
