"""Batch augmentation: one draw per clip for all its frames, PIL's definitions of the ops, draws keyed by
the sample (any batch, any process split), batched without host reads, and mixup targets that match
the pixels."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from cast_video.benchmark import CountSyncs
from cast_video.data import DataConfig, build_gpu_augment
from cast_video.data.augment import (
    _TRIES,
    RAND_OPS,
    _apply_op,
    _beta,
    _equalize,
    half_roll,
    keyed_uniform,
    parse_rand_augment,
)
from cast_video.data.dataset import random_resized_crop_box
from cast_video.normalization import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN

PLAIN = dict(rand_augment="", color_jitter=0, flip=False, mixup=0, cutmix=0, label_smoothing=0)


def natural_clip(t=4, h=24, w=24, seed=0) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1] on the 1/255 grid: smooth gradients plus noise, different in every frame."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([yy, xx, (yy + xx) / 2])[None] * 0.6 + 0.2 * torch.rand(t, 3, h, w, generator=g)
    return (base * 255).round() / 255


def op(name, clip, level, sign, increasing=False):
    """RAND_OPS on one clip (T, 3, H, W) with scalar parameters (the ops take batches of clips)."""
    return RAND_OPS[name](clip[None], torch.tensor([float(level)]), torch.tensor([float(sign)]), increasing)[0]


def denormalise(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    mean, std = (torch.tensor(s).view(3, 1, 1, 1) for s in cfg.normalization())
    return x * std + mean


@pytest.mark.parametrize("name", list(RAND_OPS))
@pytest.mark.parametrize("increasing", [False, True])
def test_each_rand_augment_op_treats_a_clip_as_its_frames_one_by_one(name, increasing):
    """The op on the clip equals the op (same parameters) on each frame alone: no op mixes frames,
    and none draws anything per frame."""
    clip = natural_clip()
    out = op(name, clip, 0.7, -1, increasing)
    assert out.shape == clip.shape and 0 <= out.min() and out.max() <= 1
    for t in range(clip.shape[0]):
        torch.testing.assert_close(out[t:t + 1], op(name, clip[t:t + 1], 0.7, -1, increasing))


def test_one_slot_applies_each_clips_own_op_with_its_own_parameters():
    """The batched slot (all ops on the batch, each clip keeps its op) equals each op on its clip alone."""
    names = list(RAND_OPS)
    clips = torch.stack([natural_clip(t=2, seed=s) for s in range(len(names) + 1)])  # (16, 2, 3, H, W)
    ops = torch.tensor(list(range(len(names))) + [-1])  # every op once, and one clip left alone
    level = torch.linspace(0.2, 0.9, len(ops))
    sign = torch.tensor([(-1.0) ** i for i in range(len(ops))])
    out = _apply_op(clips, ops, level, sign, True)
    for i, name in enumerate(names):
        torch.testing.assert_close(out[i], op(name, clips[i], level[i], sign[i], True).clamp(0, 1))
    torch.testing.assert_close(out[-1], clips[-1])


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
    out = op(name, clip, level, 1)
    expected = torch.stack([as_tensor(reference(pil(f), level)) for f in clip])
    assert (out - expected).abs().max().item() <= 2.5 / 255  # PIL rounds to uint8 inside some ops


FILL = (128, 128, 128)


def pil_geometric(img: Image.Image, name: str, level: float, sign: int, fill=FILL) -> Image.Image:
    """timm's geometric ops (auto_augment.py), written out: rotate 30 degrees at level 1, shear 0.3,
    translate 0.45 of the side, bilinear, grey fill."""
    w, h = img.size
    kw = dict(resample=Image.BILINEAR, fillcolor=fill)
    v = sign * level
    if name == "Rotate":
        return img.rotate(30 * v, **kw)
    data = {"ShearX": (1, 0.3 * v, 0, 0, 1, 0), "ShearY": (1, 0, 0, 0.3 * v, 1, 0),
            "TranslateXRel": (1, 0, 0.45 * w * v, 0, 1, 0), "TranslateYRel": (1, 0, 0, 0, 1, 0.45 * h * v)}[name]
    return img.transform(img.size, Image.AFFINE, data, **kw)


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"])
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_geometric_ops_match_pil_as_timm_calls_it(name, sign, size):
    """Compared where PIL's bilinear sample has all four neighbours inside the image (PIL clamps at the
    border where we blend with the fill): everything but a one-pixel band along the cut and the edges."""
    h, w = size
    clip = natural_clip(t=2, h=h, w=w, seed=4)
    level = 0.8
    out = op(name, clip, level, sign)
    inside = pil_geometric(Image.new("L", (w, h), 255), name, level, sign, fill=0).filter(ImageFilter.MinFilter(3))
    mask = torch.from_numpy(np.asarray(inside) == 255)  # (H, W)
    mask[[0, -1]] = False  # MinFilter does not erode from the image's own edges
    mask[:, [0, -1]] = False
    for k in range(2):
        expected = as_tensor(pil_geometric(pil(clip[k]), name, level, sign))
        assert mask.float().mean() > 0.4
        assert (out[k] - expected).abs()[:, mask].max().item() <= 1.01 / 255


def test_equalize_matches_pil_exactly_on_a_skewed_histogram():
    frame = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) ** 3 * 255).round() / 255
    torch.testing.assert_close(_equalize(frame)[0], as_tensor(ImageOps.equalize(pil(frame[0]))))


def test_rand_augment_spec():
    assert parse_rand_augment("rand-m7-n4-mstd0.5") == (4, 7.0, 0.5, False)
    assert parse_rand_augment("rand-m7-n4-mstd0.5-inc1") == (4, 7.0, 0.5, True)
    with pytest.raises(ValueError, match="must start with 'rand'"):
        parse_rand_augment("autoaug")


def test_keyed_uniforms_are_uniform_and_independent_of_the_batch():
    keys = torch.arange(20000)
    u = keyed_uniform(7, 3, keys, 1, 4)
    assert u.min() >= 0 and u.max() < 1
    assert torch.allclose(u.mean(0), torch.full((4,), 0.5), atol=0.01)
    assert torch.allclose(u.var(0), torch.full((4,), 1 / 12), atol=0.003)
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03 and abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.03
    picked = torch.tensor([19999, 5, 123])
    assert torch.equal(keyed_uniform(7, 3, picked, 1, 4), u[picked])  # a sample's numbers, in any batch
    for other in (keyed_uniform(8, 3, keys, 1, 4), keyed_uniform(7, 4, keys, 1, 4), keyed_uniform(7, 3, keys, 2, 4)):
        assert (other == u).float().mean() < 0.01  # seed, epoch and stream each change every number
    assert torch.equal(keyed_uniform(torch.tensor(7), 3, picked, 1, 4), u[picked])  # a tensor seed: the same


@pytest.mark.parametrize("alpha", [0.3, 0.8, 1.0, 2.0])
def test_keyed_beta_follows_the_beta_distribution(alpha):
    """Kolmogorov-Smirnov distance of 20000 keyed draws to scipy's Beta(alpha, alpha) CDF, below the
    0.1 % critical value (the draws are fixed, so this is not flaky)."""
    stats = pytest.importorskip("scipy.stats")
    lam = np.sort(_beta(alpha, keyed_uniform(0, 0, torch.arange(20000), 9, 2 * (3 * _TRIES + 1))).double().numpy())
    cdf = stats.beta.cdf(lam, alpha, alpha)
    ks = max(np.max(np.arange(1, 20001) / 20000 - cdf), np.max(cdf - np.arange(20000) / 20000))
    assert ks < 1.95 / np.sqrt(20000)


def test_whole_pipeline_draws_once_per_clip():
    """Identical frames stay identical through flip, RandAugment, jitter and erasing; clips differ."""
    cfg = DataConfig(mixup=0, cutmix=0, random_erasing=0.5, color_jitter_with_rand_augment=True)
    aug = build_gpu_augment(cfg, {"action": 5}).train()
    frame = (natural_clip(t=2, seed=3) * 255).byte().permute(1, 0, 2, 3)[:, :1]  # (3, 1, H, W)
    video = frame[None].expand(16, 3, 8, 24, 24)  # 16 clips of 8 identical frames
    out, _ = aug(video, {"action": torch.arange(16) % 5}, keys=torch.arange(16), epoch=0)
    torch.testing.assert_close(out, out[:, :, :1].expand_as(out))
    assert len({tuple(c.flatten()[::97].tolist()) for c in out}) == 16  # each clip its own draws


AUG_ON = DataConfig(random_erasing=0.25, color_jitter_with_rand_augment=True, mixup=0.8, cutmix=1.0,
                    switch_prob=0.5, mix_prob=0.9)


def test_draws_depend_on_seed_epoch_and_index_only():
    """With mixing off, a sample's augmented clip is the same in any batch, at any row; it changes with
    the epoch and the seed."""
    cfg = DataConfig(**{**AUG_ON.__dict__, "mixup": 0.0, "cutmix": 0.0})
    aug = build_gpu_augment(cfg, {"a": 10}, seed=5).train()
    video = torch.stack([(natural_clip(t=4, seed=s) * 255).byte().transpose(0, 1) for s in range(6)])
    keys = torch.tensor([40, 3, 17, 8, 25, 11])
    full, _ = aug(video, keys=keys, epoch=2)
    order = torch.tensor([4, 1, 5])
    part, _ = aug(video[order], keys=keys[order], epoch=2)
    torch.testing.assert_close(part, full[order], rtol=0, atol=1e-6)
    assert not torch.allclose(aug(video, keys=keys, epoch=3)[0], full)
    assert not torch.allclose(build_gpu_augment(cfg, {"a": 10}, seed=6).train()(video, keys=keys, epoch=2)[0], full)


@pytest.mark.parametrize("world", [2, 3])
def test_n_processes_augment_as_one_process_with_the_global_batch(world):
    """The engine's sampler gives rank r the rows r, r + N, ... of the global batch. With an even batch per
    rank, every row (pixels and targets, mixup and cutmix on) equals that of one process with the whole
    global batch: the half-roll partner is the same sample on both sides."""
    per_rank = 4
    g = world * per_rank
    aug = build_gpu_augment(AUG_ON, {"verb": 7, "noun": 5}, seed=1).train()
    video = torch.stack([(natural_clip(t=2, h=16, w=16, seed=s) * 255).byte().transpose(0, 1) for s in range(g)])
    keys = torch.randperm(100, generator=torch.Generator().manual_seed(world))[:g]
    labels = {"verb": keys % 7, "noun": keys % 5}
    for epoch in range(3):
        one, one_t = aug(video, labels, keys=keys, epoch=epoch)
        for r in range(world):
            rows = torch.arange(r, g, world)
            mine, mine_t = aug(video[rows], {t: y[rows] for t, y in labels.items()}, keys=keys[rows], epoch=epoch)
            torch.testing.assert_close(mine, one[rows], rtol=0, atol=1e-5)
            for t in labels:
                torch.testing.assert_close(mine_t[t], one_t[t][rows], rtol=0, atol=1e-6)




def test_augmenting_a_batch_reads_nothing_back_from_the_device():
    aug = build_gpu_augment(AUG_ON, {"verb": 7, "noun": 5}, seed=1).train()
    video = torch.randint(0, 256, (5, 3, 4, 16, 16), dtype=torch.uint8)
    labels = {"verb": torch.tensor([0, 1, 2, 3, 4]), "noun": torch.tensor([4, 3, 2, 1, 0])}
    with CountSyncs() as counter:
        aug(video, labels, keys=torch.tensor([9, 2, 7, 4, 4]), epoch=1)
        aug(video, labels, generator=torch.Generator().manual_seed(0))  # the older call
    assert counter.count == 0
    with CountSyncs() as counter:
        torch.tensor(3.0).item()
    assert counter.count == 1  # the counter sees a read when there is one


def test_the_generator_call_is_reproducible_and_repeated_rows_get_their_own_draws():
    aug = build_gpu_augment(DataConfig(mixup=0, cutmix=0), {}).train()
    video = (natural_clip(t=2, seed=9) * 255).byte().transpose(0, 1)[None].expand(4, -1, -1, -1, -1)
    a = aug(video, generator=torch.Generator().manual_seed(3))[0]
    torch.testing.assert_close(a, aug(video, generator=torch.Generator().manual_seed(3))[0])
    assert not torch.allclose(a, aug(video, generator=torch.Generator().manual_seed(4))[0])
    rep = aug(video, keys=torch.tensor([5, 5, 5, 6]), epoch=0)[0]  # repeated augmentation: one index, 3 rows
    assert len({tuple(c.flatten()[::31].tolist()) for c in rep}) == 4


def test_flip_rate_is_one_half_and_a_flip_is_exact():
    cfg = DataConfig(**{**PLAIN, "flip": True})
    aug = build_gpu_augment(cfg, {}, seed=2).train()
    clip = (natural_clip(t=2, h=8, w=8, seed=5) * 255).byte().transpose(0, 1)  # (3, 2, 8, 8), not symmetric
    n = 2000
    out = denormalise(aug(clip[None].expand(n, -1, -1, -1, -1), keys=torch.arange(n), epoch=0)[0], cfg)
    plain, flipped = clip.float() / 255, clip.float().flip(-1) / 255
    is_plain = (out - plain).abs().amax((1, 2, 3, 4)) < 1e-5
    is_flipped = (out - flipped).abs().amax((1, 2, 3, 4)) < 1e-5
    assert bool((is_plain ^ is_flipped).all())  # every clip exactly one of the two, all frames alike
    assert abs(is_flipped.float().mean().item() - 0.5) < 0.035  # 3.1 standard deviations of 2000 draws


def test_flip_off_for_ssv2_and_eval_only_normalises():
    cfg = DataConfig(**PLAIN)
    aug = build_gpu_augment(cfg, {"action": 3}).train()
    video = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    mean, std = (torch.tensor(s).view(3, 1, 1, 1) for s in cfg.normalization())
    for seed in range(10):
        out, targets = aug(video, {"action": torch.tensor([0, 2])}, keys=torch.tensor([seed, seed + 10]), epoch=0)
        torch.testing.assert_close(out, (video / 255 - mean) / std)  # never flipped
    assert targets["action"].tolist() == [[1, 0, 0], [0, 0, 1]]
    aug.eval()
    torch.testing.assert_close(aug(video)[0], (video / 255 - mean) / std)


def test_normalisation_presets():
    assert DataConfig().normalization()[0] == IMAGENET_MEAN
    assert DataConfig(norm="clip").normalization() == (CLIP_MEAN, CLIP_STD)
    assert DataConfig(norm="clip", mean=(0.5, 0.5, 0.5)).normalization()[0] == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="norm must be one of"):
        DataConfig(norm="kinetics")


def mix_batch(mode: str, b: int, seed: int, epoch: int):
    """b flat clips of distinct, non-black grey levels, clip i labelled i (verb) and b - 1 - i (noun)."""
    cfg = DataConfig(**{**PLAIN, "mixup": 0.8 if mode in ("mixup", "both") else 0.0,
                        "cutmix": 1.0 if mode in ("cutmix", "both") else 0.0,
                        "switch_prob": 0.5, "mix_prob": 1.0})
    aug = build_gpu_augment(cfg, {"verb": b, "noun": b}, seed=seed).train()
    grey = torch.linspace(40, 250, b).round()  # distinct levels, none black
    video = grey.view(b, 1, 1, 1, 1).expand(b, 3, 2, 16, 16).to(torch.uint8)
    labels = {"verb": torch.arange(b), "noun": b - 1 - torch.arange(b)}
    out, targets = aug(video, labels, keys=torch.arange(100, 100 + b), epoch=epoch)
    return (denormalise(out, cfg) * 255)[:, 0], targets, grey, cfg  # (B, 2, 16, 16) grey levels


def label_partner(targets: dict, i: int, b: int) -> tuple[int, float]:
    """(partner, own share) read off clip i's verb target, checked against its noun target."""
    verb = targets["verb"][i]
    own = verb[i].item()
    others = verb.clone()
    others[i] = -1
    partner = i if own > 1 - 1e-6 else int(others.argmax())
    noun = targets["noun"][i]
    assert noun[b - 1 - i].item() == pytest.approx(own, abs=1e-6)
    assert noun[b - 1 - partner].item() == pytest.approx(own if partner == i else 1 - own, abs=1e-6)
    return partner, own


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "both"])
@pytest.mark.parametrize("b", [2, 3, 6, 7])  # 2: the smallest batch that mixes; >= 3: partners are not a reversal
def test_each_clips_pixels_match_its_targets(mode, b):
    """With distinct clips, the partner and the share read from the targets are those of
    the pixels: mixup blends exactly the partner's grey at that share; cutmix pastes a box of exactly the
    partner's grey covering that share. Pairs are symmetric, every clip of an even batch is mixed."""
    mixed = boxes = 0
    for seed in range(6):
        pixels, targets, grey, _ = mix_batch(mode, b, seed, epoch=seed % 2)
        for i in range(b):
            partner, own = label_partner(targets, i, b)
            if partner == i:
                torch.testing.assert_close(pixels[i], grey[i].expand_as(pixels[i]), atol=1e-3, rtol=0)
                continue
            mixed += 1
            assert label_partner(targets, partner, b)[0] == i  # symmetric pairs
            is_own = (pixels[i] - grey[i]).abs() < 1e-3
            is_partner = (pixels[i] - grey[partner]).abs() < 1e-3
            if bool((is_own | is_partner).all()):  # cutmix: each pixel is one clip's or the other's
                boxes += 1
                assert is_partner.float().mean().item() == pytest.approx(1 - own, abs=1e-6)
                torch.testing.assert_close(is_partner[0], is_partner[1])  # one box for all frames
            else:  # mixup: the blend at the target's share
                torch.testing.assert_close(pixels[i], (own * grey[i] + (1 - own) * grey[partner]).expand_as(
                    pixels[i]), atol=2e-3, rtol=0)
    assert mixed == 6 * (b - b % 2)  # mix_prob 1: every paired clip is mixed, an odd last one is not
    if mode == "cutmix":
        assert boxes == mixed  # cutmix-only configs really cut
    if mode == "mixup":
        assert boxes <= 1  # (a lambda within 1e-3 of 0 or 1 looks like both)
    if mode == "both":
        assert 0 < boxes < mixed  # switch_prob 0.5


def test_pairs_are_rows_half_a_batch_apart():
    assert half_roll(6).tolist() == [3, 4, 5, 0, 1, 2]
    assert half_roll(7).tolist() == [3, 4, 5, 0, 1, 2, 6]
    assert half_roll(2).tolist() == [1, 0] and half_roll(1).tolist() == [0]


def test_mix_prob_and_lambda_follow_the_config():
    """Mixup lambda per pair ~ Beta(0.8, 0.8); mix_prob 0.5 mixes about half of the pairs."""
    b = 800
    for mix_prob in (1.0, 0.5):
        cfg = DataConfig(**{**PLAIN, "mixup": 0.8, "mix_prob": mix_prob})
        aug = build_gpu_augment(cfg, {"a": b}).train()
        _, t = aug(torch.zeros(b, 3, 1, 2, 2, dtype=torch.uint8), {"a": torch.arange(b)}, keys=torch.arange(b))
        lams = t["a"].diagonal()[: b // 2].numpy()  # each clip's own share, one per pair
        if mix_prob == 1.0:
            assert abs(lams.mean() - 0.5) < 0.04 and abs(lams.var() - 1 / (4 * (2 * 0.8 + 1))) < 0.015
        else:
            assert abs((lams < 1).mean() - 0.5) < 0.08


def test_random_erasing_rate_and_box():
    cfg = DataConfig(**{**PLAIN, "random_erasing": 0.4})
    aug = build_gpu_augment(cfg, {}).train()
    n, s = 400, 20
    out = aug(torch.full((n, 3, 2, s, s), 128, dtype=torch.uint8), keys=torch.arange(n))[0]
    plain = (torch.tensor(128 / 255) - torch.tensor(cfg.normalization()[0]).view(3, 1, 1, 1)) / torch.tensor(
        cfg.normalization()[1]).view(3, 1, 1, 1)
    erased = ((out - plain).abs() > 1e-6).any(1)  # (n, 2, s, s)
    torch.testing.assert_close(erased[:, 0], erased[:, 1])  # one box for all frames
    hit = erased[:, 0].flatten(1).any(1)
    assert abs(hit.float().mean().item() - 0.4) < 0.08
    for box in erased[hit, 0]:
        rows, cols = box.any(1).nonzero()[:, 0], box.any(0).nonzero()[:, 0]
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert box.sum() == h * w  # a rectangle (noise never equals the fill exactly)
        assert 0.02 * s * s - 2 * s <= h * w <= s * s / 3 + 2 * s and h < s and w < s


def test_random_resized_crop_box_in_bounds():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(30, 50, (0.08, 1.0), (0.75, 1.333), rng)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50 and h > 0 and w > 0
        areas.append(h * w / 1500)
    assert min(areas) < 0.15 and max(areas) > 0.7  # at most 30x40 of 30x50 fits the aspect limits


def test_label_smoothing_targets_by_hand_alone_and_under_mixup():
    """timm's convention worked out by hand: K = 4 classes, smoothing 0.1 -> 0.1 / 4 = 0.025 off the class
    and 1 - 0.1 + 0.025 = 0.925 on it. Under mixup at share lam the target is lam x own + (1 - lam) x the
    partner's smoothed row."""
    from cast_video.data.augment import smooth_one_hot

    t = smooth_one_hot(torch.tensor([2, 0]), 4, 0.1)
    torch.testing.assert_close(t, torch.tensor([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]]))
    cfg = DataConfig(**{**PLAIN, "label_smoothing": 0.1, "mixup": 0.8})
    aug = build_gpu_augment(cfg, {"a": 4}).train()
    _, targets = aug(torch.zeros(2, 3, 1, 2, 2, dtype=torch.uint8), {"a": torch.tensor([1, 3])}, keys=torch.arange(2))
    row = targets["a"][0]  # clip 0 (class 1) is paired with clip 1 (class 3)
    lam = (row[1] - 0.025) / 0.9  # on-class mass above the floor, / (0.925 - 0.025)
    assert 0 < lam < 1
    torch.testing.assert_close(row, torch.tensor([0.025, 0.025 + 0.9 * lam, 0.025, 0.025 + 0.9 * (1 - lam)]))
    assert row.sum().item() == pytest.approx(1.0)


def test_mix_cutmix_and_box_position_are_independent_draws():
    """mix_prob 0.5 and switch_prob 0.5 with both mixup and cutmix on: about half of the pairs mix, about
    half of those cut (the two choices use their own uniforms), and the pasted boxes sit anywhere in the
    frame (their mean row is the frame's middle: the box centre is a draw of its own too)."""
    b, h = 800, 16
    cfg = DataConfig(**{**PLAIN, "mixup": 0.8, "cutmix": 1.0, "switch_prob": 0.5, "mix_prob": 0.5})
    aug = build_gpu_augment(cfg, {"a": 2}, seed=0).train()
    first = torch.arange(b) < b // 2  # each pair: a row of the first half (grey 60), its partner (grey 200)
    video = torch.where(first, 60, 200).view(b, 1, 1, 1, 1).expand(b, 3, 2, h, h).to(torch.uint8)
    out, t = aug(video, {"a": (~first).long()}, keys=torch.arange(b))
    px = (denormalise(out, cfg) * 255)[: b // 2, 0, 0]  # (P, H, W): the first rows, channel 0, frame 0
    mixed = t["a"][: b // 2, 0] < 1 - 1e-6  # its own share of the targets
    pasted = (px - 200).abs() < 1e-2
    cut = mixed & (pasted | ((px - 60).abs() < 1e-2)).flatten(1).all(1)  # each pixel one clip's or the other's
    assert abs(mixed.float().mean().item() - 0.5) < 0.08
    assert abs(cut[mixed].float().mean().item() - 0.5) < 0.1
    rows = torch.arange(h).view(1, h, 1).expand_as(pasted)
    assert abs(rows[pasted & cut[:, None, None]].float().mean().item() - (h - 1) / 2) < 1.0


def _timm_rand_bbox_shares(h: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """The pasted share of n cutmix boxes drawn by timm's rand_bbox (lam ~ Beta(1, 1)), written from its
    description with numpy's own generator: the distribution the boxes must follow."""
    cut = np.sqrt(1 - rng.uniform(size=n))
    half = np.floor(h * cut) // 2
    cy, cx = np.floor(rng.uniform(size=n) * h), np.floor(rng.uniform(size=n) * h)
    y0, y1 = np.clip(cy - half, 0, h), np.clip(cy + half, 0, h)
    x0, x1 = np.clip(cx - half, 0, h), np.clip(cx + half, 0, h)
    return (y1 - y0) * (x1 - x0) / h**2


def test_cutmix_boxes_follow_timms_rand_bbox():
    """Cutmix only (alpha 1: lam uniform), 16 x 16 frames, 400 pairs. Every pasted region is one solid
    rectangle; a box clear of the borders is a square of even side (both halves floor(16 sqrt(1 - lam)) / 2
    wide); boxes reach row 0 and column 0; the box centre's row and column are independent; and the mean
    pasted share is that of timm's rand_bbox (a numpy simulation of 100,000 boxes)."""
    b, h = 800, 16
    cfg = DataConfig(**{**PLAIN, "cutmix": 1.0, "mix_prob": 1.0})
    aug = build_gpu_augment(cfg, {"a": 2}, seed=1).train()
    first = torch.arange(b) < b // 2
    video = torch.where(first, 60, 200).view(b, 1, 1, 1, 1).expand(b, 3, 2, h, h).to(torch.uint8)
    out, _ = aug(video, {"a": (~first).long()}, keys=torch.arange(b))
    pasted = ((denormalise(out, cfg) * 255)[: b // 2, 0, 0] - 200).abs() < 1e-2  # (P, H, W)
    shares, centres, inner = [], [], 0
    for p in pasted:
        shares.append(p.float().mean().item())
        if not p.any():
            continue
        ys, xs = p.any(1).nonzero()[:, 0], p.any(0).nonzero()[:, 0]
        y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
        assert p[y0:y1, x0:x1].all() and p.sum().item() == (y1 - y0) * (x1 - x0)  # one solid rectangle
        if y0 > 0 and x0 > 0 and y1 < h and x1 < h:
            inner += 1
            assert y1 - y0 == x1 - x0 and (y1 - y0) % 2 == 0
        centres.append(((y0 + y1) / 2, (x0 + x1) / 2))
    assert inner > 20
    assert pasted[:, 0, :].any() and pasted[:, :, 0].any()  # boxes reach the top row and the left column
    cy, cx = np.array(centres).T
    assert abs(np.corrcoef(cy, cx)[0, 1]) < 0.15
    expected = _timm_rand_bbox_shares(h, 100_000, np.random.default_rng(0)).mean()
    assert abs(np.mean(shares) - expected) < 0.03
