"""Check `load_official_cast` against the official CAST code itself, on random B/16 weights.

The official repository's code is CC-BY-NC and is not part of cast-video: clone it yourself and
point this script at it. It builds the official EK100 (composition heads) and SSV2 (fused head)
models with every weight moved away from its initial value, saves each as a DeepSpeed-style
checkpoint, loads that with `cast_video.load_official_cast` and compares the outputs of both
models on one random clip.

    git clone https://github.com/KHU-VLL/CAST /tmp/CAST
    .venv/bin/python tools/check_official_parity.py --official-repo /tmp/CAST

The official file is imported by `tools/official_cast.py` (timm's four helpers supplied by plain
equivalents).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from official_cast import load_official

from cast_video import load_official_cast


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-repo", required=True, type=Path, help="a clone of KHU-VLL/CAST")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |official - ours|")
    args = parser.parse_args()
    official = load_official(args.official_repo)

    torch.manual_seed(0)
    worst = 0.0
    builds = [("EK100, composition heads", official.compo_bidir_vit_base_patch16_224, {}),
              ("SSV2, fused head (174)", official.bidir_vit_base_patch16_224, {"num_classes": 174})]
    for name, build, kwargs in builds:
        reference = build(all_frames=16, **kwargs).eval()
        with torch.no_grad():  # zero-initialised adapters and up-projections would hide every exchange
            for p in reference.parameters():
                p.add_(0.02 * torch.randn_like(p))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "checkpoint.pt"
            torch.save({"module": reference.state_dict()}, path)
            ours = load_official_cast(str(path)).eval()
        clip = torch.randn(2, 3, 16, 224, 224)  # (B, 3, 2T, H, W)
        with torch.no_grad():
            start = time.perf_counter()
            theirs = reference(clip)
            middle = time.perf_counter()
            mine = ours(clip)
            end = time.perf_counter()
        # the official composition model returns (noun, verb)
        if isinstance(theirs, tuple):
            pairs = {"noun": (theirs[0], mine["noun"]), "verb": (theirs[1], mine["verb"])}
        else:
            pairs = {head: (theirs, logits) for head, logits in mine.items()}  # our one head
        print(f"{name}: {sum(p.numel() for p in reference.parameters()):,} parameters; forward "
              f"{middle - start:.1f} s official, {end - middle:.1f} s ours")
        for task, (a, b) in pairs.items():
            diff = (a - b).abs().max().item()
            worst = max(worst, diff)
            print(f"  {task} {tuple(a.shape)}: max |official - ours| = {diff:.2e} (largest logit {a.abs().max():.2f})")
    print("PASS" if worst <= args.tolerance else "FAIL", f"(worst {worst:.2e}, tolerance {args.tolerance:g})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
