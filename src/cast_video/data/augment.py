"""Batch augmentation on the accelerator: flips, RandAugment, colour jitter, random erasing,
normalisation, and mixup / cutmix with label smoothing.

Every random choice is made per clip and applied to all of its frames, so the motion in a clip is
never broken by augmentation (the official code gets this by replaying one PIL op over the frames;
here each op works on a whole clip tensor). All randomness comes from one `torch.Generator`, which the
training loop seeds from (seed, step), so a resumed run draws the same augmentations.

RandAugment follows timm's definitions (which VideoMAE and CAST use): `rand-m7-n4-mstd0.5` picks 4 of
15 ops with replacement, applies each with probability 0.5 at a magnitude drawn from N(7, 0.5) clipped
to [0, 10]; `-inc1` selects the variants whose strength grows with the magnitude (the official CAST
default). Geometric ops fill uncovered pixels with grey (timm's default fill).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from .config import DataConfig


def parse_rand_augment(spec: str) -> tuple[int, float, float, bool]:
    """timm's 'rand-m7-n4-mstd0.5[-inc1]' -> (num_ops, magnitude, magnitude_std, increasing)."""
    if not spec.startswith("rand"):
        raise ValueError(f"RandAugment spec must start with 'rand', got {spec!r}")
    fields = dict(re.findall(r"-(mstd|inc|m|n)([\d.]+)", spec))
    return int(fields.get("n", 2)), float(fields.get("m", 9)), float(fields.get("mstd", 0)), bool(
        int(fields.get("inc", 0)))


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ImageEnhance: b + factor * (a - b), clipped."""
    return (b + factor * (a - b)).clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) -> luminance (T, 1, H, W), PIL's ITU-R 601 weights."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _to255(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round()


def _affine(x: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    """The same affine warp (output -> input, normalised coordinates) for every frame; uncovered
    pixels are grey."""
    theta = torch.tensor(matrix, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)  # (T, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (T, H, W, 2)
    ones = torch.ones_like(x[:, :1])
    warped = F.grid_sample(torch.cat([x, ones], 1), grid, align_corners=False)  # (T, 4, H, W): 4th = coverage
    return warped[:, :3] + 0.5 * (1 - warped[:, 3:])


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return _affine(x, [[c, -s, 0], [s, c, 0]])


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Each frame's channels stretched to [0, 1] (PIL's autocontrast; flat channels unchanged)."""
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)  # (T, 3, 1, 1)
    flat = hi - lo < 1e-6
    return torch.where(flat, x, (x - lo) / torch.where(flat, torch.ones_like(hi), hi - lo))


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's histogram equalisation, per frame and channel."""
    t, c, h, w = x.shape
    q = _to255(x).long().reshape(t * c, h * w)  # (T*3, HW) levels 0..255
    hist = torch.zeros(t * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float))
    levels = torch.arange(256, device=x.device)
    last = hist.gather(1, torch.where(hist > 0, levels, -1).amax(1, keepdim=True))  # (T*3, 1) count of top level
    step = torch.div(h * w - last, 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) - hist + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1),
                    rounding_mode="floor").clamp(max=255)  # (T*3, 256)
    out = torch.where(step > 0, lut.gather(1, q), q.float())
    return (out / 255).reshape(t, c, h, w)


def _posterize(x: torch.Tensor, bits: int) -> torch.Tensor:
    if bits >= 8:
        return x
    shift = 2 ** (8 - bits)
    return torch.div(_to255(x), shift, rounding_mode="floor") * shift / 255


def _solarize(x: torch.Tensor, threshold: int) -> torch.Tensor:
    return torch.where(_to255(x) >= threshold, 1 - x, x)


def _solarize_add(x: torch.Tensor, add: int) -> torch.Tensor:
    return torch.where(_to255(x) < 128, (x + add / 255).clamp(max=1), x)


def _sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's SHARPEN: blend with a 3x3 smoothing of the image; the border keeps its pixels."""
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
    smooth = F.conv2d(x, kernel.expand(3, 1, 3, 3), groups=3)  # (T, 3, H-2, W-2)
    blurred = x.clone()
    blurred[:, :, 1:-1, 1:-1] = smooth
    return _blend(x, blurred, factor)


def _enhance(level: float, sign: float, increasing: bool) -> float:
    """timm's enhance factor: level*1.8 + 0.1 (plain), or 1 +- 0.9*level (increasing)."""
    return 1 + sign * 0.9 * level if increasing else level * 1.8 + 0.1


# Each op takes a clip (T, 3, H, W) in [0, 1], the level (magnitude / 10) in [0, 1], a random sign for
# the ops that have one, and whether the `-inc1` variants are asked for.
RAND_OPS = {
    "AutoContrast": lambda x, lv, s, inc: _autocontrast(x),
    "Equalize": lambda x, lv, s, inc: _equalize(x),
    "Invert": lambda x, lv, s, inc: 1 - x,
    "Rotate": lambda x, lv, s, inc: _rotate(x, s * 30 * lv),
    "Posterize": lambda x, lv, s, inc: _posterize(x, 4 - int(lv * 4) if inc else int(lv * 4)),
    "Solarize": lambda x, lv, s, inc: _solarize(x, 256 - int(lv * 256) if inc else int(lv * 256)),
    "SolarizeAdd": lambda x, lv, s, inc: _solarize_add(x, int(lv * 110)),
    "Color": lambda x, lv, s, inc: _blend(x, _gray(x).expand_as(x), _enhance(lv, s, inc)),
    "Contrast": lambda x, lv, s, inc: _blend(x, _gray(x).mean((1, 2, 3), keepdim=True).expand_as(x),
                                             _enhance(lv, s, inc)),
    "Brightness": lambda x, lv, s, inc: _blend(x, torch.zeros_like(x), _enhance(lv, s, inc)),
    "Sharpness": lambda x, lv, s, inc: _sharpness(x, _enhance(lv, s, inc)),
    "ShearX": lambda x, lv, s, inc: _affine(x, [[1, s * 0.3 * lv, 0], [0, 1, 0]]),
    "ShearY": lambda x, lv, s, inc: _affine(x, [[1, 0, 0], [s * 0.3 * lv, 1, 0]]),
    "TranslateXRel": lambda x, lv, s, inc: _affine(x, [[1, 0, s * 0.9 * lv], [0, 1, 0]]),  # 0.45 of the width
    "TranslateYRel": lambda x, lv, s, inc: _affine(x, [[1, 0, 0], [0, 1, s * 0.9 * lv]]),
}


def _uniform(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=g, device=g.device).item()


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Class ids (B,) -> soft targets (B, num_classes): 1 - smoothing + smoothing/K on the class,
    smoothing/K elsewhere (timm's convention, so rows sum to 1)."""
    off = smoothing / num_classes
    return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - smoothing + off)


class ClipAugment(nn.Module):
    """uint8 clips (B, 3, 2T, H, W) -> normalised float clips, and labels -> soft targets per task.

    In eval mode only normalisation is applied (to any leading shape, e.g. (B, V, 3, 2T, H, W)).
    """

    def __init__(self, cfg: DataConfig, num_classes: dict[str, int] | None = None):
        super().__init__()
        self.cfg, self.num_classes = cfg, dict(num_classes or {})
        self.rand_augment = parse_rand_augment(cfg.rand_augment) if cfg.rand_augment else None
        mean, std = cfg.normalization()
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1, 1), persistent=False)

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        return (video.float() / 255 - self.mean) / self.std

    def forward(self, video: torch.Tensor, labels: dict[str, torch.Tensor] | None = None,
                generator: torch.Generator | None = None):
        if not self.training:
            return self.normalize(video), labels
        g = generator or torch.Generator(device=video.device).manual_seed(int(torch.randint(2**31, ())))
        x = video.float() / 255  # (B, 3, 2T, H, W)
        x = torch.stack([self._clip(c.transpose(0, 1), g).transpose(0, 1) for c in x])  # per clip (2T, 3, H, W)
        x = (x - self.mean) / self.std
        if self.cfg.random_erasing > 0:
            x = torch.stack([self._erase(c, g) for c in x])
        missing = set(labels or {}) - set(self.num_classes)
        if missing:
            raise ValueError(f"no class count for task(s) {sorted(missing)}: pass num_classes to build_gpu_augment")
        smoothing = self.cfg.label_smoothing
        targets = {t: smooth_one_hot(y, self.num_classes[t], smoothing) for t, y in (labels or {}).items()}
        return self._mix(x, targets, g)

    def _clip(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One clip (T, 3, H, W) in [0, 1]: every random draw is shared by all its frames."""
        cfg = self.cfg
        if cfg.flip and _uniform(g) < 0.5:
            x = x.flip(-1)
        if self.rand_augment is not None:
            n, m, mstd, increasing = self.rand_augment
            names = list(RAND_OPS)
            for i in torch.randint(len(names), (n,), generator=g, device=g.device).tolist():
                if _uniform(g) < 0.5:  # timm applies each chosen op with probability 0.5
                    continue
                level = min(max(m + mstd * torch.randn((), generator=g, device=g.device).item(), 0), 10) / 10
                sign = -1 if _uniform(g) < 0.5 else 1
                x = RAND_OPS[names[i]](x, level, sign, increasing).clamp(0, 1)
        if cfg.color_jitter > 0 and (self.rand_augment is None or cfg.color_jitter_with_rand_augment):
            j = cfg.color_jitter
            x = _blend(x, torch.zeros_like(x), _uniform(g, 1 - j, 1 + j))  # brightness
            x = _blend(x, _gray(x).mean((1, 2, 3), keepdim=True).expand_as(x), _uniform(g, 1 - j, 1 + j))  # contrast
            x = _blend(x, _gray(x).expand_as(x), _uniform(g, 1 - j, 1 + j))  # saturation
        return x

    def _erase(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random erasing (timm's 'pixel' mode) of one box, the same in every frame of the clip
        (3, T, H, W), filled with normal noise."""
        if _uniform(g) >= self.cfg.random_erasing:
            return x
        _, _, h, w = x.shape
        for _ in range(10):
            area = h * w * _uniform(g, 0.02, 1 / 3)
            aspect = math.exp(_uniform(g, math.log(0.3), math.log(1 / 0.3)))
            eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if eh < h and ew < w:
                top, left = int(_uniform(g) * (h - eh)), int(_uniform(g) * (w - ew))
                x = x.clone()
                x[:, :, top:top + eh, left:left + ew] = torch.randn((3, 1, eh, ew), generator=g, device=x.device)
                break
        return x

    def _mix(self, x: torch.Tensor, targets: dict[str, torch.Tensor], g: torch.Generator):
        """Mixup or cutmix (timm's batch mode) with the batch reversed as partner; one lambda and one
        partner for every task, so verb and noun targets stay consistent with the pixels."""
        cfg = self.cfg
        if (cfg.mixup <= 0 and cfg.cutmix <= 0) or _uniform(g) >= cfg.mix_prob or x.shape[0] < 2:
            return x, targets
        use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or _uniform(g) < cfg.switch_prob)
        alpha = cfg.cutmix if use_cutmix else cfg.mixup
        lam = _beta(alpha, g)
        partner = x.flip(0)
        if use_cutmix:
            h, w = x.shape[-2:]
            cut = math.sqrt(1 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(_uniform(g) * h), int(_uniform(g) * w)
            y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]  # the same box in every frame
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
        else:
            x = lam * x + (1 - lam) * partner
        return x, {t: lam * y + (1 - lam) * y.flip(0) for t, y in targets.items()}


def _beta(alpha: float, g: torch.Generator) -> float:
    """Beta(alpha, alpha) from two Gamma draws made with the given generator (on the CPU: Gamma
    sampling with a generator is CPU-only)."""
    seed = int(torch.randint(2**62, (), generator=g, device=g.device))
    cpu = torch.Generator().manual_seed(seed)
    a = torch._standard_gamma(torch.tensor([alpha, alpha], dtype=torch.float64), generator=cpu)
    return (a[0] / a.sum()).item()


def build_gpu_augment(cfg: DataConfig, num_classes: dict[str, int] | None = None) -> ClipAugment:
    """The training augmentation and normalisation module; move it to the accelerator with `.to()`.
    `num_classes` {task: classes} is needed to turn labels into soft targets."""
    return ClipAugment(cfg, num_classes)
