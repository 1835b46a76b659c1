"""More sources: whole transformers models, other sizes, shards, TorchScript safety, our own files, the CLI."""

import io
import pickle
import zipfile

import pytest
import torch
from einops import rearrange
from safetensors.torch import load_file

from cast_video import CAST, from_pretrained, load_experts, load_official_cast, save_pretrained
from cast_video.cli import main
from cast_video.models import ExpertConfig, ViTExpert, preset_config
from cast_video.weights import WeightsError, load_expert, read_state_dict, read_torchscript

# The references are transformers' models (the dev extra): without it this file skips instead of failing.
transformers = pytest.importorskip("transformers")
CLIPConfig, CLIPModel = transformers.CLIPConfig, transformers.CLIPModel
CLIPVisionConfig, CLIPVisionModel = transformers.CLIPVisionConfig, transformers.CLIPVisionModel
VideoMAEConfig, VideoMAEModel = transformers.VideoMAEConfig, transformers.VideoMAEModel
VideoMAEForPreTraining = transformers.VideoMAEForPreTraining
VideoMAEForVideoClassification = transformers.VideoMAEForVideoClassification

WIDTH, DEPTH, HEADS, PATCH, IMG, FRAMES = 32, 2, 4, 8, 32, 8
SHAPE = {"width": WIDTH, "depth": DEPTH, "heads": HEADS}
OVERRIDES = {f"{role}.{k}": v for role in ("spatial", "temporal") for k, v in SHAPE.items()}


def video(img=IMG, frames=FRAMES, batch=2):
    return torch.randn(batch, 3, frames, img, img, generator=torch.Generator().manual_seed(1))


def perturb(module, scale=0.05):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def expert(arch, img=IMG, frames=FRAMES):
    return ViTExpert(ExpertConfig(arch, WIDTH, DEPTH, HEADS, patch_size=PATCH), frames, img).eval()


def clip_vision_config(**kw):
    return CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH,
                            num_attention_heads=HEADS, image_size=IMG, patch_size=PATCH, **kw)


def videomae_config(**kw):
    base = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                image_size=IMG, patch_size=PATCH, num_frames=FRAMES, qkv_bias=True, use_mean_pooling=True,
                layer_norm_eps=1e-6)
    return VideoMAEConfig(**{**base, **kw})


def frames_of(clip):
    return rearrange(clip[:, :, 1::2], "b c t h w -> (b t) c h w")  # the frames the spatial expert sees


def assert_tokens(ours_bt, ref, flat=False):
    mine = rearrange(ours_bt, "b t n d -> b (t n) d") if flat else rearrange(ours_bt, "b t l d -> (b t) l d")
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


# --- whole transformers models and other sizes ---------------------------------------------------
def test_clip_model_with_text_tower(tmp_path):
    text = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    hf = perturb(CLIPModel(CLIPConfig(text_config=text, vision_config=clip_vision_config().to_dict(),
                                      projection_dim=8)))
    hf.save_pretrained(tmp_path)
    ours = expert("clip")
    report = load_expert(ours, str(tmp_path))
    assert report.format == "hf_clip" and not report.missing and not report.unexpected
    assert {"logit_scale", "visual_projection.weight", "text_projection.weight"} <= set(report.ignored)
    assert any(k.startswith("text_model.encoder.layers.0") for k in report.ignored)
    clip = video()
    with torch.no_grad():
        ref = hf.vision_model(pixel_values=frames_of(clip), output_hidden_states=True)
        states = ours.forward_tokens(clip, joint_time=False)
    for mine, r in zip(states, ref.hidden_states, strict=True):
        assert_tokens(mine, r)
    torch.testing.assert_close(ours.norm(states[-1][:, :, 0]).flatten(0, 1), ref.pooler_output, rtol=1e-5, atol=1e-5)


def test_clip_at_another_image_size_matches_transformers_interpolation(tmp_path):
    hf = perturb(CLIPVisionModel(clip_vision_config()))
    hf.save_pretrained(tmp_path)
    ours = expert("clip", img=48)
    load_expert(ours, str(tmp_path))
    clip = video(img=48)
    with torch.no_grad():
        ref = hf(pixel_values=frames_of(clip), interpolate_pos_encoding=True, output_hidden_states=True)
        states = ours.forward_tokens(clip, joint_time=False)
    for mine, r in zip(states, ref.hidden_states, strict=True):
        assert_tokens(mine, r)


def test_videomae_pretraining_and_classification_models(tmp_path):
    pre = perturb(VideoMAEForPreTraining(videomae_config(decoder_num_hidden_layers=1, decoder_hidden_size=16,
                                                       decoder_num_attention_heads=2, decoder_intermediate_size=32)))
    pre.save_pretrained(tmp_path / "pre")
    cls = perturb(VideoMAEForVideoClassification(videomae_config(num_labels=5)))
    cls.save_pretrained(tmp_path / "cls")
    clip = video()
    ours = expert("videomae")
    report = load_expert(ours, str(tmp_path / "pre"))
    assert report.format == "hf_videomae" and not report.unexpected and report.missing == ["norm.bias", "norm.weight"]
    assert "encoder_to_decoder.weight" in report.ignored and any(k.startswith("decoder.") for k in report.ignored)
    with torch.no_grad():
        ref = pre.videomae(pixel_values=clip.transpose(1, 2), output_hidden_states=True).hidden_states
        for mine, r in zip(ours.forward_tokens(clip, joint_time=True), ref, strict=True):
            assert_tokens(mine, r, flat=True)
    ours = expert("videomae")
    report = load_expert(ours, str(tmp_path / "cls"))
    assert not report.missing and {"classifier.weight", "classifier.bias"} <= set(report.ignored)
    with torch.no_grad():  # fc_norm is our post-pooling norm: the classifier on our feature gives HF's logits
        torch.testing.assert_close(cls.classifier(ours(clip, joint_time=True)), cls(clip.transpose(1, 2)).logits,
                                   rtol=1e-5, atol=1e-5)


def test_videomae_at_another_length_and_size(tmp_path):
    """Weights trained on 8 frames of 32 px, used on 4 frames of 48 px: the sine table is regenerated."""
    hf = perturb(VideoMAEModel(videomae_config()))
    hf.save_pretrained(tmp_path)
    other = VideoMAEModel(videomae_config(num_frames=4, image_size=48)).eval()
    other.load_state_dict(hf.state_dict())
    ours = expert("videomae", img=48, frames=4)
    load_expert(ours, str(tmp_path))
    clip = video(img=48, frames=4)
    with torch.no_grad():
        ref = other(pixel_values=clip.transpose(1, 2)).last_hidden_state
        assert_tokens(ours.forward_tokens(clip, joint_time=True)[-1], ref, flat=True)


def test_sharded_directory_and_hub_id(tmp_path, monkeypatch):
    hf = perturb(CLIPVisionModel(clip_vision_config()))
    hf.save_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").exists()
    one, _ = read_state_dict(tmp_path / "one")
    shards, _ = read_state_dict(tmp_path / "shards")
    assert one.keys() == shards.keys() and all(torch.equal(one[k], shards[k]) for k in one)

    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path / "one")

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    assert load_expert(expert("clip"), "openai/clip-vit-base-patch16").format == "hf_clip"
    assert calls == [("openai/clip-vit-base-patch16", ["*.json", "*.safetensors"])]  # no pickles when not needed


# --- TorchScript archives are read, never run ----------------------------------------------------
class _Visual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 2, 2, bias=False)
        self.proj = torch.nn.Parameter(torch.randn(6, 4).t())  # a non-contiguous view of its storage
        self.register_buffer("scale", torch.tensor([2.0], dtype=torch.float16))

    def forward(self, x):
        return self.conv1(x).flatten(2).transpose(1, 2) @ self.proj


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = _Visual().half()
        self.logit_scale = torch.nn.Parameter(torch.ones([]))

    def forward(self, x):
        return self.visual(x) * self.logit_scale


@pytest.mark.parametrize("compile_with", ["trace", "script"])
def test_torchscript_reader_matches_the_runtime(tmp_path, compile_with):
    model = _Model()
    compiled = torch.jit.trace(model, torch.randn(1, 3, 4, 4).half()) if compile_with == "trace" else torch.jit.script(
        model)
    torch.jit.save(compiled, str(tmp_path / "m.pt"))
    runtime = torch.jit.load(str(tmp_path / "m.pt")).state_dict()
    read = read_torchscript(tmp_path / "m.pt")
    assert read.keys() == runtime.keys()
    for key in read:
        assert read[key].dtype == runtime[key].dtype and torch.equal(read[key], runtime[key]), key


def test_torchscript_archive_with_foreign_code_is_refused(tmp_path):
    torch.jit.save(torch.jit.script(_Model()), str(tmp_path / "m.pt"))
    witness = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(witness), "w"))

    with zipfile.ZipFile(tmp_path / "m.pt") as src, zipfile.ZipFile(tmp_path / "evil.pt", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, pickle.dumps(Evil(), protocol=2) if item.filename.endswith("/data.pkl") else data)
    with pytest.raises(WeightsError, match="open, which is not allowed"):
        load_expert(expert("clip"), str(tmp_path / "evil.pt"))
    assert not witness.exists()


def test_bare_visual_state_dict_is_strict(tmp_path):
    hf = perturb(CLIPVisionModel(clip_vision_config()))
    sd = hf.state_dict()
    bare = {"conv1.weight": sd["embeddings.patch_embedding.weight"],
            "class_embedding": sd["embeddings.class_embedding"],
            "positional_embedding": sd["embeddings.position_embedding.weight"], "proj": torch.randn(WIDTH, 8),
            "ln_pre.weight": sd["pre_layrnorm.weight"], "ln_pre.bias": sd["pre_layrnorm.bias"],
            "ln_post.weight": sd["post_layernorm.weight"], "ln_post.bias": sd["post_layernorm.bias"]}
    for i in range(DEPTH):
        p, q = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        bare[q + "attn.in_proj_weight"] = torch.cat([sd[p + f"self_attn.{c}_proj.weight"] for c in "qkv"])
        bare[q + "attn.in_proj_bias"] = torch.cat([sd[p + f"self_attn.{c}_proj.bias"] for c in "qkv"])
        for a, b in [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]:
            bare[q + a + ".weight"], bare[q + a + ".bias"] = sd[p + b + ".weight"], sd[p + b + ".bias"]
    torch.save(bare, tmp_path / "visual.pt")
    ours = expert("clip")
    report = load_expert(ours, str(tmp_path / "visual.pt"))
    assert report.ignored == ["proj"] and not report.missing and not report.unexpected
    clip = video()
    with torch.no_grad():
        assert_tokens(ours.forward_tokens(clip, False)[-1], hf(pixel_values=frames_of(clip)).last_hidden_state)
    torch.save({**bare, "stray.weight": torch.zeros(1)}, tmp_path / "stray.pt")
    with pytest.raises(WeightsError, match="stray.weight"):
        load_expert(expert("clip"), str(tmp_path / "stray.pt"))


# --- our own files --------------------------------------------------------------------------------
def test_unreferenced_experts_are_saved_whole_and_whole_files_feed_experts(tmp_path, monkeypatch):
    model = perturb(CAST(preset_config("cast_tiny", OVERRIDES)))
    clip = video()
    with torch.no_grad():
        expected = model(clip)
    save_pretrained(model, tmp_path / "random")  # no expert came from a file: they must be stored
    again = from_pretrained(tmp_path / "random").eval()
    with torch.no_grad():
        assert all(torch.equal(again(clip)[h], expected[h]) for h in expected)

    save_pretrained(model, tmp_path / "full", full=True)
    monkeypatch.chdir(tmp_path)
    fresh = CAST(preset_config("cast_tiny", OVERRIDES)).eval()
    load_experts(fresh, spatial="full", temporal="full")  # a relative path to a whole CAST of ours
    for name, value in model.state_dict().items():
        if name.startswith(("spatial.", "temporal.")):
            assert torch.equal(fresh.state_dict()[name], value), name
    perturb(fresh.blocks)
    save_pretrained(fresh, tmp_path / "light")
    stored = load_file(str(tmp_path / "light" / "model.safetensors"))
    assert not any(k.startswith("spatial.blocks") for k in stored)
    monkeypatch.chdir("/")  # the reference is absolute, so the directory can be read from anywhere
    reloaded = from_pretrained(tmp_path / "light").eval()
    with torch.no_grad():
        for head, logits in fresh(clip).items():
            assert torch.equal(reloaded(clip)[head], logits)


def test_convert_command_line(tmp_path, capsys):
    from test_weights import HEADS as REF_HEADS
    from test_weights import _official_state

    assert REF_HEADS == HEADS
    torch.save({"module": _official_state(split=True)}, tmp_path / "official.pt")
    assert main(["convert", "official", str(tmp_path / "official.pt"), "--num-heads", str(HEADS),
                 "--out", str(tmp_path / "cast")]) == 0
    clip = video()
    with torch.no_grad():
        direct = load_official_cast(str(tmp_path / "official.pt"), num_heads=HEADS).eval()(clip)
        converted = from_pretrained(tmp_path / "cast").eval()(clip)
    assert all(torch.equal(direct[h], converted[h]) for h in direct)

    hf = perturb(VideoMAEModel(videomae_config()))
    hf.save_pretrained(tmp_path / "vmae")
    args = ["convert", "expert", str(tmp_path / "vmae"), "--preset", "cast_tiny", "--role", "temporal",
            "--set", *(f"{k}={v}" for k, v in OVERRIDES.items())]
    assert main([*args, "--out", str(tmp_path / "t.safetensors")]) == 0
    assert "missing, kept as initialised: norm.bias, norm.weight" in capsys.readouterr().out
    ours = expert("videomae")
    assert load_expert(ours, str(tmp_path / "t.safetensors")).format == "cast_video"
    with torch.no_grad():
        ref = hf(pixel_values=clip.transpose(1, 2)).last_hidden_state
        assert_tokens(ours.forward_tokens(clip, True)[-1], ref, flat=True)

    bad = ["convert", "expert", str(tmp_path / "vmae"), "--preset", "cast_tiny", "--role", "temporal",
           "--out", str(tmp_path / "x.safetensors")]  # cast_tiny's own width is 64, the file's 32
    assert main(bad) == 2
    assert "patch_embed.bias: checkpoint has shape (32,), the model expects (64,)" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_read_state_dict_reports_unreadable_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt: not a checkpoint that can be read safely"):
        read_state_dict(tmp_path / "junk.pt")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(WeightsError, match="empty.pth: no state dict found"):
        read_state_dict(tmp_path / "empty.pth")
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(2)}}, buffer)
    (tmp_path / "ok.bin").write_bytes(buffer.getvalue())
    assert torch.equal(read_state_dict(tmp_path / "ok.bin")[0]["w"], torch.ones(2))


@pytest.mark.parametrize(("heads", "preset"), [({"head_verb.weight": (97, 768), "head_noun.weight": (300, 768)},
                                                 "cast_b16_ek100"),
                                                ({"head.weight": (174, 768)}, "cast_b16_ssv2"),
                                                ({"head.weight": (400, 768)}, "cast_b16_k400"),
                                                ({"head.weight": (101, 768)}, None)])
def test_official_preset_is_found_from_shapes(heads, preset):
    from cast_video.weights.loading import _official_config

    shapes = {"clip_conv1.weight": (768, 3, 16, 16), "clip_positional_embedding": (197, 768),
              "blocks.0.t2s_cross.clip_time_pos": (8, 384), "blocks.0.cross_s_down.weight": (384, 768),
              "blocks.11.norm1.weight": (768,), **heads}
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}  # only shapes are read
    cfg = _official_config(sd, None, None, "ckpt")
    if preset is None:  # no preset has 101 classes: a config read from the shapes
        geometry = (cfg.spatial.width, cfg.spatial.heads, cfg.depth, cfg.num_frames, cfg.img_size)
        assert geometry == (768, 12, 12, 16, 224)
        assert [(h.name, h.num_classes) for h in cfg.heads] == [("action", 101)]
    else:
        assert cfg == preset_config(preset)
    with pytest.raises(WeightsError, match=r"ckpt: does not fit preset cast_tiny: it has width 64 \(checkpoint: 768\)"):
        _official_config(sd, "cast_tiny", None, "ckpt")
    del sd["blocks.0.t2s_cross.clip_time_pos"]
    with pytest.raises(WeightsError, match="ckpt: an official CAST checkpoint must have blocks.0.t2s_cross"):
        _official_config(sd, None, None, "ckpt")


def test_from_pretrained_names_a_lost_expert_source(tmp_path):
    hf = perturb(CLIPVisionModel(clip_vision_config()))
    hf.save_pretrained(tmp_path / "clip")
    model = CAST(preset_config("cast_tiny", OVERRIDES))
    load_experts(model, spatial=str(tmp_path / "clip"))
    save_pretrained(model, tmp_path / "light")
    (tmp_path / "clip" / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="the spatial expert is stored by reference"):
        from_pretrained(tmp_path / "light")
    again = from_pretrained(tmp_path / "light", load_expert_weights=False)  # the temporal expert was stored
    assert torch.equal(again.temporal.blocks[0].attn.qkv.weight, model.temporal.blocks[0].attn.qkv.weight)


def test_videomae_hub_layout_of_transformers_4(tmp_path):
    """Hub files written by transformers 4 name the biases q_bias / v_bias and prefix `videomae.`."""
    hf = perturb(VideoMAEModel(videomae_config()))
    renamed = {"videomae." + k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v
               for k, v in hf.state_dict().items()}
    assert sum(k.endswith((".q_bias", ".v_bias")) for k in renamed) == 2 * DEPTH
    (tmp_path / "hub").mkdir()
    torch.save(renamed, tmp_path / "hub" / "pytorch_model.bin")
    ours = expert("videomae")
    report = load_expert(ours, str(tmp_path / "hub"))
    assert report.format == "hf_videomae" and not report.unexpected
    clip = video()
    with torch.no_grad():
        ref = hf(pixel_values=clip.transpose(1, 2)).last_hidden_state
        assert_tokens(ours.forward_tokens(clip, True)[-1], ref, flat=True)
