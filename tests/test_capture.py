"""Cross-attention capture, relevance maps and embeddings against the fused forward pass."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from cast_video import CAST
from cast_video.models.bcast import BCAST, CrossAttentionAdapterExchange, CrossAttentionExchange, WindowCrossAttention
from cast_video.models.cast import member_key


def trained_tiny(**overrides) -> CAST:
    """cast_tiny with every zero-initialised weight moved away from zero, so the exchanges really act."""
    torch.manual_seed(0)
    model = CAST.from_preset("cast_tiny", **overrides).eval()
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def clip(model: CAST, batch: int = 2) -> torch.Tensor:
    cfg = model.config
    return torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(1))


def _expected_shape(window: str, b: int, h: int, t: int, n: int) -> tuple[int, ...]:
    return {"time": (b, h, n, t, t), "space": (b, h, t, n, n), "spacetime": (b, h, t * n, t * n)}[window]


def _apply_map(xattn: WindowCrossAttention, probs: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Eq. 7 by hand from a captured map: the values of the key tokens weighted by the map, then the output
    projection. kv (B, T, N, d) as the module received it -> (B, T, N, d)."""
    for pos in (xattn.pos_kv_time, xattn.pos_kv_space):
        if pos is not None:
            kv = kv + pos
    v = xattn.attn.kv(kv).chunk(2, dim=-1)[1]  # (B, T, N, d)
    v = rearrange(v, "b t n (h e) -> b h t n e", h=xattn.attn.num_heads)
    if xattn.window == "time":
        out = torch.einsum("bhnqk,bhkne->bqnhe", probs, v)
    elif xattn.window == "space":
        out = torch.einsum("bhtqk,bhtke->btqhe", probs, v)
    else:
        t = v.shape[2]
        out = torch.einsum("bhqk,bhke->bqhe", probs, rearrange(v, "b h t n e -> b h (t n) e"))
        out = rearrange(out, "b (t n) h e -> b t n h e", t=t)
    return xattn.attn.proj(rearrange(out, "b t n h e -> b t n (h e)"))


WINDOW_CASES = [
    {},  # the paper's: T2S along time, S2T along space
    {"t2s_window": "space", "s2t_window": "time"},
    {"t2s_window": "spacetime", "s2t_window": "spacetime"},
    {"exchange": "xattn"},
    {"exchange": "xattn_adapter", "bcast_pos_embed": False},
]


@pytest.mark.parametrize("overrides", WINDOW_CASES)
def test_captured_maps_reproduce_the_fused_attention(overrides):
    model = trained_tiny(**overrides)
    video = clip(model)
    seen = {}  # what each cross-attention module received and returned in the plain forward pass

    def spy(name, module, args, output):
        seen[name] = (args[1], output)

    handles = [m.register_forward_hook(lambda mod, a, o, name=name: spy(name, mod, a, o))
               for name, m in model.named_modules() if isinstance(m, WindowCrossAttention)]
    with torch.no_grad():
        plain = model(video)
        logits, maps = model.cross_attention_maps(video)
    for h in handles:
        h.remove()
    assert plain.keys() == logits.keys()
    for task in plain:
        assert torch.equal(plain[task], logits[task])  # capture does not touch the forward pass
    cfg = model.config
    t, n, heads = cfg.num_frames // 2, (cfg.img_size // cfg.spatial.patch_size) ** 2, cfg.spatial.heads
    assert sorted(maps) == list(range(cfg.depth))
    for layer, directions in maps.items():
        assert sorted(directions) == ["s2t", "t2s"]
        for direction, probs in directions.items():
            window = getattr(cfg, f"{direction}_window")
            assert probs.shape == _expected_shape(window, 2, heads, t, n)
            assert probs.dtype == torch.float32 and (probs >= 0).all()
            torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), rtol=0, atol=1e-5)
            xattn = getattr(model.blocks[layer].exchange, direction)
            kv, fused = seen[f"blocks.{layer}.exchange.{direction}"]
            with torch.no_grad():
                torch.testing.assert_close(_apply_map(xattn, probs, kv), fused, rtol=1e-4, atol=1e-5)


def test_maps_are_not_uniform_and_depend_on_the_video():
    model = trained_tiny()
    with torch.no_grad():
        _, a = model.cross_attention_maps(clip(model))
        _, b = model.cross_attention_maps(clip(model) + torch.randn(1))
    s2t = a[0]["s2t"]
    assert (s2t - 1 / s2t.shape[-1]).abs().max() > 1e-3
    assert (a[2]["t2s"] - b[2]["t2s"]).abs().max() > 1e-4


@pytest.mark.parametrize("overrides, layers, directions", [
    ({"bcast_layers": [1, 3]}, [1, 3], ["s2t", "t2s"]),
    ({"t2s": False}, [0, 1, 2, 3], ["s2t"]),
    ({"s2t": False}, [0, 1, 2, 3], ["t2s"]),
    ({"exchange": "lateral"}, [], []),
    ({"exchange": "none"}, [], []),
])
def test_layers_without_cross_attention_have_no_maps(overrides, layers, directions):
    model = trained_tiny(**overrides)
    with torch.no_grad():
        _, maps = model.cross_attention_maps(clip(model, 1))
    assert sorted(maps) == layers
    assert all(sorted(m) == directions for m in maps.values())


def test_capture_leaves_no_hooks_behind():
    model = trained_tiny()
    with torch.no_grad():
        model.cross_attention_maps(clip(model, 1))
    assert all(not m._forward_hooks for m in model.modules())


def test_b16_map_shapes_on_meta():
    with torch.device("meta"):
        model = CAST.from_preset("cast_b16_ek100").eval()
        _, maps = model.cross_attention_maps(torch.empty(1, 3, 16, 224, 224))
    assert maps[11]["t2s"].shape == (1, 12, 196, 8, 8)
    assert maps[0]["s2t"].shape == (1, 12, 8, 196, 196)


def test_variant_classes():
    assert type(trained_tiny().blocks[0].exchange) is BCAST
    assert type(trained_tiny(exchange="xattn").blocks[0].exchange) is CrossAttentionExchange
    assert type(trained_tiny(exchange="xattn_adapter").blocks[0].exchange) is CrossAttentionAdapterExchange
    with pytest.raises(ValueError, match="window must be one of"):
        trained_tiny(t2s_window="diagonal")


# --- relevance -----------------------------------------------------------------------------------
def test_relevance_is_grad_cam_on_the_last_block_entry():
    model = trained_tiny()
    video = clip(model)
    logits, maps = model.relevance_maps(video, {"noun": 3})
    # by hand: run the blocks, cut the graph before the last one, differentiate the chosen logit
    xs, xt = model.spatial.embed(video), model.temporal.embed(video)
    for block, sb, tb in zip(model.blocks[:-1], model.spatial.blocks, model.temporal.blocks, strict=False):
        xs, xt = block(xs, xt, sb, tb)
    xs, xt = xs.detach().requires_grad_(), xt.detach().requires_grad_()
    out = model.forward_head(model.blocks[-1](xs, xt, model.spatial.blocks[-1], model.temporal.blocks[-1]))
    verb = out["verb"].argmax(1)
    gs, gt = torch.autograd.grad(out["verb"].gather(1, verb[:, None]).sum(), [xs, xt], retain_graph=True)
    cam = torch.relu((gt.mean((1, 2), keepdim=True) * xt).sum(-1))
    torch.testing.assert_close(maps["verb"]["temporal"], cam.detach())
    cam_s = torch.relu((gs[:, :, 1:].mean((1, 2), keepdim=True) * xs[:, :, 1:]).sum(-1))
    torch.testing.assert_close(maps["verb"]["spatial"], cam_s.detach())
    assert maps["verb"]["spatial"].shape == (2, 4, 16) and maps["verb"]["spatial"].abs().sum() > 0
    # the noun head reads the spatial class token: the last block's T2S only feeds patches, so the
    # temporal expert cannot reach it from there
    assert maps["noun"]["temporal"].abs().max() == 0
    assert maps["noun"]["spatial"].abs().sum() > 0
    gn = torch.autograd.grad(out["noun"][:, 3].sum(), xs)[0]
    torch.testing.assert_close(maps["noun"]["spatial"],
                               torch.relu((gn[:, :, 1:].mean((1, 2), keepdim=True) * xs[:, :, 1:]).sum(-1)).detach())
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(logits["verb"], out["verb"].detach())


def test_relevance_keeps_no_graph_before_the_last_block():
    """Only the last block is differentiated: the blocks before it keep no activations for autograd (B/16
    with 6 views would need ~14 GB), and the caller's grad mode is left as it was."""
    model = trained_tiny()
    graph = {}
    hooks = [model.blocks[i].register_forward_hook(lambda m, a, out, i=i: graph.update({i: out[0].requires_grad}))
             for i in (0, len(model.blocks) - 2, len(model.blocks) - 1)]
    model.relevance_maps(clip(model), {})
    for h in hooks:
        h.remove()
    assert graph == {0: False, len(model.blocks) - 2: False, len(model.blocks) - 1: True}
    assert torch.is_grad_enabled()
    with torch.no_grad():
        _, maps = model.relevance_maps(clip(model), {})
        assert not torch.is_grad_enabled()
    assert maps["verb"]["temporal"].abs().sum() > 0


# --- embeddings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{}, {"heads": [{"name": "action", "num_classes": 5, "source": "fused"}]},
                                       {"fusion": "concat", "heads": [{"name": "a", "num_classes": 3}]},
                                       {"ensemble": True, "exchange": "none"}])
def test_logits_are_a_linear_layer_of_the_embeddings(overrides):
    model = trained_tiny(**overrides)
    video = clip(model)
    with torch.no_grad():
        emb = model.forward_embeddings(video)
        again = model.forward_embeddings(video)
        logits = model(video)
    state = model.state_dict()
    assert all(torch.equal(emb[k], again[k]) for k in emb)  # deterministic
    for head in model.config.heads:
        if model.config.ensemble:  # each member's logits are its own head on its expert's embedding
            for src, table in (("spatial", "heads"), ("temporal", "heads_t")):
                member = F.linear(emb[src], state[f"{table}.{head.name}.weight"], state[f"{table}.{head.name}.bias"])
                torch.testing.assert_close(logits[member_key(head.name, src)], member, rtol=0, atol=1e-6)
            continue
        w, b = state[f"heads.{head.name}.weight"], state[f"heads.{head.name}.bias"]
        torch.testing.assert_close(logits[head.name], F.linear(emb[head.source], w, b), rtol=0, atol=1e-6)
    widths = {"spatial": model.config.spatial.width, "temporal": model.config.temporal.width}
    for role, width in widths.items():
        assert emb[role].shape == (2, width)
    fuses = not model.config.ensemble and any(h.source == "fused" for h in model.config.heads)
    assert ("fused" in emb) == fuses


def test_an_ensemble_members_relevance_explains_its_heads_target():
    model = trained_tiny(ensemble=True, exchange="none")
    video = clip(model)
    _, by_head = model.relevance_maps(video, {"verb": 2})
    _, by_member = model.relevance_maps(video, {"verb/spatial": 2, "verb/temporal": 2})
    _, predicted = model.relevance_maps(video, {})
    for member in ("verb/spatial", "verb/temporal"):
        for role in ("spatial", "temporal"):
            torch.testing.assert_close(by_head[member][role], by_member[member][role])
    assert any(not torch.equal(by_head[m][r], predicted[m][r]) for m in ("verb/spatial", "verb/temporal")
               for r in ("spatial", "temporal"))  # class 2 is not every view's prediction
