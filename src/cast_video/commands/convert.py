"""`cast-video convert`: any supported checkpoint to our format.

  experts   a preset whose experts come from CLIP / VideoMAE checkpoints -> config.json + model.safetensors
  official  a fine-tuned checkpoint of the official CAST repository -> config.json + model.safetensors
  expert    one expert checkpoint -> a single safetensors file that `load_experts` reads (format cast_video)
"""

from __future__ import annotations

import argparse

from safetensors.torch import save

from ..files import atomic_write_bytes
from ..models import CAST, PRESETS, ViTExpert, preset_config
from ..weights import EXPERT_FORMATS, load_expert, load_experts, load_official_cast, save_pretrained


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert expert or official CAST checkpoints to cast-video's format",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="kind", required=True)
    e = kinds.add_parser("experts", help="a CAST preset with expert weights from CLIP / VideoMAE checkpoints")
    e.add_argument("--preset", required=True, choices=sorted(PRESETS))
    e.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    e.add_argument("--spatial", help="spatial expert: file, directory or hub id")
    e.add_argument("--temporal", help="temporal expert: file, directory or hub id")
    e.add_argument("--spatial-format", choices=EXPERT_FORMATS, help="force the format (default: detected)")
    e.add_argument("--temporal-format", choices=EXPERT_FORMATS, help="force the format (default: detected)")
    e.add_argument("--full", action="store_true", help="store the experts' weights, not references to them")
    o = kinds.add_parser("official", help="a fine-tuned checkpoint of the official CAST repository")
    o.add_argument("checkpoint")
    o.add_argument("--preset", choices=sorted(PRESETS), help="check the checkpoint against a preset "
                   "(default: the preset whose shapes match, else a config read from the shapes)")
    o.add_argument("--num-heads", type=int, help="attention heads, when neither a preset nor width/64 gives them")
    x = kinds.add_parser("expert", help="one expert checkpoint to a safetensors file")
    x.add_argument("source", help="file, directory or hub id")
    x.add_argument("--preset", required=True, choices=sorted(PRESETS), help="the preset the expert belongs to")
    x.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    x.add_argument("--role", required=True, choices=("spatial", "temporal"))
    x.add_argument("--format", choices=EXPERT_FORMATS, help="force the format (default: detected)")
    for q in (e, x):
        q.add_argument("--non-strict", action="store_true", help="report unexpected or missing keys, do not fail")
    for q in (e, o, x):
        q.add_argument("--out", required=True, help="output directory (a .safetensors file for `expert`)")
        q.add_argument("--trusted", action="store_true",
                       help="the file is trusted: allow pickles of arbitrary objects, run TorchScript archives")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.kind == "official":
        model = load_official_cast(args.checkpoint, preset=args.preset, trusted=args.trusted,
                                   num_heads=args.num_heads)
        save_pretrained(model, args.out, full=True)  # the official file is the only source of the experts
        print(f"wrote {args.out} (all weights)")
    elif args.kind == "experts":
        model = CAST(preset_config(args.preset, args.set))
        formats = {"spatial": args.spatial_format, "temporal": args.temporal_format}
        reports = load_experts(model, args.spatial, args.temporal, formats, strict=not args.non_strict,
                               trusted=args.trusted)
        for role, report in reports.items():
            print(f"{role}: {report}")
        save_pretrained(model, args.out, full=args.full)
        print(f"wrote {args.out} ({'all weights' if args.full else 'trainable weights + expert references'})")
    else:
        cfg = preset_config(args.preset, args.set)
        expert = ViTExpert(getattr(cfg, args.role), cfg.num_frames, cfg.img_size)
        print(load_expert(expert, args.source, args.format, not args.non_strict, args.trusted))
        atomic_write_bytes(args.out, save({k: v.contiguous() for k, v in expert.state_dict().items()}))
        print(f"wrote {args.out}")
    return 0
