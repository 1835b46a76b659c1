"""`cast-video compare EVAL_A EVAL_B --out DIR`: where model A beats model B, as the paper's figures."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("compare", help="per-class F1 improvement, group F1, harmonic mean, qualitative page")
    p.add_argument("eval_a", help="evaluation folder of model A (what `cast-video eval` writes)")
    p.add_argument("eval_b", help="evaluation folder of model B, on the same videos")
    p.add_argument("--out", required=True)
    p.add_argument("--groups", help="class groups: JSON/YAML {task: {group: [ids]}}, a train config with "
                   "`groups:`, or EK100's noun classes CSV (its `category` column)")
    p.add_argument("--classes", help="a JSON file {task: [names]} (default: the names eval wrote into "
                   "predictions.json)")
    p.add_argument("--hm", nargs="+", metavar="MODEL=DIR,DIR,...",
                   help="harmonic mean of each model's top-1 over several evaluation folders (Figure 4(c))")
    p.add_argument("--config", help="the train config of the evaluated split: finds the videos for the "
                   "qualitative page (default: video ids used as paths)")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--num", type=int, default=12, help="videos on the qualitative page")
    p.set_defaults(func=run)


def _frames_finder(args):
    """video id -> 4 frames of it, or None; ids are looked up in the config's split, else used as paths."""
    from pathlib import Path

    from ..data import read_frames, video_info
    from ..data.sampling import segment_indices

    paths = {}
    if args.config:
        from ..config_utils import load_yaml
        from ..data import load_annotations
        from ..engine import TrainConfig

        samples, _ = load_annotations(load_yaml(TrainConfig, args.config).data, args.split)
        paths = {s.id: (s.path, s.start_frame, s.stop_frame) for s in samples}

    def frames_of(video_id: str):
        path, start, stop = paths.get(video_id, (video_id, 0, None))
        if not Path(path).exists():
            return None
        total = video_info(path).num_frames
        length = (stop + 1 if stop is not None else total) - start
        return read_frames(path, [start + i for i in segment_indices(length, 4, False, view=1, num_views=2)[0]]).numpy()

    return frames_of


def run(args) -> int:
    import json
    from pathlib import Path

    from ..engine.compare import compare, load_eval, read_groups
    from ..errors import ConfigError

    a, b = load_eval(args.eval_a), load_eval(args.eval_b)
    if args.classes:
        a.names = b.names = json.loads(Path(args.classes).read_text())
    across = {}
    for spec in args.hm or []:
        model, _, dirs = spec.partition("=")
        if not dirs:
            raise ConfigError(f"--hm {spec!r}: expected MODEL=DIR,DIR,...")
        across[model] = [load_eval(d) for d in dirs.split(",")]
    groups = read_groups(args.groups) if args.groups else None
    for path in compare(a, b, args.out, groups, across, _frames_finder(args), args.num):
        print(f"wrote {path}")
    return 0
