"""Weights in every supported format, checked against reference implementations built here offline."""

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from cast_video import CAST, from_pretrained, load_experts, load_official_cast, save_pretrained
from cast_video.cli import main
from cast_video.models import ExpertConfig, ViTExpert, preset_config
from cast_video.weights import WeightsError, detect_format, load_expert

# The references are transformers' models (the dev extra): without it this file skips instead of failing.
transformers = pytest.importorskip("transformers")
CLIPVisionConfig, CLIPVisionModel = transformers.CLIPVisionConfig, transformers.CLIPVisionModel
VideoMAEConfig, VideoMAEModel = transformers.VideoMAEConfig, transformers.VideoMAEModel

WIDTH, DEPTH, HEADS, PATCH, IMG, FRAMES = 32, 2, 4, 8, 32, 8


def video(batch=2, img=IMG, frames=FRAMES):
    torch.manual_seed(1)
    return torch.randn(batch, 3, frames, img, img)


def perturb(module: torch.nn.Module, scale=0.05):
    """Random weights everywhere (transformers zero-initialises biases and sets norms to one)."""
    torch.manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def expert(arch, img=IMG):
    return ViTExpert(ExpertConfig(arch, WIDTH, DEPTH, HEADS, patch_size=PATCH), FRAMES, img).eval()


@pytest.fixture(scope="module")
def hf_clip():
    cfg = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH,
                           num_attention_heads=HEADS, image_size=IMG, patch_size=PATCH, hidden_act="quick_gelu")
    return perturb(CLIPVisionModel(cfg)).eval()


@pytest.fixture(scope="module")
def hf_videomae():
    cfg = VideoMAEConfig(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH,
                         num_attention_heads=HEADS, image_size=IMG, patch_size=PATCH, num_frames=FRAMES,
                         qkv_bias=True, use_mean_pooling=True, layer_norm_eps=1e-6)
    return perturb(VideoMAEModel(cfg)).eval()


def clip_reference(hf, clip):
    """transformers' CLIP on frames 1, 3, 5, ... of the clip: hidden states (B, T, 1+N, D) and pooled."""
    frames = rearrange(clip[:, :, 1::2], "b c t h w -> (b t) c h w")
    with torch.no_grad():
        out = hf(pixel_values=frames, output_hidden_states=True)
    t = clip.shape[2] // 2
    states = [rearrange(h, "(b t) l d -> b t l d", t=t) for h in out.hidden_states]
    return states, rearrange(out.pooler_output, "(b t) d -> b t d", t=t)


# --- reference parity -------------------------------------------------------------------------
def test_hf_clip_parity_layer_by_layer(tmp_path, hf_clip):
    hf_clip.save_pretrained(tmp_path)
    ours = expert("clip")
    report = load_expert(ours, str(tmp_path))
    assert report.format == "hf_clip" and not report.missing and not report.unexpected
    clip = video()
    ref_states, ref_pooled = clip_reference(hf_clip, clip)
    with torch.no_grad():
        states = ours.forward_tokens(clip, joint_time=False)
    assert len(states) == len(ref_states)
    for mine, ref in zip(states, ref_states, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        pooled = ours.norm(states[-1][:, :, 0])  # per-frame post_layernorm(class token)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-5, atol=1e-5)


def test_hf_videomae_parity_layer_by_layer(tmp_path, hf_videomae):
    hf_videomae.save_pretrained(tmp_path)
    ours = expert("videomae")
    report = load_expert(ours, str(tmp_path))
    assert report.format == "hf_videomae" and not report.unexpected
    assert report.missing == ["norm.bias", "norm.weight"]  # VideoMAEModel has no post-pooling norm
    clip = video()
    with torch.no_grad():
        ref = hf_videomae(pixel_values=clip.transpose(1, 2), output_hidden_states=True).hidden_states
        states = ours.forward_tokens(clip, joint_time=True)
    for mine, r in zip(states, ref, strict=True):
        torch.testing.assert_close(rearrange(mine, "b t n d -> b (t n) d"), r, rtol=1e-5, atol=1e-5)


def _openai_state(hf: CLIPVisionModel) -> dict[str, torch.Tensor]:
    """transformers CLIP weights renamed by hand to OpenAI's `visual.*` layout (fp16, as distributed)."""
    sd = hf.state_dict()
    out = {"visual.conv1.weight": sd["embeddings.patch_embedding.weight"],
           "visual.class_embedding": sd["embeddings.class_embedding"],
           "visual.positional_embedding": sd["embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": sd["pre_layrnorm.weight"], "visual.ln_pre.bias": sd["pre_layrnorm.bias"],
           "visual.ln_post.weight": sd["post_layernorm.weight"], "visual.ln_post.bias": sd["post_layernorm.bias"],
           "visual.proj": torch.randn(WIDTH, 16), "token_embedding.weight": torch.randn(10, 16),
           "logit_scale": torch.tensor(4.6)}
    for i in range(DEPTH):
        p, q = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        out[q + "attn.in_proj_weight"] = torch.cat([sd[p + f"self_attn.{c}_proj.weight"] for c in "qkv"])
        out[q + "attn.in_proj_bias"] = torch.cat([sd[p + f"self_attn.{c}_proj.bias"] for c in "qkv"])
        for a, b in [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]:
            out[q + a + ".weight"], out[q + a + ".bias"] = sd[p + b + ".weight"], sd[p + b + ".bias"]
    return {k: v.half() for k, v in out.items()}


class _OpenAIArchive(torch.nn.Module):
    """A TorchScript module whose state dict has OpenAI CLIP's key names."""

    def __init__(self, state):
        super().__init__()
        for key, value in state.items():
            *path, leaf = key.split(".")
            node = self
            for part in path:
                if not hasattr(node, part):
                    node.add_module(part, torch.nn.Module())
                node = getattr(node, part)
            node.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_openai_torchscript_archive_and_plain_state_dict(tmp_path, hf_clip):
    state = _openai_state(hf_clip)
    archive = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(_OpenAIArchive(state)), str(archive))
    plain = tmp_path / "open_clip.pt"
    torch.save(state, plain)
    clip = video()
    ref = clip_reference(hf_clip.half().float(), clip)[0][-1]  # same fp16-rounded weights
    for source in (archive, plain):
        ours = expert("clip")
        report = load_expert(ours, str(source))
        assert report.format == "openai_clip" and not report.missing and not report.unexpected
        assert "visual.proj" in report.ignored and "logit_scale" in report.ignored
        with torch.no_grad():
            torch.testing.assert_close(ours.forward_tokens(clip, False)[-1], ref, rtol=1e-4, atol=1e-4)
    hf_clip.float()


def test_official_videomae_checkpoints(tmp_path, hf_videomae):
    """Pre-trained (`model` / `encoder.*` + decoder) and fine-tuned (`module` + fc_norm + head) layouts."""
    sd = hf_videomae.state_dict()
    blocks = {}
    for i in range(DEPTH):
        p, q = f"encoder.layer.{i}.", f"blocks.{i}."
        a = p + "attention.attention."
        blocks[q + "attn.qkv.weight"] = torch.cat([sd[a + n + ".weight"] for n in ("query", "key", "value")])
        blocks[q + "attn.q_bias"], blocks[q + "attn.v_bias"] = sd[a + "query.bias"], sd[a + "value.bias"]
        for x, y in [("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                     ("attn.proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
                     ("mlp.fc2", "output.dense")]:
            blocks[q + x + ".weight"], blocks[q + x + ".bias"] = sd[p + y + ".weight"], sd[p + y + ".bias"]
    embed = {"patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
             "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"]}
    pretrain = {"encoder." + k: v for k, v in {**embed, **blocks}.items()}
    pretrain.update({"encoder.norm.weight": torch.ones(WIDTH), "encoder.norm.bias": torch.zeros(WIDTH),
                     "decoder.blocks.0.mlp.fc1.weight": torch.randn(8, 8), "mask_token": torch.zeros(1, 1, 16),
                     "encoder_to_decoder.weight": torch.randn(16, WIDTH)})
    fc_norm = {"fc_norm.weight": torch.rand(WIDTH) + 0.5, "fc_norm.bias": torch.randn(WIDTH)}
    finetune = {**embed, **blocks, **fc_norm, "head.weight": torch.randn(5, WIDTH), "head.bias": torch.zeros(5)}
    torch.save({"model": pretrain, "epoch": 800}, tmp_path / "pretrain.pth")
    torch.save({"module": finetune}, tmp_path / "finetune.pth")
    clip = video()
    with torch.no_grad():
        ref = hf_videomae(pixel_values=clip.transpose(1, 2)).last_hidden_state
    for name in ("pretrain.pth", "finetune.pth"):
        ours = expert("videomae")
        report = load_expert(ours, str(tmp_path / name))
        assert report.format == "videomae" and not report.unexpected
        with torch.no_grad():
            tokens = ours.forward_tokens(clip, True)[-1]
        torch.testing.assert_close(rearrange(tokens, "b t n d -> b (t n) d"), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.norm.weight, fc_norm["fc_norm.weight"])
    assert "decoder.blocks.0.mlp.fc1.weight" not in report.loaded


# --- strictness and resolution ---------------------------------------------------------------
def test_errors_name_the_key(tmp_path, hf_clip):
    sd = {"vision_model." + k: v for k, v in hf_clip.state_dict().items()}
    torch.save({**sd, "vision_model.surprise.weight": torch.zeros(3)}, tmp_path / "extra.bin")
    with pytest.raises(WeightsError, match="surprise"):
        load_expert(expert("clip"), str(tmp_path / "extra.bin"))
    assert load_expert(expert("clip"), str(tmp_path / "extra.bin"), strict=False).unexpected == [
        "vision_model.surprise.weight"]
    wide = ViTExpert(ExpertConfig("clip", 2 * WIDTH, DEPTH, HEADS, patch_size=PATCH), FRAMES, IMG)
    torch.save(sd, tmp_path / "clip.bin")
    with pytest.raises(WeightsError, match=r"class_embedding: checkpoint has shape \(32,\), the model expects \(64,\)"):
        load_expert(wide, str(tmp_path / "clip.bin"))
    with pytest.raises(WeightsError, match="clip ViT, but this expert is videomae"):
        load_expert(expert("videomae"), str(tmp_path / "clip.bin"))
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_expert(expert("clip"), str(tmp_path / "nowhere.pt"))


def test_pickles_need_trust(tmp_path, hf_clip):
    torch.save({"model": hf_clip.state_dict(), "args": _Namespace()}, tmp_path / "old.pth")
    with pytest.raises(WeightsError, match="trusted=True"):
        load_expert(expert("clip"), str(tmp_path / "old.pth"))
    assert load_expert(expert("clip"), str(tmp_path / "old.pth"), trusted=True).format == "hf_clip"


class _Namespace:
    """Stands for the argparse namespaces old checkpoints pickle next to their weights."""


def test_clip_positions_are_resized_bicubically(tmp_path, hf_clip):
    hf_clip.save_pretrained(tmp_path)
    big = expert("clip", img=48)
    load_expert(big, str(tmp_path))
    pos = hf_clip.state_dict()["embeddings.position_embedding.weight"]
    grid = rearrange(pos[1:], "(h w) d -> 1 d h w", h=IMG // PATCH)
    expected = rearrange(F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False), "1 d h w -> (h w) d")
    torch.testing.assert_close(big.pos_embed[0], pos[0])
    torch.testing.assert_close(big.pos_embed[1:], expected)
    assert big.pos_embed.shape == (37, WIDTH)


def test_load_experts_into_cast_and_round_trip(tmp_path, hf_clip, hf_videomae):
    hf_clip.save_pretrained(tmp_path / "clip")
    hf_videomae.save_pretrained(tmp_path / "videomae")
    shape = {"width": WIDTH, "depth": DEPTH, "heads": HEADS}
    overrides = {f"{role}.{k}": v for role in ("spatial", "temporal") for k, v in shape.items()}
    model = CAST(preset_config("cast_tiny", overrides)).eval()
    reports = load_experts(model, spatial=str(tmp_path / "clip"), temporal=str(tmp_path / "videomae"))
    assert set(reports) == {"spatial", "temporal"}
    perturb(model.blocks)
    clip = video()
    with torch.no_grad():
        expected = model(clip)
    save_pretrained(model, tmp_path / "light")
    save_pretrained(model, tmp_path / "full", full=True)
    light = (tmp_path / "light" / "model.safetensors").stat().st_size
    assert light < (tmp_path / "full" / "model.safetensors").stat().st_size
    for name in ("light", "full"):
        again = from_pretrained(tmp_path / name).eval()
        with torch.no_grad():
            got = again(clip)
        for head in expected:
            torch.testing.assert_close(got[head], expected[head], rtol=0, atol=0)
    # the command line writes the same format
    assert main(["convert", "experts", "--preset", "cast_tiny", "--set", *(f"{k}={v}" for k, v in overrides.items()),
                 "--spatial", str(tmp_path / "clip"), "--temporal", str(tmp_path / "videomae"),
                 "--out", str(tmp_path / "cli")]) == 0
    from_cli = from_pretrained(tmp_path / "cli").eval()
    torch.testing.assert_close(from_cli.spatial.blocks[0].attn.qkv.weight, model.spatial.blocks[0].attn.qkv.weight)


# --- the official CAST checkpoint ------------------------------------------------------------
def _official_state(split: bool, seed=0) -> dict[str, torch.Tensor]:
    """A random official-format CAST state dict (names and shapes of bidir_modeling_crossattn.py)."""
    g = torch.Generator().manual_seed(seed)
    d, b, n, t = WIDTH, WIDTH // 2, (IMG // PATCH) ** 2, FRAMES // 2

    def r(*shape, scale=0.1):
        return scale * torch.randn(*shape, generator=g)

    def lin(name, i, o):
        return {f"{name}.weight": r(o, i), f"{name}.bias": r(o)}

    def ln(name, dim):
        return {f"{name}.weight": 1 + r(dim), f"{name}.bias": r(dim)}

    sd = {"clip_conv1.weight": r(d, 3, PATCH, PATCH), "clip_class_embedding": r(d),
          "clip_positional_embedding": r(n + 1, d), **ln("clip_ln_pre", d), **ln("clip_ln_post", d),
          **ln("vmae_fc_norm", d), "patch_embed.proj.weight": r(d, 3, 2, PATCH, PATCH), "patch_embed.proj.bias": r(d)}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        sd.update({p + "clip_attn.in_proj_weight": r(3 * d, d), p + "clip_attn.in_proj_bias": r(3 * d),
                   **lin(p + "clip_attn.out_proj", d, d), **ln(p + "clip_ln_1", d), **ln(p + "clip_ln_2", d),
                   **lin(p + "clip_mlp.c_fc", d, 4 * d), **lin(p + "clip_mlp.c_proj", 4 * d, d),
                   **ln(p + "norm1", d), p + "attn.qkv.weight": r(3 * d, d), p + "attn.q_bias": r(d),
                   p + "attn.v_bias": r(d), **lin(p + "attn.proj", d, d), **ln(p + "norm2", d),
                   **lin(p + "mlp.fc1", d, 4 * d), **lin(p + "mlp.fc2", 4 * d, d),
                   **lin(p + "cross_s_down", d, b), **lin(p + "cross_t_down", d, b), **ln(p + "ln_s_cross", b),
                   **ln(p + "ln_t_cross", b), **lin(p + "cross_s_up", b, d), **lin(p + "cross_t_up", b, d),
                   p + "t2s_cross.clip_time_pos": r(t, b), p + "t2s_cross.vmae_time_pos": r(t, b),
                   p + "t2s_cross.t2s_q.weight": r(b, b), p + "t2s_cross.t2s_q_bias": r(b),
                   p + "t2s_cross.t2s_kv.weight": r(2 * b, b), p + "t2s_cross.t2s_kv_bias": r(2 * b),
                   **lin(p + "t2s_cross.t2s_proj", b, b),
                   p + "s2t_cross.clip_space_pos": r(n, b), p + "s2t_cross.vmae_space_pos": r(n, b),
                   p + "s2t_cross.s2t_q.weight": r(b, b), p + "s2t_cross.s2t_q_bias": r(b),
                   p + "s2t_cross.s2t_kv.weight": r(2 * b, b), p + "s2t_cross.s2t_kv_bias": r(2 * b),
                   **lin(p + "s2t_cross.t2s_proj", b, b)})
        for a in ("S_Adapter", "T_Adapter", "S_MLP_Adapter", "T_MLP_Adapter"):
            sd.update({**lin(p + a + ".D_fc1", d, d // 4), **lin(p + a + ".D_fc2", d // 4, d)})
    if split:
        sd.update({**lin("head_verb", d, 7), **lin("head_noun", d, 9)})
    else:
        sd.update({**lin("noun_last_Adapter.D_fc1", d, d // 4), **lin("noun_last_Adapter.D_fc2", d // 4, d),
                   **lin("verb_last_Adapter.D_fc1", d, d // 4), **lin("verb_last_Adapter.D_fc2", d // 4, d),
                   **lin("head", d, 5)})
    return sd


def _attend(q, k, v, heads):
    """Plain softmax attention, written out (no SDPA): (B, L, H*d) -> (B, L, H*d)."""
    q, k, v = (rearrange(x, "b l (h d) -> b h l d", h=heads) for x in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    return rearrange(w @ v, "b h l d -> b l (h d)")


def _official_forward(sd, x, split):
    """The official model's computation, written from reading bidir_modeling_crossattn.py, on its key names."""
    def ln(h, name, eps):
        return F.layer_norm(h, h.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)

    def lin(h, name):
        return F.linear(h, sd[name + ".weight"], sd[name + ".bias"])

    def adapter(h, name):
        return lin(F.gelu(lin(h, name + ".D_fc1")), name + ".D_fc2")

    b, t = x.shape[0], x.shape[2] // 2
    s = rearrange(x[:, :, 1::2], "b c t h w -> (b t) c h w")
    s = F.conv2d(s, sd["clip_conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    s = torch.cat([sd["clip_class_embedding"].expand(s.shape[0], 1, -1), s], 1) + sd["clip_positional_embedding"]
    s = ln(s, "clip_ln_pre", 1e-5).permute(1, 0, 2)  # (L, B*T, D), CLIP is sequence-first
    v = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, PATCH, PATCH))
    v = v.flatten(2).transpose(1, 2)
    n_pos, dim = v.shape[1], v.shape[2]
    table = np.array([[p / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for p in range(n_pos)])
    table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
    v = v + torch.tensor(table, dtype=torch.float32)
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = ln(s, p + "clip_ln_1", 1e-5)
        a = F.multi_head_attention_forward(
            h, h, h, dim, HEADS, sd[p + "clip_attn.in_proj_weight"], sd[p + "clip_attn.in_proj_bias"], None, None,
            False, 0.0, sd[p + "clip_attn.out_proj.weight"], sd[p + "clip_attn.out_proj.bias"], training=False,
            need_weights=False)[0]
        s = s + a + adapter(a, p + "S_Adapter")
        h = ln(v, p + "norm1", 1e-6)
        qkv_bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(dim), sd[p + "attn.v_bias"]])
        q, k, vv = F.linear(h, sd[p + "attn.qkv.weight"], qkv_bias).chunk(3, -1)
        a = lin(_attend(q, k, vv, HEADS), p + "attn.proj")
        v = v + a + adapter(a, p + "T_Adapter")
        ns = ln(lin(s, p + "cross_s_down"), p + "ln_s_cross", 1e-6)  # (L, B*T, d)
        nt = ln(lin(v, p + "cross_t_down"), p + "ln_t_cross", 1e-6)  # (B, T*N, d)
        c = p + "t2s_cross."
        qs = rearrange(ns[1:], "n (b t) d -> (b n) t d", b=b) + sd[c + "clip_time_pos"]
        kt = rearrange(nt, "b (t n) d -> (b n) t d", t=t) + sd[c + "vmae_time_pos"]
        q = F.linear(qs, sd[c + "t2s_q.weight"], sd[c + "t2s_q_bias"])
        k, vv = F.linear(kt, sd[c + "t2s_kv.weight"], sd[c + "t2s_kv_bias"]).chunk(2, -1)
        o = rearrange(lin(_attend(q, k, vv, HEADS), c + "t2s_proj"), "(b n) t d -> n (b t) d", b=b)
        cs = lin(F.gelu(torch.cat([ns[:1], o])), p + "cross_s_up")
        c = p + "s2t_cross."
        ks = rearrange(ns[1:], "n bt d -> bt n d") + sd[c + "clip_space_pos"]
        qt = rearrange(nt, "b (t n) d -> (b t) n d", t=t) + sd[c + "vmae_space_pos"]
        q = F.linear(qt, sd[c + "s2t_q.weight"], sd[c + "s2t_q_bias"])
        k, vv = F.linear(ks, sd[c + "s2t_kv.weight"], sd[c + "s2t_kv_bias"]).chunk(2, -1)
        o = rearrange(lin(_attend(q, k, vv, HEADS), c + "t2s_proj"), "(b t) n d -> b (t n) d", b=b)
        ct = lin(F.gelu(o), p + "cross_t_up")
        s, v = s + cs, v + ct
        h = ln(s, p + "clip_ln_2", 1e-5)
        f = lin(h, p + "clip_mlp.c_fc")
        s = s + lin(f * torch.sigmoid(1.702 * f), p + "clip_mlp.c_proj") + 0.5 * adapter(h, p + "S_MLP_Adapter")
        h = ln(v, p + "norm2", 1e-6)
        v = v + lin(F.gelu(lin(h, p + "mlp.fc1")), p + "mlp.fc2") + 0.5 * adapter(h, p + "T_MLP_Adapter")
    s = rearrange(s.permute(1, 0, 2), "(b t) n d -> b t n d", b=b)
    fs = ln(s[:, :, 0].mean(1), "clip_ln_post", 1e-5)
    ft = ln(v.mean(1), "vmae_fc_norm", 1e-6)
    if split:
        return {"verb": lin(ft, "head_verb"), "noun": lin(fs, "head_noun")}
    return lin(adapter(fs, "noun_last_Adapter") + adapter(ft, "verb_last_Adapter"), "head")


@pytest.mark.parametrize("split", [True, False])
def test_official_cast_checkpoint_gives_the_official_outputs(tmp_path, split):
    sd = _official_state(split)
    if split:  # DeepSpeed's layout
        torch.save({"module": sd, "ds_version": "0.5.0", "epoch": 49}, tmp_path / "checkpoint-best.pt")
    else:  # the non-DeepSpeed layout of the training script, which pickles its argparse namespace too
        args = argparse.Namespace(lr=1e-3, num_frames=FRAMES, vmae_model="bidir_vit_base_patch16_224")
        torch.save({"model": sd, "optimizer": {}, "epoch": 69, "args": args}, tmp_path / "checkpoint-best.pt")
    model = load_official_cast(str(tmp_path / "checkpoint-best.pt"), num_heads=HEADS).eval()
    assert detect_format(sd) == "official_cast"
    clip = video()
    with torch.no_grad():
        ours = model(clip)
        ref = _official_forward(sd, clip, split)
    if split:
        assert set(ours) == {"verb", "noun"}
        for name in ours:
            torch.testing.assert_close(ours[name], ref[name], rtol=1e-5, atol=1e-5)
    else:
        assert list(ours) == ["action"]  # a single head is keyed by its name too
        torch.testing.assert_close(ours["action"], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(WeightsError, match=r"does not fit preset cast_b16_ek100: it has width 768 \(checkpoint: 32\)"):
        load_official_cast(str(tmp_path / "checkpoint-best.pt"), preset="cast_b16_ek100")


def test_official_cast_rejects_foreign_keys(tmp_path):
    sd = _official_state(True)
    sd["blocks.0.mystery.weight"] = torch.zeros(2)
    torch.save({"module": sd}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="blocks.0.mystery.weight"):
        load_official_cast(str(tmp_path / "bad.pt"), num_heads=HEADS)
