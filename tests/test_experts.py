"""Any expert: SigLIP, DINOv2 (with and without registers) and V-JEPA 2 against transformers' own forward.

Each test builds a tiny transformers model from a config (offline), saves it, loads it as our expert
and compares token features and pooled features in float32. transformers is the independent truth.
"""

import pytest
import torch
from einops import rearrange
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    VideoMAEConfig,
    VideoMAEModel,
    VJEPA2Config,
    VJEPA2Model,
)

from cast_video import CAST, from_pretrained, save_pretrained
from cast_video.cli import main
from cast_video.models import CASTConfig, ExpertConfig, HeadConfig, ViTExpert
from cast_video.normalization import PIXEL_STATS
from cast_video.weights import WeightsError, detect_format, load_expert
from cast_video.weights.experts import experts_config, from_experts, read_expert

WIDTH, DEPTH, HEADS, PATCH, FRAMES = 32, 2, 4, 8, 4
SMALL = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, patch_size=PATCH)


def _randomise(model):
    """Random values everywhere (LayerNorms and LayerScales too), so that no weight can be silently skipped."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.numel() == WIDTH else 0.0))
    return model.eval()


def _siglip(size=32):
    return _randomise(SiglipVisionModel(SiglipVisionConfig(**SMALL, intermediate_size=48, image_size=size)))


def _dinov2(size=32, registers=0):
    if registers:
        cfg = Dinov2WithRegistersConfig(**SMALL, mlp_ratio=3, image_size=size, num_register_tokens=registers)
        return _randomise(Dinov2WithRegistersModel(cfg))
    return _randomise(Dinov2Model(Dinov2Config(**SMALL, mlp_ratio=3, image_size=size)))


def _ours(arch, img=32, **kw):
    mlp = 48 / WIDTH if arch == "siglip" else 3.0
    return ViTExpert(ExpertConfig(arch, WIDTH, DEPTH, HEADS, mlp_ratio=mlp, patch_size=PATCH, **kw), FRAMES, img).eval()


def _frames(video):
    return rearrange(video[:, :, 1::2], "b c t h w -> (b t) c h w")  # the frames an image expert sees


CASES = [("siglip", {}, lambda size: _siglip(size)), ("dinov2", {}, lambda size: _dinov2(size)),
         ("dinov2", {"num_registers": 2}, lambda size: _dinov2(size, registers=2))]


@pytest.mark.parametrize("arch, extra, build", CASES, ids=["siglip", "dinov2", "dinov2_registers"])
@pytest.mark.parametrize("trained_size", [32, 48], ids=["same_grid", "resized_positions"])
def test_expert_tokens_and_pooling_equal_transformers(tmp_path, arch, extra, build, trained_size):
    """Every token of every block output, and the pooled feature, as transformers computes them; at
    another resolution than the checkpoint's, our load-time position resize equals transformers'
    run-time interpolation."""
    hf = build(trained_size)
    hf.save_pretrained(tmp_path)
    ours = _ours(arch, **extra)
    report = load_expert(ours, str(tmp_path))
    assert report.format == {"siglip": "hf_siglip", "dinov2": "hf_dinov2"}[arch]
    assert report.missing == [] and report.unexpected == []
    video = torch.randn(2, 3, FRAMES, 32, 32)
    with torch.no_grad():
        states = ours.forward_tokens(video, joint_time=False)
        kwargs = {"interpolate_pos_encoding": True} if arch == "siglip" else {}
        ref = hf(_frames(video), output_hidden_states=True, **kwargs)
        pooled = ours.pool(states[-1])
    assert len(states) == len(ref.hidden_states) == DEPTH + 1
    for i, (mine, theirs) in enumerate(zip(states, ref.hidden_states, strict=True)):
        torch.testing.assert_close(rearrange(mine, "b t l d -> (b t) l d"), theirs, rtol=1e-5, atol=1e-5, msg=f"{i}")
    if arch == "siglip":  # the MAP head on each frame's normalised tokens, averaged over time
        expected = rearrange(ref.pooler_output, "(b t) d -> b t d", b=2).mean(1)
    else:  # DINOv2's pooled output is its final LayerNorm on the class token; over time, of the mean one
        cls = rearrange(ref.hidden_states[-1][:, 0], "(b t) d -> b t d", b=2).mean(1)
        expected = hf.layernorm(cls)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


def test_registers_are_prefix_tokens():
    expert = _ours("dinov2", num_registers=3)
    assert expert.num_prefix == 4
    tokens = expert.embed(torch.randn(1, 3, FRAMES, 32, 32))
    assert tokens.shape == (1, FRAMES // 2, 4 + 16, WIDTH)
    with pytest.raises(ValueError, match="register tokens are a DINOv2 feature"):
        ExpertConfig("siglip", num_registers=2)


def test_formats_are_told_apart(tmp_path):
    assert detect_format(_siglip().state_dict()) == "hf_siglip"
    assert detect_format(_dinov2().state_dict()) == "hf_dinov2"
    assert detect_format(_dinov2(registers=2).state_dict()) == "hf_dinov2"
    # The names DINOv2 files on the hub carry (transformers 4), which VideoMAE shares in part.
    renames = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
               "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense"}
    old = {}
    for key, value in _dinov2().state_dict().items():
        for new_name, old_name in renames.items():
            key = key.replace(new_name, old_name)
        old[key] = value
    assert detect_format(old) == "hf_dinov2"
    a, b = _ours("dinov2"), _ours("dinov2")
    _dinov2().save_pretrained(tmp_path / "new")
    load_expert(a, str(tmp_path / "new"))
    torch.save(old, tmp_path / "old.bin")
    load_expert(b, str(tmp_path / "old.bin"))
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    with pytest.raises(WeightsError, match="hf_siglip weights are a siglip ViT, but this expert is dinov2"):
        _siglip().save_pretrained(tmp_path / "siglip")
        load_expert(_ours("dinov2"), str(tmp_path / "siglip"))


def _videomae(tmp_path, size=32):
    torch.manual_seed(1)
    hf = VideoMAEModel(VideoMAEConfig(**SMALL, intermediate_size=3 * WIDTH, image_size=size, num_frames=FRAMES,
                                      tubelet_size=2, qkv_bias=True, use_mean_pooling=True, layer_norm_eps=1e-6))
    hf.save_pretrained(tmp_path)
    return hf.eval()


def _write_preprocessor(folder, stats):
    mean, std = PIXEL_STATS[stats]
    (folder / "preprocessor_config.json").write_text(f'{{"image_mean": {list(mean)}, "image_std": {list(std)}}}')


@pytest.mark.parametrize("arch, extra, build", CASES, ids=["siglip", "dinov2", "dinov2_registers"])
def test_from_experts_reads_configs_and_reproduces_both_experts(tmp_path, arch, extra, build):
    """from_experts: the architecture from each checkpoint's config.json, the pixel statistics from
    its preprocessor config; with zero-initialised adapters and B-CAST, the pooled features are the two
    experts' own, each on its own pixel statistics."""
    hf_s = build(32)
    hf_s.save_pretrained(tmp_path / "s")
    _write_preprocessor(tmp_path / "s", "siglip" if arch == "siglip" else "imagenet")
    hf_t = _videomae(tmp_path / "t")
    model = from_experts(str(tmp_path / "s"), str(tmp_path / "t"), {"action": 5}, num_frames=FRAMES, img_size=32).eval()
    cfg = model.config
    assert (cfg.spatial.arch, cfg.spatial.width, cfg.spatial.depth, cfg.spatial.num_registers) == (
        arch, WIDTH, DEPTH, extra.get("num_registers", 0))
    assert cfg.spatial.norm == ("siglip" if arch == "siglip" else "imagenet") and cfg.temporal.norm == "imagenet"
    pixels = torch.rand(2, 3, FRAMES, 32, 32)
    mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in PIXEL_STATS[cfg.input_norm])
    with torch.no_grad():
        xs, xt = model.forward_features((pixels - mean) / std)
        fs, ft = model.spatial.pool(xs), model.temporal.pool(xt)
        s_mean, s_std = (torch.tensor(v).view(3, 1, 1, 1) for v in PIXEL_STATS[cfg.spatial.norm])
        ref_s = hf_s(_frames((pixels - s_mean) / s_std), output_hidden_states=True)
        ref_t = hf_t(rearrange((pixels - mean) / std, "b c t h w -> b t c h w"))
    if arch == "siglip":
        expected_s = rearrange(ref_s.pooler_output, "(b t) d -> b t d", b=2).mean(1)
    else:
        expected_s = hf_s.layernorm(rearrange(ref_s.hidden_states[-1][:, 0], "(b t) d -> b t d", b=2).mean(1))
    torch.testing.assert_close(fs, expected_s, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ft, model.temporal.norm(ref_t.last_hidden_state.mean(1)), rtol=1e-4, atol=1e-4)
    # The model round-trips through our format with the experts stored by reference.
    save_pretrained(model, tmp_path / "cast")
    again = from_pretrained(tmp_path / "cast").eval()
    video = torch.randn(1, 3, FRAMES, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(video), model(video), rtol=0, atol=0)


def test_grids_are_aligned_by_resizing_the_crop(tmp_path):
    """Patch 8 and patch 12 experts on a 48 px crop: the temporal grid (48 / 8 = 6) sets it and the
    spatial expert sees the crop at 6 x 12 = 72 px; a pair that cannot align names both grids."""
    hf = _randomise(Dinov2Model(Dinov2Config(**{**SMALL, "patch_size": 12}, mlp_ratio=3, image_size=72)))
    hf.save_pretrained(tmp_path / "s")
    _videomae(tmp_path / "t", size=48)
    model = from_experts(str(tmp_path / "s"), str(tmp_path / "t"), 3, num_frames=FRAMES, img_size=48).eval()
    assert model.config.spatial.img_size == 72 and model.config.temporal.img_size is None
    assert model.spatial.grid == model.temporal.grid == 6
    video = torch.randn(1, 3, FRAMES, 48, 48)
    with torch.no_grad():
        xs, _ = model.forward_features(video)
        frames = torch.nn.functional.interpolate(_frames(video), size=(72, 72), mode="bilinear", antialias=True)
        ref = hf(frames, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(rearrange(xs, "b t l d -> (b t) l d"), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"grids differ: spatial dinov2 \(patch 12 at 48 px\) has 4x4, "
                                         r"temporal videomae \(patch 8 at 48 px\) has 6x6"):
        CASTConfig(spatial=ExpertConfig("dinov2", patch_size=12), temporal=ExpertConfig("videomae", patch_size=8),
                   img_size=48, heads=[HeadConfig("a", 2)])


def test_unsupported_checkpoints_are_named(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(WeightsError, match="model_type 'bert' is not a supported expert"):
        read_expert(str(tmp_path / "x"))
    _siglip().save_pretrained(tmp_path / "s")
    _write_preprocessor(tmp_path / "s", "siglip")
    (tmp_path / "s" / "preprocessor_config.json").write_text('{"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 1, 1]}')
    with pytest.raises(WeightsError, match="pixel statistics .* are none of"):
        read_expert(str(tmp_path / "s"))
    deep = _randomise(Dinov2Model(Dinov2Config(**{**SMALL, "num_hidden_layers": 3}, mlp_ratio=3, image_size=32)))
    deep.save_pretrained(tmp_path / "deep")
    _videomae(tmp_path / "t")
    with pytest.raises(WeightsError, match="depths must be equal or one a multiple of the other.*spatial 3 and "
                                           "temporal 2"):
        experts_config(str(tmp_path / "deep"), str(tmp_path / "t"), 3, num_frames=FRAMES, img_size=32)


@pytest.mark.parametrize("spatial", [{"spatial.arch": "siglip", "spatial.norm": "siglip"},
                                     {"spatial.arch": "dinov2", "spatial.num_registers": 2}], ids=["siglip", "dinov2"])
def test_a_tiny_cast_with_a_new_pairing_trains(spatial):
    """A few AdamW steps on a fixed batch: the loss falls, every trainable weight gets a gradient, and
    the frozen experts (MAP head, registers and LayerScales included) do not move."""
    torch.manual_seed(0)
    model = CAST.from_preset("cast_tiny", **spatial).train()
    assert model.blocks.training and not model.spatial.training and not model.temporal.training  # kept in eval
    assert CAST.from_preset("cast_tiny", freeze_experts=False).train().spatial.training  # trained whole: trains
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert any("map_head" in n or "register_tokens" in n for n in frozen)
    params = [p for _, p in model.trainable_parameters()]
    opt = torch.optim.AdamW(params, lr=1e-2)
    video = torch.randn(4, 3, 8, 32, 32)
    labels = {"verb": torch.tensor([0, 1, 2, 3]), "noun": torch.tensor([4, 5, 6, 7])}
    losses = []
    for _ in range(8):
        out = model(video)
        loss = sum(torch.nn.functional.cross_entropy(out[k], labels[k]) for k in labels)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in params)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_info_prints_the_pair_read_from_the_checkpoints(tmp_path, capsys):
    _dinov2(registers=2).save_pretrained(tmp_path / "s")
    _videomae(tmp_path / "t")
    assert main(["info", "cast_tiny", "--spatial", str(tmp_path / "s"), "--temporal", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert f"spatial  dinov2 {WIDTH}x{DEPTH}, patch 8 at 32 px -> 4x4 grid, 3 prefix, pixels imagenet" in out
    assert f"temporal videomae {WIDTH}x{DEPTH}, patch 8 at 32 px -> 4x4 grid, pixels imagenet" in out
    model = CAST(experts_config(str(tmp_path / "s"), str(tmp_path / "t"), [HeadConfig("verb", 8, "temporal"),
                 HeadConfig("noun", 10, "spatial")], num_frames=8, img_size=32))
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert f"parameters, frozen     {frozen:>14,}" in out
    assert main(["info", "cast_tiny", "--spatial", str(tmp_path / "s")]) == 2  # one line, exit 2


def _vjepa2(head_dim=16):
    """A tiny V-JEPA 2: head_dim 16 gives three rotary sections of 4 channels and 4 channels left unrotated."""
    cfg = VJEPA2Config(hidden_size=4 * head_dim, num_hidden_layers=DEPTH, num_attention_heads=4, mlp_ratio=2.0,
                       patch_size=PATCH, tubelet_size=2, crop_size=32, frames_per_clip=FRAMES, pred_hidden_size=32,
                       pred_num_hidden_layers=1, pred_num_attention_heads=4, pred_num_mask_tokens=2)
    return _randomise(VJEPA2Model(cfg))


@pytest.mark.parametrize("head_dim", [16, 12], ids=["with_unrotated_channels", "all_rotated"])
def test_vjepa2_encoder_tokens_equal_transformers(tmp_path, head_dim):
    """V-JEPA 2's encoder (3D rotary positions in every attention) as a temporal expert: every block's
    tokens equal transformers' in joint space-time attention, the predictor is a known extra."""
    hf = _vjepa2(head_dim)
    hf.save_pretrained(tmp_path)
    ours = ViTExpert(ExpertConfig("vjepa2", 4 * head_dim, DEPTH, 4, mlp_ratio=2.0, patch_size=PATCH), FRAMES, 32).eval()
    report = load_expert(ours, str(tmp_path))
    assert report.format == "hf_vjepa2" and report.missing == [] and report.unexpected == []
    assert any(k.startswith("predictor.") for k in report.ignored)
    captured = []
    hf.encoder.embeddings.register_forward_hook(lambda m, i, o: captured.append(o))
    for layer in hf.encoder.layer:
        layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
    video = torch.randn(2, 3, FRAMES, 32, 32)
    with torch.no_grad():
        states = ours.forward_tokens(video, joint_time=True)
        out = hf(rearrange(video, "b c t h w -> b t c h w"), skip_predictor=True)
    assert len(captured) == DEPTH + 1
    for i, (mine, theirs) in enumerate(zip(states, captured, strict=True)):
        torch.testing.assert_close(rearrange(mine, "b t n d -> b (t n) d"), theirs, rtol=1e-5, atol=1e-5, msg=f"{i}")
    torch.testing.assert_close(ours.norm(states[-1]).flatten(1, 2), out.last_hidden_state, rtol=1e-5, atol=1e-5)


def test_vjepa2_from_experts_keeps_its_rotary_grid(tmp_path):
    """V-JEPA 2's rotary grid is its checkpoint's crop (32 px here): a 24 px clip is resized to 32 for it,
    and the patch-8 spatial expert is fed 32 px too, so both grids are 4 x 4."""
    _vjepa2().save_pretrained(tmp_path / "t")
    _siglip().save_pretrained(tmp_path / "s")
    cfg = experts_config(str(tmp_path / "s"), str(tmp_path / "t"), 3, num_frames=FRAMES, img_size=24)
    assert (cfg.spatial.img_size, cfg.temporal.img_size) == (32, 32)
    model = from_experts(str(tmp_path / "s"), str(tmp_path / "t"), 3, num_frames=FRAMES, img_size=24).eval()
    xs, xt = model.forward_features(torch.randn(1, 3, FRAMES, 24, 24))
    assert xs.shape == (1, FRAMES // 2, 16, WIDTH) and xt.shape == (1, FRAMES // 2, 16, 64)


def test_cast_of_clip_and_vjepa2_reproduces_both_experts(tmp_path):
    """Zero-initialised adapters and B-CAST: CAST's tokens are CLIP's (transformers' CLIPVisionModel,
    each frame) and V-JEPA 2's encoder's (before its final norm), and each pooled feature is the
    family's pooling of them (CLIP's post_layernorm on the mean class token; V-JEPA 2's norm on the
    mean token)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    clip = _randomise(CLIPVisionModel(CLIPVisionConfig(**SMALL, intermediate_size=48, image_size=32)))
    clip.save_pretrained(tmp_path / "s")
    vjepa = _vjepa2()
    vjepa.save_pretrained(tmp_path / "t")
    model = from_experts(str(tmp_path / "s"), str(tmp_path / "t"), 3, num_frames=FRAMES, img_size=32).eval()
    assert (model.config.spatial.norm, model.config.temporal.img_size) == ("clip", None)  # CLIP's own pixel stats
    pixels = torch.rand(2, 3, FRAMES, 32, 32)

    def normalised(stats):
        mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in PIXEL_STATS[stats])
        return (pixels - mean) / std

    assert model.config.input_norm == model.config.temporal.norm == "imagenet"
    before_norm = []
    vjepa.encoder.layer[-1].register_forward_hook(lambda m, i, o: before_norm.append(o[0] if isinstance(o, tuple)
                                                                                      else o))
    with torch.no_grad():
        xs, xt = model.forward_features(normalised("imagenet"))
        ref_s = clip(_frames(normalised("clip"))).last_hidden_state  # (B*T, 1+N, D)
        vjepa(rearrange(normalised("imagenet"), "b c t h w -> b t c h w"), skip_predictor=True)
        torch.testing.assert_close(rearrange(xs, "b t l d -> (b t) l d"), ref_s, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(rearrange(xt, "b t n d -> b (t n) d"), before_norm[0], rtol=1e-4, atol=1e-4)
        cls = rearrange(ref_s[:, 0], "(b t) d -> b t d", b=2).mean(1)
        torch.testing.assert_close(model.spatial.pool(xs), clip.post_layernorm(cls), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.temporal.pool(xt), vjepa.encoder.layernorm(before_norm[0].mean(1)),
                                   rtol=1e-4, atol=1e-4)


def test_a_training_config_takes_the_experts_from_its_weights(tmp_path):
    """`model.from_experts: true` in a run's config: the architectures come from `weights.spatial` /
    `weights.temporal`, the heads, frames and crop from the preset, and the weights are loaded."""
    from cast_video.config_utils import ConfigError, load_yaml
    from cast_video.engine import TrainConfig, build_model

    hf = _siglip()
    hf.save_pretrained(tmp_path / "s")
    _write_preprocessor(tmp_path / "s", "siglip")
    _videomae(tmp_path / "t")
    (tmp_path / "run.yaml").write_text(
        f"model: {{preset: cast_tiny, from_experts: true}}\n"
        f"weights: {{spatial: {tmp_path / 's'}, temporal: {tmp_path / 't'}}}\n")
    model = build_model(load_yaml(TrainConfig, tmp_path / "run.yaml", ["model.overrides.drop_path=0.1"]))
    cfg = model.config
    assert (cfg.spatial.arch, cfg.spatial.width, cfg.spatial.norm, cfg.temporal.arch) == ("siglip", WIDTH, "siglip",
                                                                                          "videomae")
    assert [(h.name, h.num_classes) for h in cfg.heads] == [("verb", 8), ("noun", 10)] and cfg.drop_path == 0.1
    assert torch.equal(model.spatial.map_head.probe, hf.head.probe.reshape(-1))
    with pytest.raises(ConfigError, match="model.from_experts reads the experts from weights.spatial"):
        build_model(load_yaml(TrainConfig, tmp_path / "run.yaml", ["weights.temporal="]))


def test_experts_of_different_depths_pair_k_blocks_to_one():
    """A 2-block spatial expert with a 4-block temporal one (as 12 with 24): two CAST blocks, each after
    two temporal blocks; untrained, each expert computes what it computes alone; layer decay groups
    temporal blocks 2i and 2i+1 with CAST block i."""
    torch.manual_seed(0)
    model = CAST.from_preset("cast_tiny", **{"spatial.depth": 2, "temporal.depth": 4}).eval()
    assert len(model.blocks) == model.config.depth == 2 and model.config.blocks_per_step("temporal") == 2
    video = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        xs, xt = model.forward_features(video)
        alone_s = model.spatial.forward_tokens(video, joint_time=False)[-1]
        alone_t = model.temporal.forward_tokens(video, joint_time=True)[-1]
    torch.testing.assert_close(xs, alone_s, rtol=0, atol=0)
    torch.testing.assert_close(xt, alone_t, rtol=0, atol=0)
    assert [model.layer_id(f"temporal.blocks.{j}.mlp.fc1.weight") for j in range(4)] == [1, 1, 2, 2]
    assert [model.layer_id(f"spatial.blocks.{j}.mlp.fc1.weight") for j in range(2)] == [1, 2]
    # CAST block i gets the temporal tokens after temporal block 2i (run alone) and adapts block 2i+1.
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args))
    with torch.no_grad():
        model.forward_features(video)
        after_2 = model.temporal.forward_tokens(video, joint_time=True)[3]  # after temporal blocks 0, 1, 2
    _, xt_in, sb, tb = seen[0]
    torch.testing.assert_close(xt_in, after_2, rtol=0, atol=0)
    assert sb is model.spatial.blocks[1] and tb is model.temporal.blocks[3]
    with pytest.raises(ValueError, match="one a multiple of the other"):
        CAST.from_preset("cast_tiny", **{"spatial.depth": 3, "temporal.depth": 4})


def test_the_new_presets_hold_the_published_experts_sizes():
    """CAST-B's SigLIP 2 B/16 and CAST-L's DINOv2-L/14 and V-JEPA 2-L experts have exactly the parameters
    of transformers' models of the published configs (built on the meta device): SigLIP 2 whole (its
    MAP head included), DINOv2 less its mask token and with its 37 x 37 position grid resized to 16 x 16,
    V-JEPA 2's encoder."""
    def count(module, skip=()):
        return sum(p.numel() for n, p in module.named_parameters() if not n.startswith(skip))

    with torch.device("meta"):
        b, large = CAST.from_preset("cast_b16_siglip2_k400"), CAST.from_preset("cast_l_dinov2_vjepa2_k400")
        siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                      num_attention_heads=12, image_size=224, patch_size=16))
        dino = Dinov2Model(Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                                        image_size=518, mlp_ratio=4))
        vjepa = VJEPA2Model(VJEPA2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=16,
                                         tubelet_size=2, crop_size=256, mlp_ratio=4.0))
    assert count(b.spatial) == count(siglip)
    resized = (37 * 37 - 16 * 16) * 1024  # the position table at 16 x 16 instead of 518 / 14 = 37
    assert count(large.spatial) == count(dino, skip=("embeddings.mask_token",)) - resized
    assert count(large.temporal) == count(vjepa.encoder)


def _randomise_expert(model, role):
    """Random expert weights (LayerScales and biases too), so that the two groupings visibly differ."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in getattr(model, role).parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("arch", ["clip", "siglip", "dinov2", "videomae", "vjepa2"])
@pytest.mark.parametrize("role", ["spatial", "temporal"])
def test_every_family_supports_both_attention_groupings(arch, role):
    """Any family in either role (Table 1(h)): the role only groups attention, within a time step
    (spatial) or over space-time (temporal); untrained, CAST's tokens are the expert's own run alone
    with that grouping, which differs from the other grouping."""
    extra = {"num_registers": 2} if arch == "dinov2" else {}
    model = CAST.from_preset("cast_tiny", **{f"{role}.arch": arch, **{f"{role}.{k}": v for k, v in extra.items()}})
    model = _randomise_expert(model, role).eval()
    expert, joint = getattr(model, role), role == "temporal"
    video = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(video)[role == "temporal"]
        alone = expert.forward_tokens(video, joint_time=joint)[-1]
        other = expert.forward_tokens(video, joint_time=not joint)[-1]
    assert tokens.shape == (1, 4, expert.num_prefix + 16, 64)
    torch.testing.assert_close(tokens, alone, rtol=0, atol=0)
    assert (alone - other).abs().max() > 1e-3

