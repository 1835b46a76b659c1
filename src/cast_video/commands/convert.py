"""`cast-video convert`: any supported checkpoint to our format (`config.json` + `model.safetensors`)."""

from __future__ import annotations

from ..models import CAST, PRESETS, preset_config
from ..weights import EXPERT_FORMATS, load_official_cast


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert expert or official CAST checkpoints to cast-video's format")
    kinds = p.add_subparsers(dest="kind", required=True)
    e = kinds.add_parser("experts", help="a CAST preset with expert weights from CLIP / VideoMAE checkpoints")
    e.add_argument("--preset", required=True, choices=sorted(PRESETS))
    e.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    e.add_argument("--spatial", help="spatial expert: file, directory or hub id")
    e.add_argument("--temporal", help="temporal expert: file, directory or hub id")
    e.add_argument("--format", choices=EXPERT_FORMATS, help="force the source format (default: detected)")
    o = kinds.add_parser("official", help="a fine-tuned checkpoint of the official CAST repository")
    o.add_argument("checkpoint")
    o.add_argument("--preset", choices=sorted(PRESETS), help="check the checkpoint against a preset")
    for q in (e, o):
        q.add_argument("--out", required=True, help="output directory")
        q.add_argument("--full", action="store_true", help="store the experts' weights too")
        q.add_argument("--trusted", action="store_true", help="allow pickles that hold more than tensors")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.kind == "official":
        model = load_official_cast(args.checkpoint, preset=args.preset, trusted=args.trusted)
        model.expert_sources = {}
        full = True  # the official file is the only source of the experts' weights
    else:
        model = CAST(preset_config(args.preset, args.set))
        for role, report in model.load_experts(args.spatial, args.temporal, args.format,
                                               trusted=args.trusted).items():
            print(f"{role}: {report}")
        full = args.full
    model.save_pretrained(args.out, full=full)
    print(f"wrote {args.out} ({'all weights' if full else 'trainable weights + expert references'})")
    return 0
