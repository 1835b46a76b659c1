"""cast-video: train, evaluate and use CAST video classifiers (Cross-Attention in Space and Time).

Your own videos, start to finish (one folder per class):
  cast-video data check my_videos                      decode every clip once, count clips per class
  cast-video train --data my_videos --spatial CLIP --temporal VIDEOMAE
  cast-video eval runs/my_videos                       best checkpoint on the run's validation split
  cast-video predict clip.mp4 --model runs/my_videos   top classes by name

Run `cast-video COMMAND --help` for each command's options. KEY=VALUE overrides (e.g. optim.epochs=10)
may go anywhere on the line. Errors you can fix are printed as one line naming the file or key (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import CastVideoError

# Each module under cast_video.commands defines `register(subparsers)`, which adds its parser and sets `func`.
COMMANDS = ["info", "pretrain", "demo", "convert", "train", "eval", "predict", "benchmark", "data",
            "explain", "features", "compare", "export", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cast-video", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """KEY=VALUE overrides are accepted after options too (`eval RUN --checkpoint X optim.batch_size=2`):
    argparse stops filling a positional list at the first option, so the rest is gathered here."""
    args, rest = parser.parse_known_args(argv)
    extra = [a for a in rest if "=" in a and not a.startswith("-")]
    if len(extra) != len(rest) or (extra and not hasattr(args, "overrides")):
        parser.parse_args(argv)  # argparse's own error for what is not an override
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(build_parser(), argv)
    _show_library_log()
    code, together = _run(args)
    _leave_process_group(together)
    return code


def _run(args: argparse.Namespace) -> tuple[int, bool]:
    """The command's exit status, and whether it ended where every other torchrun rank ends too (it
    returned, or raised an error that every rank raises at the same point, such as `NonFiniteLoss`)."""
    try:
        return args.func(args) or 0, True
    except (CastVideoError, OSError) as err:  # OSError: a missing, unreadable or unwritable path the user gave
        print(f"cast-video {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2, getattr(err, "on_every_rank", False)


def _leave_process_group(together: bool) -> None:
    """A command run under torchrun leaves its process group here, after all of its output: torchrun stops
    every other rank as soon as one exits, so when the ranks ended together each waits for the others'
    last lines before any of them exits."""
    if "torch.distributed" not in sys.modules:  # no command that could have joined a group ran
        return
    from .engine.distributed import close_distributed

    sys.stdout.flush()
    sys.stderr.flush()
    close_distributed(wait=together)


if __name__ == "__main__":
    sys.exit(main())
