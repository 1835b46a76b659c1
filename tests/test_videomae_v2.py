"""VideoMAE V2 checkpoints, in every layout they are published in, as our VideoMAE expert.

The key names are those of the VideoMAE V2 repository (github.com/OpenGVLab/VideoMAEv2):
`models/modeling_finetune.py` `VisionTransformer` (fine-tuned and distilled S/B/L/H/g checkpoints:
`patch_embed.proj`, `blocks.N.{norm1, attn.qkv, attn.q_bias, attn.v_bias, attn.proj, norm2, mlp.fc1,
mlp.fc2}`, `fc_norm`, `head`), `models/modeling_pretrain.py` `PretrainVisionTransformer` (the same
under `encoder.`, plus `encoder.norm`, `decoder.*`, `encoder_to_decoder`, `mask_token`), saved by
`utils.save_model` as {"model", "optimizer", "epoch", "scaler", "args"} or by DeepSpeed under
"module"; the hub's `OpenGVLab/VideoMAEv2-*` folders nest the fine-tuning class under `model.`
(config.json `model_type: VideoMAEv2_Base`, the class's arguments under `model_config`); mmaction2's
port (`mmaction/models/backbones/vit_mae.py`) renames `patch_embed.projection` and `mlp.layers.0.0` /
`mlp.layers.1`, saves the sine-cosine table as a buffer, and puts everything under `state_dict`.

The truth is transformers' `VideoMAEForVideoClassification` (the same architecture), built tiny from a
config offline; the test renames its weights into V2's names by hand, from the classes above.
"""

import argparse
import json
import math

import numpy as np
import pytest
import torch
from einops import rearrange
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model, VideoMAEConfig, VideoMAEForVideoClassification

from cast_video.models import ExpertConfig, ViTExpert
from cast_video.normalization import PIXEL_STATS
from cast_video.weights import WeightsError, detect_format, load_expert
from cast_video.weights.experts import from_experts, read_expert

WIDTH, DEPTH, HEADS, PATCH, FRAMES, SIZE = 44, 2, 4, 8, 4, 32
MLP_RATIO = 48 / 11  # ViT-g's ratio: int(44 * 48/11) = 192, as int(1408 * 48/11) = 6144


def _hf():
    """A tiny transformers VideoMAE with random values everywhere (LayerNorms included)."""
    cfg = VideoMAEConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, patch_size=PATCH,
                         intermediate_size=int(WIDTH * MLP_RATIO), image_size=SIZE, num_frames=FRAMES, tubelet_size=2,
                         qkv_bias=True, use_mean_pooling=True, layer_norm_eps=1e-6, num_labels=5)
    torch.manual_seed(0)
    model = VideoMAEForVideoClassification(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.numel() == WIDTH else 0.0))
    return model.eval()


_BLOCK = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
          "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}


def _v2_finetune_names(hf) -> dict[str, torch.Tensor]:
    """transformers' weights under the names of modeling_finetune.VisionTransformer."""
    sd = {k.removeprefix("videomae."): v for k, v in hf.state_dict().items()}
    out = {"patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "fc_norm.weight": sd["fc_norm.weight"], "fc_norm.bias": sd["fc_norm.bias"],
           "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"]}
    for i in range(DEPTH):
        layer = f"encoder.layer.{i}."
        attn = layer + "attention.attention."
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([sd[f"{attn}{c}.weight"] for c in ("query", "key", "value")])
        out[f"blocks.{i}.attn.q_bias"] = sd[attn + "query.bias"]  # transformers' key projection has no bias
        out[f"blocks.{i}.attn.v_bias"] = sd[attn + "value.bias"]
        for theirs, v2 in _BLOCK.items():
            for leaf in ("weight", "bias"):
                out[f"blocks.{i}.{v2}.{leaf}"] = sd[f"{layer}{theirs}.{leaf}"]
    return out


def _v2_sincos(n: int, d: int) -> torch.Tensor:
    """modeling_finetune.get_sinusoid_encoding_table, written from its formula: (1, n, d)."""
    angle = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    angle[:, 0::2], angle[:, 1::2] = np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])
    return torch.tensor(angle, dtype=torch.float32)[None]


def _pretrain(ft: dict) -> dict:
    """modeling_pretrain.PretrainVisionTransformer: the encoder under `encoder.`, its pre-decoder norm,
    a one-block decoder of width 16, the projection between them and the mask token; no fc_norm."""
    enc = {f"encoder.{k}": v for k, v in ft.items() if not k.startswith(("fc_norm", "head"))}
    torch.manual_seed(5)
    dec = {"decoder.blocks.0.attn.qkv.weight": torch.randn(48, 16), "decoder.blocks.0.attn.q_bias": torch.randn(16),
           "decoder.norm.weight": torch.randn(16), "decoder.head.weight": torch.randn(3 * 2 * PATCH * PATCH, 16),
           "encoder_to_decoder.weight": torch.randn(16, WIDTH), "mask_token": torch.randn(1, 1, 16)}
    return {**enc, "encoder.norm.weight": torch.randn(WIDTH), "encoder.norm.bias": torch.randn(WIDTH), **dec}


def _mmaction(ft: dict) -> dict:
    """mmaction2's VisionTransformer under `backbone.`, with its sine-cosine buffer, and its `cls_head`."""
    out = {"backbone.pos_embed": _v2_sincos(FRAMES // 2 * (SIZE // PATCH) ** 2, WIDTH)}
    for k, v in ft.items():
        k = k.replace("patch_embed.proj.", "patch_embed.projection.").replace(".mlp.fc1.", ".mlp.layers.0.0.")
        k = k.replace(".mlp.fc2.", ".mlp.layers.1.")
        out[k.replace("head.", "cls_head.fc_cls.") if k.startswith("head.") else f"backbone.{k}"] = v
    return out


def _save(obj, path):
    torch.save(obj, path)
    return path


# layout -> (file contents from the fine-tuned names, whether fc_norm is in it)
LAYOUTS = {
    # run_class_finetuning.py with --enable_deepspeed: DeepSpeed's model-states file
    "finetune_deepspeed": (lambda ft: {"module": ft, "buffer_names": [], "optimizer": None, "epoch": 89,
                                       "ds_version": "0.9.2", "param_shapes": [{k: v.shape for k, v in ft.items()}]},
                           True),
    # utils.save_model without DeepSpeed, as for the distilled ViT-S / ViT-B files
    "finetune_model": (lambda ft: {"model": ft, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
                                   "scaler": {"scale": 65536.0},
                                   "args": argparse.Namespace(model="vit_base_patch16_224")}, True),
    "finetune_compiled": (lambda ft: {"model": {f"_orig_mod.{k}": v for k, v in ft.items()}}, True),
    "pretrain": (lambda ft: {"model": _pretrain(ft), "epoch": 1199, "args": argparse.Namespace(mask_type="tube")},
                 False),
    "mmaction2": (lambda ft: {"meta": {"mmengine_version": "0.7.3"}, "state_dict": _mmaction(ft)}, True),
}


def _ours():
    return ViTExpert(ExpertConfig("videomae", WIDTH, DEPTH, HEADS, mlp_ratio=MLP_RATIO, patch_size=PATCH),
                     FRAMES, SIZE).eval()


def _reference(hf, video):
    """transformers' tokens after the last block, and fc_norm's weights on their mean with V2's LayerNorm
    eps 1e-6 (transformers' classification fc_norm uses torch's default 1e-5)."""
    with torch.no_grad():
        tokens = hf.videomae(rearrange(video, "b c t h w -> b t c h w")).last_hidden_state
        norm = hf.fc_norm
        return tokens, torch.nn.functional.layer_norm(tokens.mean(1), (WIDTH,), norm.weight, norm.bias, eps=1e-6)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_published_layout_loads_strictly_and_computes_what_videomae_computes(tmp_path, layout):
    hf = _hf()
    build, has_fc_norm = LAYOUTS[layout]
    file = _save(build(_v2_finetune_names(hf)), tmp_path / "checkpoint.pth")
    ours = _ours()
    report = load_expert(ours, str(file))  # strict: nothing unexpected, only the trainable norm may be missing
    assert report.format == "videomae" and report.unexpected == []
    assert report.missing == ([] if has_fc_norm else ["norm.bias", "norm.weight"])
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    tokens, pooled = _reference(hf, video)
    with torch.no_grad():
        mine = ours.forward_tokens(video, joint_time=True)[-1]
    torch.testing.assert_close(rearrange(mine, "b t n d -> b (t n) d"), tokens, rtol=1e-5, atol=1e-5)
    if has_fc_norm:
        with torch.no_grad():
            torch.testing.assert_close(ours.pool(mine), pooled, rtol=1e-5, atol=1e-5)


def write_hub_folder(folder, hf) -> dict:
    """OpenGVLab/VideoMAEv2-* as the hub holds it: `model.`-prefixed safetensors (no head: num_classes 0),
    the architecture under config.json's model_config, ImageNet statistics. Returns the model_config."""
    folder.mkdir(parents=True)
    weights = {f"model.{k}": v.contiguous() for k, v in _v2_finetune_names(hf).items() if not k.startswith("head.")}
    save_file(weights, str(folder / "model.safetensors"))
    model_config = {"img_size": SIZE, "patch_size": PATCH, "in_chans": 3, "num_classes": 0, "embed_dim": WIDTH,
                    "depth": DEPTH, "num_heads": HEADS, "mlp_ratio": MLP_RATIO, "qkv_bias": True, "qk_scale": None,
                    "layer_norm_eps": 1e-6, "init_values": 0.0, "use_learnable_pos_emb": False, "tubelet_size": 2,
                    "use_mean_pooling": True, "with_cp": False, "num_frames": FRAMES, "cos_attn": False}
    (folder / "config.json").write_text(json.dumps({"model_type": "VideoMAEv2_Base", "model_config": model_config,
                                                    "auto_map": {"AutoModel": "modeling_videomaev2.VideoMAEv2"}}))
    mean, std = PIXEL_STATS["imagenet"]
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    return model_config


def test_the_hub_folder_builds_the_expert_from_its_own_config(tmp_path):
    """OpenGVLab/VideoMAEv2-*: the architecture from config.json's model_config (ViT-g's mlp ratio 48/11
    here), ImageNet statistics; from_experts reads and loads it."""
    hf = _hf()
    folder = tmp_path / "VideoMAEv2-Base"
    model_config = write_hub_folder(folder, hf)
    expert = read_expert(str(folder))
    assert (expert.arch, expert.width, expert.depth, expert.heads, expert.patch_size, expert.norm) == (
        "videomae", WIDTH, DEPTH, HEADS, PATCH, "imagenet")
    assert round(expert.width * expert.mlp_ratio) == 192
    dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=4, patch_size=PATCH,
                                    mlp_ratio=2, image_size=SIZE))
    dino.save_pretrained(tmp_path / "dino")
    model = from_experts(str(tmp_path / "dino"), str(folder), 3, num_frames=FRAMES, img_size=SIZE).eval()
    assert model.expert_sources["temporal"]["format"] == "videomae"
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    _, pooled = _reference(hf, video)
    with torch.no_grad():
        _, xt = model.forward_features(video)
        torch.testing.assert_close(model.temporal.pool(xt), pooled, rtol=1e-5, atol=1e-5)
    # a variant our expert does not compute is named, with the file
    (folder / "config.json").write_text(json.dumps({"model_type": "VideoMAEv2_Base",
                                                    "model_config": {**model_config, "cos_attn": True}}))
    with pytest.raises(WeightsError, match=r"config\.json: model_config\.cos_attn = True: cosine attention"):
        read_expert(str(folder))


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("change, expected", [
    (lambda sd: sd.update({"blocks.0.attn.relative_position_bias_table": torch.zeros(3, 4)}),
     r"checkpoint\.pth: unexpected keys \['blocks\.0\.attn\.relative_position_bias_table'\]"),
    (lambda sd: sd.pop("blocks.1.mlp.fc2.weight"),
     r"checkpoint\.pth: the checkpoint lacks \['blocks\.1\.mlp\.fc2\.weight'\]"),
    (lambda sd: sd.update({"blocks.1.attn.scale": torch.zeros(HEADS, 1, 1)}),
     r"checkpoint\.pth: blocks\.1\.attn\.scale: cosine attention \(cos_attn\)"),
    (lambda sd: sd.update({"blocks.0.gamma_1": torch.ones(WIDTH)}), r"checkpoint\.pth: blocks\.0\.gamma_1: LayerScale"),
    (lambda sd: sd.update({"pos_embed": torch.randn(1, FRAMES // 2 * 16, WIDTH)}),
     r"checkpoint\.pth: pos_embed: a learned position table"),
], ids=["unknown", "missing", "cos_attn", "layer_scale", "learned_positions"])
def test_unknown_missing_and_unsupported_keys_are_one_line_errors_naming_file_and_key(tmp_path, change, expected):
    sd = _v2_finetune_names(_hf())
    change(sd)
    file = _save({"module": sd}, tmp_path / "checkpoint.pth")
    ours = _ours()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_expert(ours, str(file))
    assert _one_line(err) and err.match(expected)
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())  # nothing was copied


def test_the_stored_sincos_table_is_checked_not_trusted():
    """A saved sine-cosine table (mmaction2's buffer) passes as what it is, for any length; off by more
    than float rounding, it is a learned table."""
    from cast_video.weights.formats import from_videomae

    table = _v2_sincos(37, WIDTH)
    _, extras = from_videomae({"backbone.pos_embed": table})
    assert extras == ["backbone.pos_embed"]
    table[0, 5, 3] += 1e-3
    with pytest.raises(WeightsError, match="backbone.pos_embed: a learned position table"):
        from_videomae({"backbone.pos_embed": table})
    # the formula itself: position 1, channel 2 is sin(1 / 10000^(2/4))
    assert math.isclose(float(_v2_sincos(2, 4)[0, 1, 2]), math.sin(1 / 100), rel_tol=1e-6)


def test_detection_tells_videomae_v2_layouts_from_the_other_formats():
    ft = _v2_finetune_names(_hf())
    for name, (build, _) in LAYOUTS.items():
        found = build(ft)
        flat = found.get("module") or found.get("model") or found.get("state_dict")
        assert detect_format(flat) == "videomae", name
