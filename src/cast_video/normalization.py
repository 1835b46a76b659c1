"""Pixel statistics (per-channel mean and std of [0, 1] RGB) that pretrained weights expect.

Both the data layer (which normalises clips) and the models (whose experts may convert a clip to their
own statistics) take them from here, so neither imports the other. The official CAST feeds both experts
ImageNet's; CLIP was trained with its own; SigLIP maps [0, 1] to [-1, 1].
"""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
PIXEL_STATS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
    "siglip": (SIGLIP_MEAN, SIGLIP_STD),
}
