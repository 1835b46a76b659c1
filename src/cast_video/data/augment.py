"""Batch augmentation on the accelerator: flips, RandAugment, colour jitter, random erasing,
normalisation, and mixup / cutmix with label smoothing.

Every random choice is made per clip and applied to all of its frames, so the motion in a clip is
never broken by augmentation (the official code gets this by replaying one PIL op over the frames;
here each op works on whole clip tensors).

**Keyed randomness.** Every draw is a pure function of (seed, epoch, the sample's dataset index, which
draw): a counter-based hash (`keyed_uniform`) in int64 tensor arithmetic that never overflows, so the
same sample gets the same flip, RandAugment ops, magnitudes, erasing box and mixup draws on any device,
in any batch, on any rank, in a resumed run. All parameters of a batch are drawn as tensors in a few
ops and applied batched: no per-clip Python loop and no device-to-host read (`.item()`), so the
augmentation never stalls an accelerator.

**The mixup partner** is the one draw that depends on the batch: row j of a batch of B rows is paired
with row j + B/2 (the batch rolled by half; an odd last row is left unmixed), and each pair takes the
draws of its first row. The engine's sampler gives rank r of N the global positions r, r + N, r + 2N, ...
of a step, so with an even per-rank batch the half-roll pairs exactly the samples that one process with
the whole global batch pairs: N processes then augment every sample as one process does.

RandAugment follows timm's definitions (which VideoMAE and CAST use): `rand-m7-n4-mstd0.5` picks 4 of
15 ops with replacement, applies each with probability 0.5 at a magnitude drawn from N(7, 0.5) clipped
to [0, 10]; `-inc1` selects the variants whose strength grows with the magnitude (the official CAST
default). Geometric ops are PIL's affine transforms (pixel coordinates, origin at the top-left corner;
rotation about the centre), bilinear, filling uncovered pixels with grey (timm's default fill).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from .config import DataConfig

_M32 = 0xFFFFFFFF

# Streams: each kind of draw has its own, so adding a draw never shifts another.
_FLIP, _RAND_AUG, _JITTER, _ERASE, _ERASE_NOISE, _MIX, _BETA = range(1, 8)
_TRIES = 8  # Marsaglia-Tsang proposals per Gamma draw; each is accepted with probability > 0.95


def parse_rand_augment(spec: str) -> tuple[int, float, float, bool]:
    """timm's 'rand-m7-n4-mstd0.5[-inc1]' -> (num_ops, magnitude, magnitude_std, increasing)."""
    if not spec.startswith("rand"):
        raise ValueError(f"RandAugment spec must start with 'rand', got {spec!r}")
    fields = dict(re.findall(r"-(mstd|inc|m|n)([\d.]+)", spec))
    return int(fields.get("n", 2)), float(fields.get("m", 9)), float(fields.get("mstd", 0)), bool(
        int(fields.get("inc", 0)))


# ---------------------------------------------------------------------------------------------------
# Counter-based randomness


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x, c < 2^32 in int64 without overflow (c split in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + ((x * hi) & 0xFFFF) * 65536) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (Wellons' lowbias32): every input bit flips each output bit with
    probability ~1/2."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(h: torch.Tensor, word) -> torch.Tensor:
    """Hash a 64-bit word (int or int64 tensor) into the 32-bit state: its low, then its high half."""
    for half in (word & _M32, (word >> 32) & _M32):
        h = _mix32(((h ^ half) + 0x9E3779B9) & _M32)
    return h


def keyed_uniform(seed, epoch: int, keys: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """(B,) int64 keys -> (B, count) float32 uniforms in [0, 1), a pure function of (seed, epoch, key,
    stream, column): the same numbers on any device and in any batch. `seed` is an int or a 0-dim int64
    tensor (the legacy `generator=` path draws it as a tensor, so that no value leaves the device)."""
    h = torch.zeros((), dtype=torch.int64, device=keys.device)
    for word in (seed, epoch, stream):
        h = _absorb(h, word.to(keys.device) if torch.is_tensor(word) else word)
    h = _absorb(h.expand(keys.shape[0]), keys.long())[:, None]  # (B, 1)
    h = _absorb(h, torch.arange(count, device=keys.device))  # (B, count)
    return (h >> 8).float() / 2**24  # 24 bits: exact in float32


def _normal(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Box-Muller: two uniforms in [0, 1) -> one standard normal."""
    return torch.sqrt(-2 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)


def _beta(alpha: float, u: torch.Tensor) -> torch.Tensor:
    """Symmetric Beta(alpha, alpha) per row of uniforms u (P, 2 * (3 * _TRIES + 1)), as G1 / (G1 + G2)
    of two Gamma(alpha) draws. Gamma by Marsaglia-Tsang on Gamma(alpha + 1), vectorised over a fixed
    number of proposals (the first accepted one is taken), times U^(1/alpha) for the shape alpha."""
    d = alpha + 1 - 1 / 3
    c = 1 / math.sqrt(9 * d)
    gammas = []
    for cols in u.chunk(2, dim=1):  # (P, 3 * _TRIES + 1) each
        z = _normal(cols[:, :_TRIES], cols[:, _TRIES:2 * _TRIES])  # (P, _TRIES) proposals
        v = ((1 + c * z) ** 3).clamp_min(1e-12)
        accept = (1 + c * z > 0) & (torch.log1p(-cols[:, 2 * _TRIES:3 * _TRIES]) < 0.5 * z**2 + d - d * v
                                    + d * torch.log(v))
        first = accept.float().argmax(1, keepdim=True)  # the first accepted proposal
        gammas.append(d * v.gather(1, first)[:, 0] * (1 - cols[:, -1]) ** (1 / alpha))
    return gammas[0] / (gammas[0] + gammas[1])


# ---------------------------------------------------------------------------------------------------
# The ops, on clips (B, T, 3, H, W) in [0, 1] with one parameter per clip: (B,) tensors


def _per_clip(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: b + factor * (a - b), clipped; `factor` (B,)."""
    return (b + _per_clip(factor) * (a - b)).clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> luminance (..., 1, H, W), PIL's ITU-R 601 weights."""
    return (0.299 * x[..., 0, :, :] + 0.587 * x[..., 1, :, :] + 0.114 * x[..., 2, :, :]).unsqueeze(-3)


def _to255(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round()


def pil_affine_theta(matrix: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL's AFFINE data (B, 6) (output pixel (x, y) -> input (a x + b y + c, d x + e y + f), pixel
    coordinates with the origin at the top-left corner) -> `affine_grid`'s theta (B, 2, 3) in
    normalised coordinates (u = 2 x / W - 1, align_corners=False, the same pixel-centre convention)."""
    a, b, c, d, e, f = matrix.unbind(1)
    # x = (u + 1) W / 2, y = (v + 1) H / 2; u_in = 2 x_in / W - 1
    row0 = torch.stack([a, b * h / w, (2 * (a * w / 2 + b * h / 2 + c)) / w - 1], 1)
    row1 = torch.stack([d * w / h, e, (2 * (d * w / 2 + e * h / 2 + f)) / h - 1], 1)
    return torch.stack([row0, row1], 1)  # (B, 2, 3)


def _warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """One PIL affine warp per clip (B, 6), the same for all its frames; uncovered pixels are grey."""
    b, t, _, h, w = x.shape
    theta = pil_affine_theta(matrix, h, w).to(x.dtype).repeat_interleave(t, 0)  # (B*T, 2, 3)
    frames = x.reshape(b * t, 3, h, w)
    grid = F.affine_grid(theta, [b * t, 3, h, w], align_corners=False)  # (B*T, H, W, 2)
    ones = torch.ones_like(frames[:, :1])
    warped = F.grid_sample(torch.cat([frames, ones], 1), grid, align_corners=False)  # (B*T, 4, H, W): 4th = coverage
    return (warped[:, :3] + 0.5 * (1 - warped[:, 3:])).view(b, t, 3, h, w)


def _rotation(degrees: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL's `Image.rotate(degrees)` (counter-clockwise about the image centre) as AFFINE data (B, 6)."""
    r = torch.deg2rad(degrees)
    cos, sin = torch.cos(r), torch.sin(r)
    cx, cy = w / 2, h / 2
    # input = R(-theta) applied to (output - centre), + centre, in PIL's y-down pixel coordinates
    return torch.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy], 1)


def _affine_data(name: str, level: torch.Tensor, sign: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """AFFINE data (B, 6) of a geometric op as timm calls PIL (rotate: 30 degrees at level 1; shear:
    0.3; translate: 0.45 of the side)."""
    one, zero = torch.ones_like(level), torch.zeros_like(level)
    v = sign * level
    if name == "Rotate":
        return _rotation(30 * v, h, w)
    rows = {"ShearX": (one, 0.3 * v, zero, zero, one, zero), "ShearY": (one, zero, zero, 0.3 * v, one, zero),
            "TranslateXRel": (one, zero, 0.45 * w * v, zero, one, zero),
            "TranslateYRel": (one, zero, zero, zero, one, 0.45 * h * v)}[name]
    return torch.stack(rows, 1)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Each frame's channels stretched to [0, 1] (PIL's autocontrast; flat channels unchanged)."""
    lo, hi = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)  # (B, T, 3, 1, 1)
    flat = hi - lo < 1e-6
    return torch.where(flat, x, (x - lo) / torch.where(flat, torch.ones_like(hi), hi - lo))


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's histogram equalisation, per frame and channel, on any leading shape (..., 3, H, W)."""
    h, w = x.shape[-2:]
    q = _to255(x).long().reshape(-1, h * w)  # (frames*3, HW) levels 0..255
    hist = torch.zeros(q.shape[0], 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float))
    levels = torch.arange(256, device=x.device)
    last = hist.gather(1, torch.where(hist > 0, levels, -1).amax(1, keepdim=True))  # (frames*3, 1) top level's count
    step = torch.div(h * w - last, 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) - hist + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1),
                    rounding_mode="floor").clamp(max=255)  # (frames*3, 256)
    out = torch.where(step > 0, lut.gather(1, q), q.float())
    return (out / 255).reshape(x.shape)


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top `bits` (B,) bits of each 8-bit value (8 or more: unchanged)."""
    shift = _per_clip(2.0 ** (8 - bits.clamp(max=8)))
    return torch.div(_to255(x), shift, rounding_mode="floor") * shift / 255


def _solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(_to255(x) >= _per_clip(threshold), 1 - x, x)


def _solarize_add(x: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    return torch.where(_to255(x) < 128, (x + _per_clip(add) / 255).clamp(max=1), x)


def _sharpened_reference(x: torch.Tensor) -> torch.Tensor:
    """PIL's SHARPEN reference: the 3x3 smoothing [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 of each frame
    (a separable 3x3 sum plus 4 x the centre: cheaper than a depthwise convolution); the border keeps
    its pixels."""
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]  # (..., H-2, W)
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (..., H-2, W-2)
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = (box + 4 * x[..., 1:-1, 1:-1]) / 13
    return blurred


def _enhance(level: torch.Tensor, sign: torch.Tensor, increasing: bool) -> torch.Tensor:
    """timm's enhance factor: level*1.8 + 0.1 (plain), or 1 +- 0.9*level (increasing)."""
    return 1 + sign * 0.9 * level if increasing else level * 1.8 + 0.1


def _contrast_mean(x: torch.Tensor) -> torch.Tensor:
    return _gray(x).mean((-3, -2, -1), keepdim=True).expand_as(x)  # each frame's mean grey


GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")

# Each op takes clips (B, T, 3, H, W) in [0, 1], the level (magnitude / 10) in [0, 1] per clip (B,), a
# random sign per clip (B,) for the ops that have one, and whether the `-inc1` variants are asked for.
RAND_OPS = {
    "AutoContrast": lambda x, lv, s, inc: _autocontrast(x),
    "Equalize": lambda x, lv, s, inc: _equalize(x),
    "Invert": lambda x, lv, s, inc: 1 - x,
    **{name: (lambda n: lambda x, lv, s, inc: _warp(x, _affine_data(n, lv, s, *x.shape[-2:])))(name)
       for name in GEOMETRIC},
    "Posterize": lambda x, lv, s, inc: _posterize(x, 4 - (lv * 4).floor() if inc else (lv * 4).floor()),
    "Solarize": lambda x, lv, s, inc: _solarize(x, 256 - (lv * 256).floor() if inc else (lv * 256).floor()),
    "SolarizeAdd": lambda x, lv, s, inc: _solarize_add(x, (lv * 110).floor()),
    "Color": lambda x, lv, s, inc: _blend(x, _gray(x).expand_as(x), _enhance(lv, s, inc)),
    "Contrast": lambda x, lv, s, inc: _blend(x, _contrast_mean(x), _enhance(lv, s, inc)),
    "Brightness": lambda x, lv, s, inc: _blend(x, torch.zeros_like(x), _enhance(lv, s, inc)),
    "Sharpness": lambda x, lv, s, inc: _blend(x, _sharpened_reference(x), _enhance(lv, s, inc)),
}
_OP_NAMES = list(RAND_OPS)


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Class ids (B,) -> soft targets (B, num_classes): 1 - smoothing + smoothing/K on the class,
    smoothing/K elsewhere (timm's convention, so rows sum to 1)."""
    off = smoothing / num_classes
    return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - smoothing + off)


def half_roll(n: int, device=None) -> torch.Tensor:
    """The mixup partner of each of n rows: row j <-> row j + n//2 (an odd last row: itself)."""
    half = n // 2
    idx = torch.arange(n, device=device)
    return torch.where(idx < half, idx + half, torch.where(idx < 2 * half, idx - half, idx))


def occurrence(keys: torch.Tensor) -> torch.Tensor:
    """For each row, how many earlier rows have the same key: repeated-augmentation copies of one
    sample (consecutive rows with one index) get their own draws."""
    same = keys[:, None] == keys[None, :]  # (B, B)
    return same.tril(-1).sum(1)


class ClipAugment(nn.Module):
    """uint8 clips (B, 3, 2T, H, W) -> normalised float clips, and labels -> soft targets per task.

    `forward(video, labels, keys=batch["index"], epoch=epoch)`: every draw keyed by (seed, epoch, key).
    The older `generator=` call (no keys) draws a seed tensor from the generator and keys the rows by
    their position. In eval mode only normalisation is applied (to any leading shape, e.g. (B, V, 3, 2T, H, W)).
    """

    def __init__(self, cfg: DataConfig, num_classes: dict[str, int] | None = None, seed: int = 0):
        super().__init__()
        self.cfg, self.num_classes, self.seed = cfg, dict(num_classes or {}), seed
        self.rand_augment = parse_rand_augment(cfg.rand_augment) if cfg.rand_augment else None
        mean, std = cfg.normalization()
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1, 1), persistent=False)

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        return (video.float() / 255 - self.mean) / self.std

    def forward(self, video: torch.Tensor, labels: dict[str, torch.Tensor] | None = None,
                keys: torch.Tensor | None = None, epoch: int = 0, generator: torch.Generator | None = None):
        if not self.training:
            return self.normalize(video), labels
        seed = self.seed
        if keys is None:
            g = generator or torch.Generator(device=video.device).manual_seed(int(torch.randint(2**31, ())))
            seed = torch.randint(2**62, (), generator=g, device=g.device)
            keys = torch.arange(video.shape[0], device=video.device)
        keys = keys.to(video.device, non_blocking=True).long()  # a blocking copy would wait for the device
        # (B,) per-row keys: dataset index and repetition (repeated augmentation), packed in one int64
        row_keys = keys * 64 + occurrence(keys)
        draw = lambda stream, count: keyed_uniform(seed, epoch, row_keys, stream, count)  # noqa: E731
        x = video.float().transpose(1, 2) / 255  # (B, 2T, 3, H, W)
        x = self._clips(x, draw).transpose(1, 2)  # (B, 3, 2T, H, W)
        x = (x - self.mean) / self.std
        if self.cfg.random_erasing > 0:
            x = self._erase(x, draw)
        missing = set(labels or {}) - set(self.num_classes)
        if missing:
            raise ValueError(f"no class count for task(s) {sorted(missing)}: pass num_classes to build_gpu_augment")
        smoothing = self.cfg.label_smoothing
        targets = {t: smooth_one_hot(y, self.num_classes[t], smoothing) for t, y in (labels or {}).items()}
        return self._mix(x, targets, draw)

    def _clips(self, x: torch.Tensor, draw) -> torch.Tensor:
        """Clips (B, T, 3, H, W) in [0, 1]: flip, RandAugment, colour jitter; one draw per clip."""
        cfg = self.cfg
        if cfg.flip:
            x = torch.where(_per_clip(draw(_FLIP, 1)[:, 0] < 0.5), x.flip(-1), x)
        if self.rand_augment is not None:
            n, m, mstd, increasing = self.rand_augment
            u = draw(_RAND_AUG, 5 * n)  # per op slot: choice, apply, 2 for the magnitude, sign
            for k in range(n):
                op, apply, u1, u2, sgn = u[:, 5 * k:5 * k + 5].unbind(1)
                op = (op * len(_OP_NAMES)).long().clamp(max=len(_OP_NAMES) - 1)
                op = torch.where(apply < 0.5, -1, op)  # timm applies each chosen op with probability 0.5
                level = (m + mstd * _normal(u1, u2)).clamp(0, 10) / 10
                sign = torch.where(sgn < 0.5, -1.0, 1.0)
                x = _apply_op(x, op, level, sign, increasing)
        if cfg.color_jitter > 0 and (self.rand_augment is None or cfg.color_jitter_with_rand_augment):
            j = cfg.color_jitter
            f = 1 - j + 2 * j * draw(_JITTER, 3)  # (B, 3) factors in [1 - j, 1 + j]
            x = _blend(x, torch.zeros_like(x), f[:, 0])  # brightness
            x = _blend(x, _contrast_mean(x), f[:, 1])  # contrast
            x = _blend(x, _gray(x).expand_as(x), f[:, 2])  # saturation
        return x

    def _erase(self, x: torch.Tensor, draw) -> torch.Tensor:
        """Random erasing (timm's 'pixel' mode) of one box per clip (B, 3, T, H, W), the same in every
        frame, filled with normal noise: timm's 10 tries drawn at once, the first box that fits taken."""
        b, _, _, h, w = x.shape
        tries = 10
        u = draw(_ERASE, 1 + 4 * tries)
        area = h * w * (0.02 + (1 / 3 - 0.02) * u[:, 1:1 + tries])  # (B, tries)
        aspect = torch.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * u[:, 1 + tries:1 + 2 * tries])
        eh, ew = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
        fits = (eh < h) & (ew < w)
        top = (u[:, 1 + 2 * tries:1 + 3 * tries] * (h - eh)).floor()
        left = (u[:, 1 + 3 * tries:] * (w - ew)).floor()
        first = fits.float().argmax(1, keepdim=True)  # (B, 1) the first try that fits
        top, left, eh, ew = (v.gather(1, first)[:, 0] for v in (top, left, eh, ew))
        erase = (u[:, 0] < self.cfg.random_erasing) & fits.any(1)  # (B,)
        box = _box_mask(top, top + eh, left, left + ew, h, w) & _per_clip(erase)[:, 0]  # (B, 1, H, W)
        noise_u = draw(_ERASE_NOISE, 2 * 3 * h * w)
        noise = _normal(noise_u[:, ::2], noise_u[:, 1::2]).view(b, 3, 1, h, w)
        return torch.where(box[:, :, None], noise, x)

    def _mix(self, x: torch.Tensor, targets: dict[str, torch.Tensor], draw):
        """Mixup or cutmix per pair (row j with row j + B/2), with timm's pair semantics: one lambda, one
        mode and one box per pair, shared by both rows and by every task, so verb and noun targets stay
        consistent with the pixels."""
        cfg = self.cfg
        b, h, w = x.shape[0], *x.shape[-2:]
        if (cfg.mixup <= 0 and cfg.cutmix <= 0) or b < 2:
            return x, targets
        partner = half_roll(b, x.device)
        lead = torch.minimum(torch.arange(b, device=x.device), partner)  # each pair's first row
        u = draw(_MIX, 4)[lead]  # (B, 4): mix?, cutmix?, box centre y, x
        beta = draw(_BETA, 2 * (3 * _TRIES + 1))[lead]
        mix = (u[:, 0] < cfg.mix_prob) & (partner != torch.arange(b, device=x.device))
        if cfg.mixup > 0 and cfg.cutmix > 0:  # timm: cutmix with probability switch_prob
            cutmix = u[:, 1] < cfg.switch_prob
        else:
            cutmix = torch.full((b,), cfg.cutmix > 0, device=x.device)
        lam_mix = _beta(cfg.mixup, beta) if cfg.mixup > 0 else torch.ones(b, device=x.device)
        lam_cut = _beta(cfg.cutmix, beta) if cfg.cutmix > 0 else torch.ones(b, device=x.device)
        # cutmix: timm's rand_bbox, one box per pair, the same in every frame
        cut = torch.sqrt(1 - lam_cut)
        ch, cw = (h * cut).floor(), (w * cut).floor()
        cy, cx = (u[:, 2] * h).floor(), (u[:, 3] * w).floor()
        y0, y1 = (cy - (ch / 2).floor()).clamp(0, h), (cy + (ch / 2).floor()).clamp(0, h)
        x0, x1 = (cx - (cw / 2).floor()).clamp(0, w), (cx + (cw / 2).floor()).clamp(0, w)
        box = _box_mask(y0, y1, x0, x1, h, w)[:, :, None] & _per_clip(cutmix & mix)  # (B, 1, 1, H, W)
        lam_box = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
        lam = torch.where(mix, torch.where(cutmix, lam_box, lam_mix), torch.ones_like(lam_mix))  # (B,)
        other = x[partner]
        blended = torch.where(_per_clip(cutmix), x, _per_clip(lam) * x + (1 - _per_clip(lam)) * other)
        x = torch.where(box, other, blended)
        return x, {t: lam[:, None] * y + (1 - lam[:, None]) * y[partner] for t, y in targets.items()}


def _box_mask(y0, y1, x0, x1, h: int, w: int) -> torch.Tensor:
    """Per-row boxes [y0, y1) x [x0, x1) (B,) -> (B, 1, H, W) bool."""
    ys = torch.arange(h, device=y0.device).view(1, h, 1)
    xs = torch.arange(w, device=y0.device).view(1, 1, w)
    inside = (ys >= y0.view(-1, 1, 1)) & (ys < y1.view(-1, 1, 1)) & (xs >= x0.view(-1, 1, 1)) & (xs < x1.view(-1, 1, 1))
    return inside[:, None]


def _apply_op(x: torch.Tensor, op: torch.Tensor, level: torch.Tensor, sign: torch.Tensor,
              increasing: bool) -> torch.Tensor:
    """One RandAugment slot: clip i gets op `op[i]` (-1: none), as `RAND_OPS` defines it. Every op runs
    on the whole batch and each clip keeps its own op's result (selecting the clips of an op would need
    their count on the host); the five affine ops share one warp and the four enhance ops one blend."""
    chosen = {name: _per_clip(op == k) for k, name in enumerate(_OP_NAMES)}
    matrix = torch.zeros(x.shape[0], 6, device=x.device)  # the identity (1, 0, 0, 0, 1, 0)
    matrix[:, 0] = matrix[:, 4] = 1
    for name in GEOMETRIC:
        matrix = torch.where(chosen[name].view(-1, 1), _affine_data(name, level, sign, *x.shape[-2:]), matrix)
    geometric = torch.stack([chosen[n] for n in GEOMETRIC]).any(0)
    out = torch.where(geometric, _warp(x, matrix), x)
    reference = torch.where(chosen["Color"], _gray(x), torch.where(chosen["Contrast"], _contrast_mean(x), torch.where(
        chosen["Brightness"], torch.zeros_like(x), _sharpened_reference(x))))
    enhance = chosen["Color"] | chosen["Contrast"] | chosen["Brightness"] | chosen["Sharpness"]
    out = torch.where(enhance, _blend(x, reference, _enhance(level, sign, increasing)), out)
    for name in ("AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd"):
        out = torch.where(chosen[name], RAND_OPS[name](x, level, sign, increasing), out)
    return out.clamp(0, 1)


def build_gpu_augment(cfg: DataConfig, num_classes: dict[str, int] | None = None, seed: int = 0) -> ClipAugment:
    """The training augmentation and normalisation module; move it to the accelerator with `.to()`.
    `num_classes` {task: classes} is needed to turn labels into soft targets; `seed` keys the draws."""
    return ClipAugment(cfg, num_classes, seed)
