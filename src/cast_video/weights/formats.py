"""Key mappings from the checkpoint formats users arrive with to our names.

Each converter takes a flat state dict in its source format and returns (ours, extras): `ours` in
`ViTExpert` names (or whole-`CAST` names for the official CAST format), `extras` the source keys that
are known to have no place in the target (CLIP's text tower, VideoMAE's decoder, classifier heads).
A key the converter does not know lands in `ours` as `?<source key>`, so the loader reports it as
unexpected under the name the user's file gives it.
"""

from __future__ import annotations

import re

import torch

from ..errors import WeightsError
from ..models.layers import sinusoid_table

EXPERT_FORMATS = ("openai_clip", "hf_clip", "hf_siglip", "hf_dinov2", "videomae", "hf_videomae", "hf_vjepa2",
                  "cast_video")
# The architecture each expert format holds (our own format holds any).
ARCH_OF_FORMAT = {"openai_clip": "clip", "hf_clip": "clip", "hf_siglip": "siglip", "hf_dinov2": "dinov2",
                  "videomae": "videomae", "hf_videomae": "videomae", "hf_vjepa2": "vjepa2"}


def _split_qkv_bias(bias: torch.Tensor) -> dict[str, torch.Tensor]:
    q, k, v = bias.chunk(3)
    return {"attn.q_bias": q, "attn.k_bias": k, "attn.v_bias": v}


def detect_format(sd: dict[str, torch.Tensor], where: str = "checkpoint") -> str:
    """The source format of a flat state dict, from its key names; `where` names the file in the error."""
    keys = list(sd)
    openai_visual = any(k.startswith("visual.transformer.resblocks.") for k in keys)
    openai_bare = "conv1.weight" in sd and any(k.startswith("transformer.resblocks.") for k in keys)
    if openai_visual or openai_bare:
        return "openai_clip"
    if any(".self_attn.q_proj." in k for k in keys) and any("embeddings.patch_embedding" in k for k in keys):
        return "hf_clip" if any("embeddings.class_embedding" in k for k in keys) else "hf_siglip"
    if any(k.endswith("encoder.embeddings.patch_embeddings.proj.weight") for k in keys):
        return "hf_vjepa2"
    if any(k.endswith("embeddings.cls_token") for k in keys) and any(".layer_scale1." in k for k in keys):
        return "hf_dinov2"  # before VideoMAE: older DINOv2 files share its `attention.attention.query` names
    if any("attention.attention.query" in k for k in keys):
        return "hf_videomae"
    if any(k.startswith("blocks.") and ".clip_attn." in k for k in keys):
        return "official_cast"
    if any(k.endswith(("patch_embed.proj.weight", "patch_embed.projection.weight")) for k in keys):
        return "videomae"  # VideoMAE and VideoMAE V2 (their own names, or mmaction2's)
    if "patch_embed.weight" in sd and any(k.startswith("blocks.0.attn.qkv") for k in keys):
        return "cast_video"
    if "spatial.patch_embed.weight" in sd or "temporal.patch_embed.weight" in sd:
        return "cast_video"  # a whole CAST of ours; `load_expert` takes one expert out of it
    raise WeightsError(f"{where}: unrecognised checkpoint format: expected OpenAI CLIP, transformers CLIP / SigLIP "
                       f"/ DINOv2 / VideoMAE / V-JEPA 2, official VideoMAE / VideoMAE V2, official CAST or cast-video "
                       f"keys; first keys: {keys[:5]}")


# OpenAI CLIP's text tower and joint-embedding parts, and the hyper-parameters its TorchScript file
# stores as tensors: known to have no place in a vision expert.
_OPENAI_EXTRAS = re.compile(
    r"transformer\.resblocks\.\d+\..+|token_embedding\.weight|positional_embedding|ln_final\.(weight|bias)"
    r"|text_projection|logit_scale|input_resolution|context_length|vocab_size|attn_mask"
)


def from_openai_clip(sd: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """OpenAI CLIP (`visual.*`, TorchScript or open_clip's plain state dict; or the visual tower's own
    state dict, without `visual.`) -> ViTExpert(clip)."""
    prefix = "visual." if any(k.startswith("visual.") for k in sd) else ""
    ours, extras = {}, []
    simple = {"conv1.weight": "patch_embed.weight", "class_embedding": "class_embedding",
              "positional_embedding": "pos_embed", "ln_pre.weight": "ln_pre.weight", "ln_pre.bias": "ln_pre.bias",
              "ln_post.weight": "norm.weight", "ln_post.bias": "norm.bias"}
    block = {"ln_1": "norm1", "ln_2": "norm2", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1",
             "mlp.c_proj": "mlp.fc2"}
    for key, value in sd.items():
        if not key.startswith(prefix):
            if _OPENAI_EXTRAS.fullmatch(key):
                extras.append(key)
            else:
                ours[f"?{key}"] = value
            continue
        name = key[len(prefix):]
        m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)", name)
        if name in simple:
            ours[simple[name]] = value
        elif m and m.group(2) == "attn.in_proj" and m.group(3) == "weight":
            ours[f"blocks.{m.group(1)}.attn.qkv.weight"] = value
        elif m and m.group(2) == "attn.in_proj":
            ours.update({f"blocks.{m.group(1)}.{k}": v for k, v in _split_qkv_bias(value).items()})
        elif m and m.group(2) in block and name.endswith("." + m.group(3)):
            ours[f"blocks.{m.group(1)}.{block[m.group(2)]}.{m.group(3)}"] = value
        elif name == "proj":
            extras.append(key)  # the image projection into the joint embedding space
        else:
            ours[f"?{key}"] = value
    return ours, extras


def from_hf_clip(sd: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """transformers `CLIPVisionModel` / `CLIPModel` (with or without `vision_model.`) -> ViTExpert(clip)."""
    ours, extras, qkv = {}, [], {}
    simple = {"embeddings.class_embedding": "class_embedding",
              "embeddings.patch_embedding.weight": "patch_embed.weight",
              "embeddings.position_embedding.weight": "pos_embed", "pre_layrnorm.weight": "ln_pre.weight",
              "pre_layrnorm.bias": "ln_pre.bias", "post_layernorm.weight": "norm.weight",
              "post_layernorm.bias": "norm.bias"}
    block = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj", "mlp.fc1": "mlp.fc1",
             "mlp.fc2": "mlp.fc2"}
    for key, value in sd.items():
        name = key.removeprefix("vision_model.")
        if key.startswith(("text_model.", "text_projection", "visual_projection", "logit_scale")) or name in (
            "embeddings.position_ids",
        ):
            extras.append(key)
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if name in simple:
            ours[simple[name]] = value
        elif m and m.group(2) in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv[(int(m.group(1)), m.group(2)[-6], m.group(3))] = value
        elif m and m.group(2) in block:
            ours[f"blocks.{m.group(1)}.{block[m.group(2)]}.{m.group(3)}"] = value
        else:
            ours[f"?{key}"] = value
    for i in sorted({k[0] for k in qkv}):
        ours[f"blocks.{i}.attn.qkv.weight"] = torch.cat([qkv[(i, c, "weight")] for c in "qkv"])
        for c in "qkv":
            ours[f"blocks.{i}.attn.{c}_bias"] = qkv[(i, c, "bias")]
    return ours, extras


def from_hf_siglip(sd: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """transformers `SiglipVisionModel` / `SiglipModel` (SigLIP and SigLIP 2 FixRes) -> ViTExpert(siglip).

    `post_layernorm` is the norm CAST fine-tunes (it precedes the attention-pooling head); the head's
    `nn.MultiheadAttention` is split into our query and key/value projections."""
    ours, extras, qkv = {}, [], {}
    simple = {"embeddings.patch_embedding.weight": "patch_embed.weight",
              "embeddings.patch_embedding.bias": "patch_embed.bias",
              "embeddings.position_embedding.weight": "pos_embed", "post_layernorm.weight": "norm.weight",
              "post_layernorm.bias": "norm.bias", "head.layernorm.weight": "map_head.norm.weight",
              "head.layernorm.bias": "map_head.norm.bias",
              "head.attention.out_proj.weight": "map_head.attn.proj.weight",
              "head.attention.out_proj.bias": "map_head.attn.proj.bias"}
    block = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj", "mlp.fc1": "mlp.fc1",
             "mlp.fc2": "mlp.fc2"}
    for key, value in sd.items():
        name = key.removeprefix("vision_model.")
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        head_mlp = re.fullmatch(r"head\.mlp\.(fc1|fc2)\.(weight|bias)", name)
        if key.startswith(("text_model.", "logit_scale", "logit_bias")) or name == "embeddings.position_ids":
            extras.append(key)
        elif name in simple:
            ours[simple[name]] = value
        elif name == "head.probe":
            ours["map_head.probe"] = value.reshape(-1)  # (1, 1, D) -> (D,)
        elif name.startswith("head.attention.in_proj_"):  # (3D, ...) = [q; k; v]
            leaf = name.rsplit("_", 1)[1]
            ours[f"map_head.attn.q.{leaf}"], ours[f"map_head.attn.kv.{leaf}"] = value.split(
                [value.shape[0] // 3, 2 * value.shape[0] // 3])
        elif head_mlp:
            ours[f"map_head.mlp.{head_mlp.group(1)}.{head_mlp.group(2)}"] = value
        elif m and m.group(2) in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv[(int(m.group(1)), m.group(2)[-6], m.group(3))] = value
        elif m and m.group(2) in block:
            ours[f"blocks.{m.group(1)}.{block[m.group(2)]}.{m.group(3)}"] = value
        else:
            ours[f"?{key}"] = value
    ours.update(_fused_qkv(qkv))
    return ours, extras


def _fused_qkv(qkv: dict[tuple[int, str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """{(block, "q"|"k"|"v", "weight"|"bias"): tensor} -> our fused qkv weight and separate biases."""
    ours = {}
    for i in sorted({k[0] for k in qkv}):
        ours[f"blocks.{i}.attn.qkv.weight"] = torch.cat([qkv[(i, c, "weight")] for c in "qkv"])
        for c in "qkv":
            if (i, c, "bias") in qkv:
                ours[f"blocks.{i}.attn.{c}_bias"] = qkv[(i, c, "bias")]
    return ours


# DINOv2 block parts, under both of transformers' namings (the published files' and transformers 5's).
_DINOV2_BLOCK = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                 "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj"}
_DINOV2_QKV = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
               "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v"}


def from_hf_dinov2(sd: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """transformers `Dinov2Model` / `Dinov2WithRegistersModel` -> ViTExpert(dinov2). The final
    `layernorm` is the norm CAST fine-tunes; `mask_token` (for masked pre-training) has no place."""
    ours, extras, qkv = {}, [], {}
    simple = {"embeddings.patch_embeddings.projection.weight": "patch_embed.weight",
              "embeddings.patch_embeddings.projection.bias": "patch_embed.bias",
              "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    squeeze = {"embeddings.cls_token": "class_embedding", "embeddings.position_embeddings": "pos_embed",
               "embeddings.register_tokens": "register_tokens"}  # (1, ..., D) -> without the batch dimension
    for key, value in sd.items():
        name = key.removeprefix("dinov2.")
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", name)
        part = m.group(2) if m else None
        if name == "embeddings.mask_token" or key.startswith("classifier."):
            extras.append(key)
        elif name in simple:
            ours[simple[name]] = value
        elif name in squeeze:
            ours[squeeze[name]] = value.reshape(-1) if name.endswith("cls_token") else value[0]
        elif m and part in ("layer_scale1", "layer_scale2"):
            ours[f"blocks.{m.group(1)}.ls{part[-1]}"] = value
        elif m and part in _DINOV2_QKV:
            qkv[(int(m.group(1)), _DINOV2_QKV[part], m.group(3))] = value
        elif m and part in _DINOV2_BLOCK:
            ours[f"blocks.{m.group(1)}.{_DINOV2_BLOCK[part]}.{m.group(3)}"] = value
        else:
            ours[f"?{key}"] = value
    ours.update(_fused_qkv(qkv))
    return ours, extras


def from_hf_vjepa2(sd: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """transformers `VJEPA2Model` / `VJEPA2ForVideoClassification` -> ViTExpert(vjepa2): the encoder only;
    the predictor (for self-supervised training) and the attentive pooler are known extras. The
    encoder's final `layernorm` is the norm CAST fine-tunes."""
    ours, extras, qkv = {}, [], {}
    block = {"norm1": "norm1", "norm2": "norm2", "attention.proj": "attn.proj", "mlp.fc1": "mlp.fc1",
             "mlp.fc2": "mlp.fc2"}
    for key, value in sd.items():
        name = key.removeprefix("vjepa2.")
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", name)
        if name.startswith(("predictor.", "pooler.", "classifier.")):
            extras.append(key)
        elif name.startswith("encoder.embeddings.patch_embeddings.proj."):
            ours["patch_embed." + name.rsplit(".", 1)[1]] = value
        elif name.startswith("encoder.layernorm."):
            ours["norm." + name.rsplit(".", 1)[1]] = value
        elif m and m.group(2) in ("attention.query", "attention.key", "attention.value"):
            qkv[(int(m.group(1)), m.group(2).rsplit(".", 1)[1][0], m.group(3))] = value
        elif m and m.group(2) in block:
            ours[f"blocks.{m.group(1)}.{block[m.group(2)]}.{m.group(3)}"] = value
        else:
            ours[f"?{key}"] = value
    ours.update(_fused_qkv(qkv))
    return ours, extras


# The VisionTransformer of the VideoMAE and VideoMAE V2 repositories (models/modeling_finetune.py and
# models/modeling_pretrain.py of MCG-NJU/VideoMAE and OpenGVLab/VideoMAEv2 name their weights alike), as
# it is saved: `encoder.` in pre-training checkpoints, `model.` in the hub's VideoMAEv2 PreTrainedModel
# (OpenGVLab/VideoMAEv2-Base, ...), `backbone.` in mmaction2's port and the official CAST code, and
# `_orig_mod.` when trained under torch.compile (VideoMAE V2's fine-tuning strips it too).
_VIDEOMAE_PREFIXES = ("_orig_mod.", "model.", "backbone.", "encoder.")
# Known to have no place in the expert: the pre-training decoder, classifier heads (mmaction2's
# `cls_head`), and `norm`, the pre-decoder norm (pre-training) or the norm on the first token of a
# fine-tuning with --use_cls; CAST's temporal norm follows the mean pooling, as `fc_norm` does.
_VIDEOMAE_EXTRAS = re.compile(r"(decoder|encoder_to_decoder|mask_token|head|cls_head|norm)(\..+)?")
_VIDEOMAE_BLOCK = re.compile(r"blocks\.\d+\.((norm1|norm2|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
                             r"|attn\.(qkv\.weight|q_bias|v_bias))")
# mmaction2's names for the same tensors (mmcv's PatchEmbed and FFN).
_MMACTION_RENAMES = (("patch_embed.projection.", "patch_embed.proj."), (".mlp.layers.0.0.", ".mlp.fc1."),
                     (".mlp.layers.1.", ".mlp.fc2."))
# Variants of the architecture that our VideoMAE expert does not compute, named when a checkpoint has them.
_VIDEOMAE_VARIANTS = {"attn.scale": "cosine attention (cos_attn)", "gamma_1": "LayerScale (init_values > 0)",
                      "gamma_2": "LayerScale (init_values > 0)"}


def _videomae_name(key: str) -> str:
    """A VideoMAE / VideoMAE V2 key without its wrappers, in the repositories' own names."""
    name = key
    for prefix in _VIDEOMAE_PREFIXES:
        name = name.removeprefix(prefix)
    for theirs, ours in _MMACTION_RENAMES:
        name = name.replace(theirs, ours) if name.startswith(("patch_embed.", "blocks.")) else name
    return name


def _check_sincos(key: str, value: torch.Tensor) -> None:
    """A stored `pos_embed` must be the fixed sine-cosine table (mmaction2 saves it as a buffer); a learned
    one (use_learnable_pos_emb) is a variant our expert does not compute."""
    table = value.reshape(-1, value.shape[-1]).float()  # (1, T*N, D) -> (T*N, D)
    if not torch.allclose(table, sinusoid_table(*table.shape), atol=1e-5):
        raise WeightsError(f"{key}: a learned position table (use_learnable_pos_emb); the VideoMAE expert "
                           "has the fixed sine-cosine one")


def from_videomae(sd: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Official VideoMAE and VideoMAE V2 checkpoints (B, L, H, g, the distilled S and B, mmaction2's port)
    -> ViTExpert(videomae).

    Pre-trained: `encoder.*` plus a decoder; `encoder.norm` normalises tokens for the decoder and has
    no place in CAST, whose temporal norm follows the pooling. Fine-tuned: `fc_norm` is exactly that
    post-pooling norm and is kept; `head` is dropped. Our block names are the repositories' own. A
    checkpoint of a variant we do not compute (cosine attention, LayerScale, learned positions) raises
    a `WeightsError` naming the key.
    """
    ours, extras = {}, []
    for key, value in sd.items():
        name = _videomae_name(key)
        variant = next((what for leaf, what in _VIDEOMAE_VARIANTS.items() if name.endswith("." + leaf)), None)
        if variant is not None and name.startswith("blocks."):
            raise WeightsError(f"{key}: {variant} is a VideoMAE V2 variant that the VideoMAE expert does not compute")
        if name == "pos_embed":
            _check_sincos(key, value)
            extras.append(key)  # the fixed table, regenerated for the model's frames and size
        elif _VIDEOMAE_EXTRAS.fullmatch(name):
            extras.append(key)
        elif name.startswith("patch_embed.proj."):
            ours["patch_embed." + name.removeprefix("patch_embed.proj.")] = value
        elif name.startswith("fc_norm."):
            ours["norm." + name.removeprefix("fc_norm.")] = value
        elif _VIDEOMAE_BLOCK.fullmatch(name):
            ours[name] = value
        else:
            ours[f"?{key}"] = value
    return ours, extras


def from_hf_videomae(sd: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """transformers `VideoMAEModel` / `ForPreTraining` / `ForVideoClassification` -> ViTExpert(videomae)."""
    ours, extras, qkv = {}, [], {}
    block = {"attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
             "layernorm_before": "norm1", "layernorm_after": "norm2"}
    for key, value in sd.items():
        name = key.removeprefix("videomae.")
        if key.startswith(("decoder.", "encoder_to_decoder", "mask_token", "classifier", "position_embeddings")) or (
            name.startswith("layernorm.")
        ):
            extras.append(key)
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", name)
        attn = re.fullmatch(r"attention\.attention\.(query|key|value)\.(weight|bias)", m.group(2)) if m else None
        bias = re.fullmatch(r"attention\.attention\.(q|v)_bias", m.group(2)) if m else None
        sub = re.fullmatch(r"(.+)\.(weight|bias)", m.group(2)) if m else None
        if name.startswith("embeddings.patch_embeddings.projection."):
            ours["patch_embed." + name.rsplit(".", 1)[1]] = value
        elif name.startswith("fc_norm."):
            ours["norm." + name.rsplit(".", 1)[1]] = value
        elif attn and attn.group(2) == "weight":
            qkv[(int(m.group(1)), attn.group(1)[0])] = value
        elif attn:
            ours[f"blocks.{m.group(1)}.attn.{attn.group(1)[0]}_bias"] = value
        elif bias:
            ours[f"blocks.{m.group(1)}.attn.{bias.group(1)}_bias"] = value
        elif sub and sub.group(1) in block:
            ours[f"blocks.{m.group(1)}.{block[sub.group(1)]}.{sub.group(2)}"] = value
        else:
            ours[f"?{key}"] = value
    for i in sorted({k[0] for k in qkv}):
        ours[f"blocks.{i}.attn.qkv.weight"] = torch.cat([qkv[(i, c)] for c in "qkv"])
    return ours, extras


def from_cast_video(sd: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Our own expert files (`ViTExpert.state_dict()`, e.g. written by `cast-video pretrain`)."""
    return dict(sd), []


EXPERT_CONVERTERS = {"openai_clip": from_openai_clip, "hf_clip": from_hf_clip, "hf_siglip": from_hf_siglip,
                     "hf_dinov2": from_hf_dinov2, "videomae": from_videomae, "hf_videomae": from_hf_videomae,
                     "hf_vjepa2": from_hf_vjepa2, "cast_video": from_cast_video}


# The one place that names the official checkpoints' head keys. Classifiers: EK100's composition heads
# (`head_verb`, `head_noun`) or the single head of SSV2 / K400 (`head`, whose name is the config's own).
# The fused head's adapters (eq. 6): `noun_last_Adapter` on the spatial class token, `verb_last_Adapter`
# on the temporal pooled tokens.
OFFICIAL_HEADS = {"head_verb": "verb", "head_noun": "noun", "head": None}
OFFICIAL_FUSION_ADAPTERS = {"noun_last_Adapter": "fuse_s", "verb_last_Adapter": "fuse_t"}


def _official_head(key: str, single_head: str) -> str | None:
    """Our name of an official head key (`head_verb.weight` -> `heads.verb.weight`), None if not a head."""
    module, _, rest = key.partition(".")
    if module in OFFICIAL_HEADS:
        return f"heads.{OFFICIAL_HEADS[module] or single_head}.{rest}"
    if module in OFFICIAL_FUSION_ADAPTERS:  # noun_last_Adapter.D_fc1.weight -> fuse_s.fc1.weight
        return f"{OFFICIAL_FUSION_ADAPTERS[module]}.{rest.removeprefix('D_')}"
    return None


# B-CAST position tables of the official blocks: (our name in the exchange, whether (T, d) becomes (T, 1, d))
_OFFICIAL_POS = {"t2s_cross.clip_time_pos": ("t2s.pos_q_time", True),
                 "t2s_cross.vmae_time_pos": ("t2s.pos_kv_time", True),
                 "s2t_cross.vmae_space_pos": ("s2t.pos_q_space", False),  # S2T queries are the temporal tokens
                 "s2t_cross.clip_space_pos": ("s2t.pos_kv_space", False)}


def _official_block_entry(key: str, i: str, rest: str, value: torch.Tensor, params: dict, block: dict) -> dict:
    """Our entries for the official key `blocks.{i}.{rest}` (`?key` for one we do not know)."""
    mod, _, leaf = rest.rpartition(".")
    if rest in params:
        return {params[rest].format(i=i): value}
    if rest == "clip_attn.in_proj_bias":
        return {f"spatial.blocks.{i}.{k}": v for k, v in _split_qkv_bias(value).items()}
    if rest in _OFFICIAL_POS:
        name, add_axis = _OFFICIAL_POS[rest]
        return {f"blocks.{i}.exchange.{name}": value[:, None] if add_axis else value}  # (T, d) -> (T, 1, d)
    if mod in block and leaf in ("weight", "bias"):
        return {f"{block[mod].format(i=i)}.{leaf}": value}
    return {f"?{key}": value}


def from_official_cast(sd: dict[str, torch.Tensor], single_head: str = "action") -> tuple[dict, list[str]]:
    """The official CAST repository's fine-tuned checkpoints -> whole-CAST names. `single_head` names
    the head of a one-head (SSV2 / K400) checkpoint, as the config it is loaded into does."""
    ours, extras = {}, []
    top = {"clip_conv1.weight": "spatial.patch_embed.weight", "clip_class_embedding": "spatial.class_embedding",
           "clip_positional_embedding": "spatial.pos_embed", "clip_ln_pre.weight": "spatial.ln_pre.weight",
           "clip_ln_pre.bias": "spatial.ln_pre.bias", "clip_ln_post.weight": "spatial.norm.weight",
           "clip_ln_post.bias": "spatial.norm.bias", "vmae_fc_norm.weight": "temporal.norm.weight",
           "vmae_fc_norm.bias": "temporal.norm.bias", "patch_embed.proj.weight": "temporal.patch_embed.weight",
           "patch_embed.proj.bias": "temporal.patch_embed.bias"}
    block = {
        # spatial expert (CLIP, frozen)
        "clip_ln_1": "spatial.blocks.{i}.norm1", "clip_attn.out_proj": "spatial.blocks.{i}.attn.proj",
        "clip_ln_2": "spatial.blocks.{i}.norm2", "clip_mlp.c_fc": "spatial.blocks.{i}.mlp.fc1",
        "clip_mlp.c_proj": "spatial.blocks.{i}.mlp.fc2",
        # temporal expert (VideoMAE, frozen)
        "norm1": "temporal.blocks.{i}.norm1", "attn.proj": "temporal.blocks.{i}.attn.proj",
        "norm2": "temporal.blocks.{i}.norm2", "mlp.fc1": "temporal.blocks.{i}.mlp.fc1",
        "mlp.fc2": "temporal.blocks.{i}.mlp.fc2",
        # adapters
        "S_Adapter.D_fc1": "blocks.{i}.s_attn_adapter.fc1", "S_Adapter.D_fc2": "blocks.{i}.s_attn_adapter.fc2",
        "T_Adapter.D_fc1": "blocks.{i}.t_attn_adapter.fc1", "T_Adapter.D_fc2": "blocks.{i}.t_attn_adapter.fc2",
        "S_MLP_Adapter.D_fc1": "blocks.{i}.s_mlp_adapter.fc1", "S_MLP_Adapter.D_fc2": "blocks.{i}.s_mlp_adapter.fc2",
        "T_MLP_Adapter.D_fc1": "blocks.{i}.t_mlp_adapter.fc1", "T_MLP_Adapter.D_fc2": "blocks.{i}.t_mlp_adapter.fc2",
        # B-CAST
        "cross_s_down": "blocks.{i}.exchange.down_s", "cross_t_down": "blocks.{i}.exchange.down_t",
        "ln_s_cross": "blocks.{i}.exchange.norm_s", "ln_t_cross": "blocks.{i}.exchange.norm_t",
        "cross_s_up": "blocks.{i}.exchange.up_s", "cross_t_up": "blocks.{i}.exchange.up_t",
        "t2s_cross.t2s_q": "blocks.{i}.exchange.t2s.attn.q", "t2s_cross.t2s_kv": "blocks.{i}.exchange.t2s.attn.kv",
        "t2s_cross.t2s_proj": "blocks.{i}.exchange.t2s.attn.proj",
        "s2t_cross.s2t_q": "blocks.{i}.exchange.s2t.attn.q", "s2t_cross.s2t_kv": "blocks.{i}.exchange.s2t.attn.kv",
        "s2t_cross.t2s_proj": "blocks.{i}.exchange.s2t.attn.proj",
    }
    params = {
        "attn.qkv.weight": "temporal.blocks.{i}.attn.qkv.weight", "attn.q_bias": "temporal.blocks.{i}.attn.q_bias",
        "attn.v_bias": "temporal.blocks.{i}.attn.v_bias",
        "clip_attn.in_proj_weight": "spatial.blocks.{i}.attn.qkv.weight",
        "t2s_cross.t2s_q_bias": "blocks.{i}.exchange.t2s.attn.q.bias",
        "t2s_cross.t2s_kv_bias": "blocks.{i}.exchange.t2s.attn.kv.bias",
        "s2t_cross.s2t_q_bias": "blocks.{i}.exchange.s2t.attn.q.bias",
        "s2t_cross.s2t_kv_bias": "blocks.{i}.exchange.s2t.attn.kv.bias",
    }
    for key, value in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        head = _official_head(key, single_head)
        if key in top:
            ours[top[key]] = value
        elif head is not None:
            ours[head] = value
        elif key == "pos_embed":
            extras.append(key)  # the fixed sinusoid table; we regenerate it
        elif m is None:
            ours[f"?{key}"] = value
        else:
            ours.update(_official_block_entry(key, m.group(1), m.group(2), value, params, block))
    return ours, extras
