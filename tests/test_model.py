"""The model against the paper's numbers and against properties that must hold by construction."""

import math

import pytest
import torch

from cast_video import CAST
from cast_video.config_utils import ConfigError
from cast_video.models import ABLATIONS, preset_config
from cast_video.models.bcast import BCAST, BCASTConfig, WindowCrossAttention
from cast_video.models.counting import count_gmacs, count_parameters
from cast_video.models.layers import sinusoid_table


def tiny(**overrides) -> CAST:
    torch.manual_seed(0)
    return CAST.from_preset("cast_tiny", **overrides).eval()


def clip(model: CAST, batch: int = 2) -> torch.Tensor:
    cfg = model.config
    return torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size)


def randomize_trainable(model: CAST) -> None:
    """Move every zero-initialised trainable weight away from zero, so exchanges really act."""
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))


# --- the paper's counts (measured on the official implementation) -------------------------------
@pytest.mark.parametrize(
    "preset, total, trainable",
    [
        ("cast_b16_ek100", 216_808_333, 44_784_781),
        ("cast_b16_k400", 172_023_552 + 45_378_832, 45_378_832),
        ("cast_b16_ssv2", 172_023_552 + 45_205_038, 45_205_038),
    ],
)
def test_parameter_counts_match_official(preset, total, trainable):
    with torch.device("meta"):
        counts = count_parameters(CAST.from_preset(preset))
    assert counts == {"params_total": total, "params_trainable": trainable}


def test_gmacs_per_view_match_official():
    assert count_gmacs(preset_config("cast_b16_ek100")) == pytest.approx(390.5, abs=0.05)


def test_gmacs_count_attention_by_hand():
    """Doubling the frames doubles the linear work and quadruples the joint space-time attention."""
    base = preset_config("cast_tiny", {"exchange": "none", "adapters": False})
    cfg = base
    d, n, t, depth = cfg.temporal.width, (cfg.img_size // 8) ** 2, cfg.num_frames // 2, cfg.temporal.depth
    # Temporal expert alone, by hand: per block qkv + proj + mlp (4 + 8 D^2 per token) and
    # the two attention matmuls (2 * L^2 * D), plus the Conv3d tubelet embedding.
    tokens = t * n
    block = tokens * (4 * d * d + 8 * d * d) + 2 * tokens * tokens * d
    embed = tokens * d * 3 * 2 * 8 * 8
    spatial_tokens = n + 1
    s_block = t * (spatial_tokens * 12 * d * d + 2 * spatial_tokens**2 * d)
    s_embed = t * n * d * 3 * 8 * 8
    heads = d * 8 + d * 10
    expected = depth * (block + s_block) + embed + s_embed + heads
    assert count_gmacs(cfg) * 1e9 == pytest.approx(expected, rel=1e-9)


# --- properties -----------------------------------------------------------------------------
def test_zero_initialised_cast_equals_the_frozen_experts():
    model = tiny()
    video = clip(model)
    with torch.no_grad():
        xs, xt = model.forward_features(video)
        ref_s = model.spatial.forward_tokens(video, joint_time=False)[-1]
        ref_t = model.temporal.forward_tokens(video, joint_time=True)[-1]
    torch.testing.assert_close(xs, ref_s, rtol=0, atol=1e-6)
    torch.testing.assert_close(xt, ref_t, rtol=0, atol=1e-6)
    # and the exchange is not a no-op once trained
    randomize_trainable(model)
    with torch.no_grad():
        xs2, _ = model.forward_features(video)
    assert (xs2 - ref_s).abs().max() > 1e-3


def test_spatial_expert_sees_odd_frames_only():
    model = tiny()
    video = clip(model, 1)
    changed = video.clone()
    changed[:, :, 0::2] += 1.0  # frames 0, 2, 4, ...
    with torch.no_grad():
        a = model.spatial.embed(video)
        b = model.spatial.embed(changed)
        c = model.temporal.embed(video)
        d = model.temporal.embed(changed)
    torch.testing.assert_close(a, b)
    assert (c - d).abs().max() > 0


def test_an_expert_with_its_own_pixel_statistics_sees_the_same_pixels():
    from cast_video.normalization import PIXEL_STATS

    def normalise(pixels, name):
        mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in PIXEL_STATS[name])
        return (pixels - mean) / std

    plain = tiny()
    own = tiny(**{"spatial.norm": "clip"})  # input stays ImageNet-normalised (input_norm), CLIP converts it
    own.load_state_dict(plain.state_dict())
    pixels = torch.rand(2, 3, plain.config.num_frames, plain.config.img_size, plain.config.img_size)
    with torch.no_grad():
        xs, xt = own.forward_features(normalise(pixels, "imagenet"))
        ref_s = plain.spatial.forward_tokens(normalise(pixels, "clip"), joint_time=False)[-1]
        ref_t = plain.temporal.forward_tokens(normalise(pixels, "imagenet"), joint_time=True)[-1]
        unconverted = plain.spatial.forward_tokens(normalise(pixels, "imagenet"), joint_time=False)[-1]
    torch.testing.assert_close(xs, ref_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xt, ref_t, rtol=0, atol=1e-6)
    assert (unconverted - ref_s).abs().max() > 1e-3  # the two statistics really differ
    with pytest.raises(ValueError, match="expert norm must be one of"):
        tiny(**{"spatial.norm": "bgr"})


def _window_probe(window: str, q_pos: tuple[int, int], kv_pos: tuple[int, int]) -> float:
    torch.manual_seed(0)
    attn = WindowCrossAttention(16, 2, window, num_steps=4, num_patches=6, pos_embed=True)
    q, kv = torch.randn(1, 4, 6, 16), torch.randn(1, 4, 6, 16)
    base = attn(q, kv)
    kv2 = kv.clone()
    kv2[0, kv_pos[0], kv_pos[1]] += 5.0
    return (attn(q, kv2) - base)[0, q_pos[0], q_pos[1]].abs().max().item()


def test_t2s_attends_along_time_only():
    assert _window_probe("time", (1, 2), (3, 2)) > 1e-4  # same place, other time: inside the window
    assert _window_probe("time", (1, 2), (1, 3)) == 0.0  # same time, other place: outside
    assert _window_probe("time", (1, 2), (3, 4)) == 0.0


def test_s2t_attends_along_space_only():
    assert _window_probe("space", (1, 2), (1, 5)) > 1e-4  # same time, other place: inside
    assert _window_probe("space", (1, 2), (2, 2)) == 0.0  # other time: outside
    assert _window_probe("spacetime", (1, 2), (3, 5)) > 1e-4


def test_bcast_class_token_skips_cross_attention():
    torch.manual_seed(0)
    ex = BCAST(BCASTConfig(dim_s=16, dim_t=16, num_steps=2, num_patches=4, dim=8, heads=2, prefix_s=1, prefix_t=0))
    for p in ex.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ys, yt = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 4, 16)
    ds, dt = ex(ys, yt)
    yt2 = yt + torch.randn_like(yt)
    ds2, dt2 = ex(ys, yt2)
    torch.testing.assert_close(ds[:, :, 0], ds2[:, :, 0])  # class token: no cross-attention
    assert (ds[:, :, 1:] - ds2[:, :, 1:]).abs().max() > 1e-4
    # but the class token still goes through down / LN / GELU / up
    assert ds[:, :, 0].abs().max() > 0
    # and the temporal side does not read the spatial class token
    ys2 = ys.clone()
    ys2[:, :, 0] += 3.0
    torch.testing.assert_close(ex(ys2, yt)[1], dt)


def test_gradients_reach_only_trainable_parameters():
    model = tiny()
    model.train()
    randomize_trainable(model)
    out = model(clip(model))
    sum(v.sum() for v in out.values()).backward()
    trainable = {n for n, _ in model.trainable_parameters()}
    assert trainable, "nothing to train"
    # The last block's T2S reaches only spatial patch tokens, which the head (mean class token)
    # never reads: its gradient exists but is zero, as in the official model.
    dead = f"blocks.{model.config.depth - 1}.exchange.t2s."
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None, name
            assert name.startswith(dead) or p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert all(n.startswith(("blocks.", "heads.", "fuse_", "spatial.norm.", "temporal.norm."))
               for n in trainable)


def test_layer_ids_for_layer_decay():
    model = tiny()
    depth = model.config.depth
    assert model.layer_id("spatial.patch_embed.weight") == 0
    assert model.layer_id("temporal.blocks.2.attn.qkv.weight") == 3
    assert model.layer_id("blocks.2.exchange.t2s.attn.q.weight") == 3
    assert model.layer_id("heads.verb.weight") == depth + 1
    assert model.layer_id("spatial.norm.weight") == depth + 1


def test_sinusoid_table_matches_formula():
    table = sinusoid_table(5, 6)
    for p in range(5):
        for j in range(6):
            angle = p / 10000 ** (2 * (j // 2) / 6)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert table[p, j].item() == pytest.approx(expected, abs=1e-6)


# --- ablations and generality ---------------------------------------------------------------
def _sides_reached(model: CAST) -> dict[str, set[str]]:
    """Which expert's side (its adapters, its final norm, or the whole expert when fine-tuned) gets a
    non-zero gradient from each head's loss alone."""
    out = model(clip(model))
    reached = {}
    for head in ("verb", "noun"):
        model.zero_grad(set_to_none=True)
        out[head].square().sum().backward(retain_graph=True)
        reached[head] = {side for side, mark in (("spatial", "s"), ("temporal", "t")) if any(
            p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.trainable_parameters()
            if n.startswith(f"{side}.") or f".{mark}_attn_adapter." in n or f".{mark}_mlp_adapter." in n)}
    return reached


# ablation -> (names its trainable parameters must contain, names none may contain,
#              verb loss reaches the spatial side, noun loss reaches the temporal side)
ABLATION_BEHAVIOUR = {
    None: ({"exchange.down_s", "exchange.s2t.attn", "pos_q_time", "pos_q_space"}, {"heads_t", "t_to_s"}, True, True),
    "independent": ({"spatial.blocks.0.attn", "temporal.blocks.3.mlp"}, {"adapter", "exchange"}, False, False),
    "independent_adapters": ({"s_attn_adapter", "t_mlp_adapter"}, {"exchange", "spatial.blocks"}, False, False),
    "identity": ({"s_attn_adapter", "t_mlp_adapter"}, {"exchange", "spatial.blocks"}, False, False),
    "ensemble": ({"heads_t.verb", "heads.noun"}, {"exchange"}, True, True),  # every head on both experts
    "late_add": ({"heads.verb"}, {"exchange", "fuse_s"}, True, True),  # fused heads mix them at the end
    "late_concat": ({"heads.noun"}, {"exchange", "fuse_s"}, True, True),
    "lateral": ({"exchange.t_to_s", "exchange.s_to_t"}, {"exchange.t2s"}, True, True),
    "xattn_no_adapter": ({"exchange.t2s.attn"}, {"down_s", "up_s"}, True, True),
    "xattn_then_adapter": ({"exchange.up_s.fc1", "exchange.up_t.fc2"}, {"down_s"}, True, True),
    "s2t_only": ({"exchange.s2t"}, {"exchange.t2s", "up_s"}, True, False),  # only the temporal side hears
    "t2s_only": ({"exchange.t2s"}, {"exchange.s2t", "up_t"}, False, True),
    "no_bcast_pos": ({"exchange.t2s.attn"}, {"pos_q", "pos_kv"}, True, True),
}


@pytest.mark.parametrize("ablation", [None, *sorted(ABLATIONS)])
def test_every_ablation_trains_what_it_should_and_exchanges_what_it_should(ablation):
    assert set(ABLATION_BEHAVIOUR) == {None, *ABLATIONS}  # a new ablation needs its row here
    must, never, verb_to_spatial, noun_to_temporal = ABLATION_BEHAVIOUR[ablation]
    torch.manual_seed(0)
    model = CAST(preset_config("cast_tiny", ablation=ablation)).train()
    randomize_trainable(model)
    trainable = {n for n, _ in model.trainable_parameters()}
    assert all(any(m in n for n in trainable) for m in must), must
    assert not any(m in n for n in trainable for m in never), never
    out = model(clip(model))
    assert out["verb"].shape == (2, 8) and out["noun"].shape == (2, 10)
    sum(v.sum() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name  # frozen weights get no gradient at all
    reached = _sides_reached(model)
    assert reached["verb"] == {"temporal"} | ({"spatial"} if verb_to_spatial else set())
    assert reached["noun"] == {"spatial"} | ({"temporal"} if noun_to_temporal else set())


def test_ablation_structure():
    def trainable(**kw):
        with torch.device("meta"):
            return count_parameters(CAST(preset_config("cast_b16_ek100", **kw)))["params_trainable"]

    base = trainable()
    assert trainable(ablation="independent") > 170e6  # the experts are fine-tuned
    assert trainable(ablation="identity") == trainable(ablation="independent_adapters") < base
    assert trainable(ablation="s2t_only") < base and trainable(ablation="t2s_only") < base
    # Table 1(c): X-attn -> adapter has exactly one 1/4 adapter per expert per block more than w/o adapter
    diff = trainable(ablation="xattn_then_adapter") - trainable(ablation="xattn_no_adapter")
    assert diff == 12 * 2 * (768 * 192 + 192 + 192 * 768 + 768)
    # Table 1(d): the bottleneck grows with the ratio; Table 1(f): fewer layers, fewer parameters
    assert trainable(overrides={"bcast_ratio": 0.125}) < trainable(overrides={"bcast_ratio": 1.0})
    assert trainable(overrides={"bcast_layers": [9, 10, 11]}) < base
    # Table 8: the position embeddings are 12 x (2 x 8 + 2 x 196) x 384 parameters
    assert base - trainable(ablation="no_bcast_pos") == 12 * (2 * 8 + 2 * 196) * 384


def _probe(attn, q_pos: tuple[int, int], kv_pos: tuple[int, int]) -> float:
    """How much query token (t, n) moves when key/value token (t', n') changes."""
    torch.manual_seed(1)
    dim = attn.attn.q.in_features
    q, kv = torch.randn(1, 4, 16, dim), torch.randn(1, 4, 16, dim)  # cast_tiny: T = 4 steps of N = 16 patches
    kv2 = kv.clone()
    kv2[0, kv_pos[0], kv_pos[1]] += 5.0
    with torch.no_grad():
        return (attn(q, kv2) - attn(q, kv))[0, q_pos[0], q_pos[1]].abs().max().item()


@pytest.mark.parametrize("window", ["time", "space", "spacetime"])
def test_window_shapes_of_the_built_model(window):
    """The model's own cross-attentions of every block use the configured window, in both directions:
    another time at the same place is inside a time or space-time window, another place at the same time
    inside a space or space-time window; position tables follow the window."""
    model = tiny(t2s_window=window, s2t_window=window)
    for block in model.blocks:
        for attn in (block.exchange.t2s, block.exchange.s2t):
            assert attn.window == window
            assert (attn.pos_q_time is not None) == (window != "space")
            assert (attn.pos_kv_space is not None) == (window != "time")
    for attn in (model.blocks[0].exchange.t2s, model.blocks[-1].exchange.s2t):
        other_time, other_place = _probe(attn, (1, 2), (3, 2)), _probe(attn, (1, 2), (1, 7))
        assert (other_time > 1e-4) == (window != "space") and (other_time == 0.0) == (window == "space")
        assert (other_place > 1e-4) == (window != "time") and (other_place == 0.0) == (window == "time")
        assert (_probe(attn, (1, 2), (3, 7)) > 1e-4) == (window == "spacetime")


def _sees_even_frames(expert) -> bool:
    video = torch.randn(1, 3, 8, 32, 32)
    changed = video.clone()
    changed[:, :, 0::2] += 1.0  # frames 0, 2, 4, 6
    with torch.no_grad():
        return (expert.embed(video) - expert.embed(changed)).abs().max().item() > 0


@pytest.mark.parametrize("arches", [("clip", "videomae"), ("videomae", "clip"), ("clip", "clip"),
                                    ("videomae", "videomae")])
def test_roles_can_be_swapped(arches):
    """Table 1(h): an expert is its architecture wherever it sits: CLIP takes one frame in two with a class
    token, VideoMAE takes 2-frame tubes without one; the heads read the class token or the mean tokens."""
    model = tiny(**{"spatial.arch": arches[0], "temporal.arch": arches[1]})
    randomize_trainable(model)
    for expert, arch in zip((model.spatial, model.temporal), arches, strict=True):
        assert _sees_even_frames(expert) == (arch == "videomae")
        assert expert.num_prefix == (arch == "clip")
    with torch.no_grad():
        xs, xt = model.forward_features(clip(model))
        out = model(clip(model))
    assert xs.shape == (2, 4, 16 + (arches[0] == "clip"), 64) and xt.shape == (2, 4, 16 + (arches[1] == "clip"), 64)
    assert out["verb"].shape == (2, 8) and out["noun"].shape == (2, 10)


def test_experts_of_different_widths_exchange_and_fuse():
    model = tiny(**{"temporal.width": 96, "temporal.heads": 6})
    ex = model.blocks[0].exchange
    widths = (ex.down_s.in_features, ex.down_t.in_features, ex.up_s.out_features, ex.up_t.out_features)
    assert widths == (64, 96, 64, 96)
    assert ex.down_s.out_features == ex.down_t.out_features == 32  # bottleneck: 1/2 of the narrower expert
    randomize_trainable(model)
    video = clip(model)
    with torch.no_grad():
        xs, xt = model.forward_features(video)
        alone = model.temporal.forward_tokens(video, joint_time=True)[-1]
    assert xs.shape == (2, 4, 17, 64) and xt.shape == (2, 4, 16, 96)
    assert (xt - alone).abs().max() > 1e-3  # the wide expert really hears the narrow one
    fused = CAST(preset_config("cast_tiny", {"temporal.width": 96, "temporal.heads": 6,
                                             "heads": [{"name": "action", "num_classes": 5}]}))
    assert (fused.fuse_s.fc2.out_features, fused.fuse_t.fc2.out_features) == (64, 64)  # both to the spatial width
    assert fused(clip(fused))["action"].shape == (2, 5)  # a single head is keyed by its name too


def test_other_sizes_and_frame_counts():
    """48 x 48 pixels and 12 frames: 6 x 6 patches, 6 steps, every position table sized to match, and the
    untrained CAST still equals its frozen experts."""
    model = tiny(img_size=48, num_frames=12)
    video = clip(model, 1)
    assert model.spatial.pos_embed.shape == (37, 64) and model.temporal.pos_embed.shape == (6 * 36, 64)
    t2s = model.blocks[0].exchange.t2s
    assert t2s.pos_q_time.shape == (6, 1, 32) and model.blocks[0].exchange.s2t.pos_q_space.shape == (36, 32)
    with torch.no_grad():
        xs, xt = model.forward_features(video)
        ref_s = model.spatial.forward_tokens(video, joint_time=False)[-1]
        ref_t = model.temporal.forward_tokens(video, joint_time=True)[-1]
    assert xs.shape == (1, 6, 37, 64) and xt.shape == (1, 6, 36, 64)
    torch.testing.assert_close(xs, ref_s, rtol=0, atol=1e-6)
    torch.testing.assert_close(xt, ref_t, rtol=0, atol=1e-6)
    assert model(video)["verb"].shape == (1, 8)
    with pytest.raises(ValueError, match="divisible"):
        tiny(img_size=30)
    with pytest.raises(ValueError, match="even number"):
        tiny(num_frames=7)
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 32, 32\)"):
        tiny()(torch.randn(1, 3, 6, 32, 32))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="did you mean 'bcast_ratio'"):
        preset_config("cast_tiny", {"bcast_ration": 0.5})
    with pytest.raises(ConfigError, match="spatial.width: expected an integer"):
        preset_config("cast_tiny", ["spatial.width=wide"])
    with pytest.raises(ConfigError, match="exchange must be one of"):
        preset_config("cast_tiny", {"exchange": "magic"})
