"""Looking inside CAST: the cross-attention maps of every B-CAST layer and a class-specific relevance map.

Both are opt-in and leave the forward pass as it is. Cross-attention is captured by forward hooks on the
`WindowCrossAttention` modules: while `capture_cross_attention` is open, each hook recomputes
softmax(q k^T / sqrt(d)) (eq. 7) from the module's own projections of the inputs it was just called
with; the fused kernel still computes the output, so logits are bit-identical with and without capture.

Map layouts (B views, H heads, T steps, N patches; every map sums to 1 over its last axis, the keys):
  window "time" (T2S by default):   (B, H, N, T, T)  a patch place, its query step, the key steps
  window "space" (S2T by default):  (B, H, T, N, N)  a step, its query patch, the key patches
  window "spacetime":               (B, H, T*N, T*N) query t*N + n, key t'*N + n'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from .bcast import CrossExchange, WindowCrossAttention

DIRECTIONS = ("t2s", "s2t")


def _record(store: dict[str, torch.Tensor], direction: str, module: WindowCrossAttention, args, output) -> None:
    with torch.no_grad():
        store[direction] = module.attention_map(*args)


@contextmanager
def capture_cross_attention(model: nn.Module) -> Iterator[dict[int, dict[str, torch.Tensor]]]:
    """Collect {block index: {"t2s": map, "s2t": map}} of every forward pass run inside the block.

    Blocks without cross-attention (the layers `bcast_layers` leaves out, lateral or no exchange) have no
    entry; a one-direction model (Table 1(g)) has only that direction. A second forward pass inside the
    same block overwrites the maps of the first.
    """
    maps: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for index, block in enumerate(model.blocks):
        if not isinstance(block.exchange, CrossExchange):
            continue
        for direction in DIRECTIONS:
            xattn = getattr(block.exchange, direction)
            if xattn is not None:
                handles.append(xattn.register_forward_hook(partial(_record, maps.setdefault(index, {}), direction)))
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def relevance_maps(model: nn.Module, video: torch.Tensor, targets: dict[str, int | torch.Tensor | None],
                   layer: int = -1) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Grad-CAM per head over each expert's patch tokens as they enter block `layer` (default: the last).

    For head h and target class c (None: the predicted one; an ensemble member `h/spatial` without its own
    target takes h's), with A the tokens (B, T, N, D) of an expert
    and w = mean over tokens of d logit_c / dA, the relevance is ReLU(sum_D w * A) (B, T, N). An expert
    the head cannot read through the remaining blocks gets zeros; e.g. a spatial-source head (the mean
    class token) never reads the temporal expert through the last block, whose T2S only feeds patches.
    Returns the logits and {head: {"spatial": (B, T, N), "temporal": (B, T, N)}}; the model's parameters
    receive no gradient.
    """
    block = model.blocks[layer]
    entry: dict[str, torch.Tensor] = {}

    def detach_inputs(module, args):  # the tokens become leaves, so only they receive gradients
        torch.set_grad_enabled(True)  # a graph from here on only; the `no_grad` below restores the mode
        xs, xt = (a.detach().requires_grad_(True) for a in args[:2])
        entry.update(spatial=xs, temporal=xt)
        return (xs, xt, *args[2:])

    handle = block.register_forward_pre_hook(detach_inputs)
    try:
        # The blocks before `layer` keep no graph (for B/16 with 6 views, ~14 GB of activations otherwise)
        with torch.no_grad():
            logits = model(video)
    finally:
        handle.remove()
    prefix = {"spatial": model.spatial.num_prefix, "temporal": model.temporal.num_prefix}
    maps = {}
    with torch.enable_grad():  # the chosen logits are taken on the graph, whatever the caller's mode
        for head, out in logits.items():
            scores = out  # (B, C); an ensemble's members have their own entries (`verb/spatial`, ...)
            target = targets.get(head, targets.get(head.split("/")[0]))  # a member without a target: its head's
            cls = scores.argmax(-1) if target is None else torch.as_tensor(target).expand(scores.shape[0])
            chosen = scores.gather(1, cls.view(-1, 1).to(scores.device)).sum()
            grads = torch.autograd.grad(chosen, [entry["spatial"], entry["temporal"]], retain_graph=True,
                                        allow_unused=True)
            maps[head] = {}
            for (role, tokens), grad in zip(entry.items(), grads, strict=True):
                patches = tokens[:, :, prefix[role]:].detach()  # (B, T, N, D)
                g = torch.zeros_like(patches) if grad is None else grad[:, :, prefix[role]:]
                weights = g.mean((1, 2), keepdim=True)  # (B, 1, 1, D)
                maps[head][role] = torch.relu((weights * patches).sum(-1)).float()  # (B, T, N)
    return {k: v.detach() for k, v in logits.items()}, maps
