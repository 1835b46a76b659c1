"""Batch augmentation: one draw per clip for all its frames, PIL's definitions of the ops, mixup targets."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from cast_video.data import DataConfig, build_gpu_augment
from cast_video.data.augment import RAND_OPS, _equalize, parse_rand_augment
from cast_video.data.dataset import random_resized_crop_box
from cast_video.normalization import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN


def natural_clip(t=4, h=24, w=24, seed=0) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1] on the 1/255 grid: smooth gradients plus noise, different in every frame."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([yy, xx, (yy + xx) / 2])[None] * 0.6 + 0.2 * torch.rand(t, 3, h, w, generator=g)
    return (base * 255).round() / 255


@pytest.mark.parametrize("name", list(RAND_OPS))
@pytest.mark.parametrize("increasing", [False, True])
def test_each_rand_augment_op_treats_a_clip_as_its_frames_one_by_one(name, increasing):
    """The op on the clip equals the op (same parameters) on each frame alone: no op mixes frames,
    and none draws anything per frame."""
    clip = natural_clip()
    out = RAND_OPS[name](clip, 0.7, -1, increasing)
    assert out.shape == clip.shape and 0 <= out.min() and out.max() <= 1
    for t in range(clip.shape[0]):
        torch.testing.assert_close(out[t:t + 1], RAND_OPS[name](clip[t:t + 1], 0.7, -1, increasing))


def pil(frame: torch.Tensor) -> Image.Image:
    return Image.fromarray((frame.permute(1, 2, 0) * 255).round().byte().numpy())


def as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("name, reference", [
    ("AutoContrast", lambda im, lv: ImageOps.autocontrast(im)),
    ("Equalize", lambda im, lv: ImageOps.equalize(im)),
    ("Invert", lambda im, lv: ImageOps.invert(im)),
    ("Posterize", lambda im, lv: ImageOps.posterize(im, int(lv * 4))),
    ("Solarize", lambda im, lv: ImageOps.solarize(im, int(lv * 256))),
    ("Color", lambda im, lv: ImageEnhance.Color(im).enhance(lv * 1.8 + 0.1)),
    ("Brightness", lambda im, lv: ImageEnhance.Brightness(im).enhance(lv * 1.8 + 0.1)),
    ("Contrast", lambda im, lv: ImageEnhance.Contrast(im).enhance(lv * 1.8 + 0.1)),
    ("Sharpness", lambda im, lv: ImageEnhance.Sharpness(im).enhance(lv * 1.8 + 0.1)),
])
def test_photometric_ops_match_pil_as_timm_calls_it(name, reference):
    clip = natural_clip(t=2, seed=1)
    level = 0.7
    out = RAND_OPS[name](clip, level, 1, False)
    expected = torch.stack([as_tensor(reference(pil(f), level)) for f in clip])
    assert (out - expected).abs().max().item() <= 2.5 / 255  # PIL rounds to uint8 inside some ops


def test_equalize_matches_pil_exactly_on_a_skewed_histogram():
    frame = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) ** 3 * 255).round() / 255
    torch.testing.assert_close(_equalize(frame)[0], as_tensor(ImageOps.equalize(pil(frame[0]))))


def test_rand_augment_spec():
    assert parse_rand_augment("rand-m7-n4-mstd0.5") == (4, 7.0, 0.5, False)
    assert parse_rand_augment("rand-m7-n4-mstd0.5-inc1") == (4, 7.0, 0.5, True)
    with pytest.raises(ValueError, match="must start with 'rand'"):
        parse_rand_augment("autoaug")


def test_whole_pipeline_draws_once_per_clip():
    """Identical frames stay identical through flip, RandAugment, jitter and erasing; clips differ."""
    cfg = DataConfig(mixup=0, cutmix=0, random_erasing=0.5, color_jitter_with_rand_augment=True)
    aug = build_gpu_augment(cfg, {"action": 5}).train()
    frame = (natural_clip(t=2, seed=3) * 255).byte().permute(1, 0, 2, 3)[:, :1]  # (3, 1, H, W)
    video = frame[None].expand(2, 3, 8, 24, 24)  # 2 clips of 8 identical frames
    g = torch.Generator().manual_seed(0)
    changed = 0
    for _ in range(8):
        out, _ = aug(video, {"action": torch.tensor([1, 2])}, generator=g)
        torch.testing.assert_close(out, out[:, :, :1].expand_as(out))
        changed += not torch.allclose(out[0], out[1])
    assert changed >= 6  # the two clips get their own draws


def test_flip_off_for_ssv2_and_eval_only_normalises():
    cfg = DataConfig(flip=False, rand_augment="", color_jitter=0, mixup=0, cutmix=0, label_smoothing=0)
    aug = build_gpu_augment(cfg, {"action": 3}).train()
    video = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    mean, std = (torch.tensor(s).view(3, 1, 1, 1) for s in cfg.normalization())
    for seed in range(10):
        out, targets = aug(video, {"action": torch.tensor([0, 2])}, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out, (video / 255 - mean) / std)  # never flipped
    assert targets["action"].tolist() == [[1, 0, 0], [0, 0, 1]]
    aug.eval()
    torch.testing.assert_close(aug(video)[0], (video / 255 - mean) / std)
    flips = DataConfig(rand_augment="", color_jitter=0, mixup=0, cutmix=0)
    aug = build_gpu_augment(flips, {"action": 3}).train()
    outs = [aug(video, generator=torch.Generator().manual_seed(s))[0] for s in range(10)]
    assert any(torch.allclose(o[0], outs[0][0].flip(-1)) for o in outs) or any(
        torch.allclose(o[0].flip(-1), (video[0] / 255 - mean) / std) for o in outs)


def test_normalisation_presets():
    assert DataConfig().normalization()[0] == IMAGENET_MEAN
    assert DataConfig(norm="clip").normalization() == (CLIP_MEAN, CLIP_STD)
    assert DataConfig(norm="clip", mean=(0.5, 0.5, 0.5)).normalization()[0] == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="norm must be one of"):
        DataConfig(norm="kinetics")


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixup_and_cutmix_share_lambda_and_partner_across_tasks(mode):
    cfg = DataConfig(rand_augment="", color_jitter=0, flip=False, mixup=0.8 if mode == "mixup" else 0,
                     cutmix=1.0 if mode == "cutmix" else 0, mix_prob=1.0)
    aug = build_gpu_augment(cfg, {"verb": 4, "noun": 6}).train()
    mean, std = (torch.tensor(s).view(3, 1, 1, 1) for s in cfg.normalization())
    video = torch.zeros(2, 3, 4, 16, 16, dtype=torch.uint8)
    video[1] = 255
    for seed in range(5):
        out, t = aug(video, {"verb": torch.tensor([0, 1]), "noun": torch.tensor([2, 3])},
                     generator=torch.Generator().manual_seed(seed))
        for y in t.values():
            torch.testing.assert_close(y.sum(1), torch.ones(2))
        white = (out[0] * std + mean).mean().item()  # the partner's share of the pixels of clip 0
        verb_share = (t["verb"][0, 1].item() - 0.1 / 4) / 0.9  # its share of clip 0's verb target
        noun_share = (t["noun"][0, 3].item() - 0.1 / 6) / 0.9
        assert white == pytest.approx(verb_share, abs=1e-4) and noun_share == pytest.approx(verb_share, abs=1e-5)
        if mode == "cutmix":  # one box, the same in every frame
            torch.testing.assert_close(out[0], out[0, :, :1].expand_as(out[0]))


def test_mixup_lambda_follows_beta():
    cfg = DataConfig(rand_augment="", color_jitter=0, flip=False, mixup=0.8, cutmix=0, mix_prob=1.0,
                     label_smoothing=0)
    aug = build_gpu_augment(cfg, {"a": 2}).train()
    g = torch.Generator().manual_seed(0)
    lams = [aug(torch.zeros(2, 3, 1, 2, 2, dtype=torch.uint8), {"a": torch.tensor([0, 1])}, generator=g)[1]["a"][0, 0]
            .item() for _ in range(400)]
    lams = np.array(lams)
    assert abs(lams.mean() - 0.5) < 0.05 and abs(lams.var() - 1 / (4 * (2 * 0.8 + 1))) < 0.02  # Beta(.8, .8)


def test_random_resized_crop_box_in_bounds():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(30, 50, (0.08, 1.0), (0.75, 1.333), rng)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50 and h > 0 and w > 0
        areas.append(h * w / 1500)
    assert min(areas) < 0.15 and max(areas) > 0.7  # at most 30x40 of 30x50 fits the aspect limits
