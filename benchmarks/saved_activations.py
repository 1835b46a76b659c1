"""What a training forward keeps for backward, by module and by autograd op.

    .venv/bin/python benchmarks/saved_activations.py PRESET [--batch N] [--top K] [--override KEY=VALUE ...]

Runs one training-mode forward of PRESET (random weights) and its stand-in loss under
`torch.autograd.graph.saved_tensors_hooks`: every tensor autograd saves is attributed to the innermost
module running when it was saved, and (walking the graph afterwards) to the backward node that holds
it. Tensors are counted once per storage (views of one tensor share it) and parameters not at all (they
are resident anyway). docs/benchmarks.md ("What training keeps for backward") has the B/16 breakdown.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import torch

from cast_video.benchmark import logits_loss
from cast_video.models import CAST, preset_config
from cast_video.seeds import BENCHMARK_SEED


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def _ops(roots) -> dict[int, str]:
    """Storage pointer -> the name of a backward node that saved it (walking the graph from `roots`)."""
    seen, stack, ops = set(), [r.grad_fn for r in roots if r.grad_fn is not None], {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if attr.startswith("_saved_"):
                try:
                    value = getattr(node, attr)
                except RuntimeError:  # freed or not available
                    continue
                for v in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(v, torch.Tensor):
                        ops.setdefault(_storage(v)[0], node.name())
        stack.extend(n for n, _ in node.next_functions)
    return ops


def tally(model: CAST, video: torch.Tensor) -> dict:
    """{"total_mb", "by_module": {pattern: MB}, "by_op": {op: MB}, "by_module_op": {...}}."""
    params = {_storage(p)[0] for p in model.parameters()} | {_storage(b)[0] for b in model.buffers()}
    stack, where = ["(top)"], {}

    def pre(name):
        return lambda *_: stack.append(name)  # returns None: the input is kept

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre(re.sub(r"\.\d+\.", ".*.", name + ".")[:-1] or "(top)")))
        handles.append(module.register_forward_hook(lambda *_: stack.pop() and None))

    def pack(t):
        ptr, size = _storage(t)
        if ptr not in params and ptr not in where:
            where[ptr] = (stack[-1], size, str(t.dtype).removeprefix("torch."))
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(video)
        loss = logits_loss(out)
    ops = _ops([loss])
    for h in handles:
        h.remove()
    by_module, by_op, by_both = defaultdict(float), defaultdict(float), defaultdict(float)
    for ptr, (module, size, dtype) in where.items():
        op = f"{ops.get(ptr, '?')} ({dtype})"
        by_module[module] += size / 2**20
        by_op[op] += size / 2**20
        by_both[f"{module} | {op}"] += size / 2**20

    def top(d):
        return {k: round(v, 1) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}

    return {"total_mb": round(sum(s for _, s, _ in where.values()) / 2**20, 1), "by_module": top(by_module),
            "by_op": top(by_op), "by_module_op": top(by_both)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    cfg = preset_config(args.preset, args.override)
    torch.manual_seed(BENCHMARK_SEED)
    model = CAST(cfg)
    video = torch.randn(args.batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size)
    result = tally(model, video)
    for key in ("by_module", "by_op", "by_module_op"):
        result[key] = dict(list(result[key].items())[: args.top])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
