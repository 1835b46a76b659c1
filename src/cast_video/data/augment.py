"""Batch augmentation on the accelerator: flips, RandAugment, colour jitter, random erasing,
normalisation, and mixup / cutmix with label smoothing.

Every random choice is made per clip and applied to all of its frames, so the motion in a clip is
never broken by augmentation. All randomness comes from one `torch.Generator`, which the training
loop seeds from (seed, step) so that a resumed run draws the same augmentations.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from .config import DataConfig


def parse_rand_augment(spec: str) -> tuple[int, float, float]:
    """timm's 'rand-m7-n4-mstd0.5' -> (num_ops, magnitude, magnitude_std)."""
    if not spec.startswith("rand"):
        raise ValueError(f"RandAugment spec must start with 'rand', got {spec!r}")
    fields = dict(re.findall(r"-(mstd|m|n)([\d.]+)", spec))
    return int(fields.get("n", 2)), float(fields.get("m", 9)), float(fields.get("mstd", 0))


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    return (b + factor * (a - b)).clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) -> luminance (T, 1, H, W)."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _affine(x: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    """The same affine warp (normalised coordinates) for every frame; uncovered pixels are grey."""
    theta = torch.tensor(matrix, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    ones = torch.ones_like(x[:, :1])
    warped = F.grid_sample(torch.cat([x, ones], 1), grid, align_corners=False)  # (T, 4, H, W)
    return warped[:, :3] + 0.5 * (1 - warped[:, 3:])


def _sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    return _blend(x, blurred, factor)


# Each op takes a clip (T, 3, H, W) in [0, 1] and a signed level in [-1, 1] (magnitude / 10).
RAND_OPS = {
    "AutoContrast": lambda x, v: (x - x.amin((0, 2, 3), True)) / (x.amax((0, 2, 3), True) - x.amin((0, 2, 3), True))
    .clamp_min(1e-5),
    "Invert": lambda x, v: 1 - x,
    "Rotate": lambda x, v: _affine(x, [[math.cos(math.radians(30 * v)), -math.sin(math.radians(30 * v)), 0],
                                       [math.sin(math.radians(30 * v)), math.cos(math.radians(30 * v)), 0]]),
    "Posterize": lambda x, v: torch.floor(x * 255 / 2 ** (4 - int(4 * abs(v)) + 4)) * 2 ** (4 - int(4 * abs(v)) + 4)
    / 255,
    "Solarize": lambda x, v: torch.where(x >= 1 - abs(v), 1 - x, x),
    "SolarizeAdd": lambda x, v: torch.where(x < 0.5, (x + 110 / 255 * abs(v)).clamp(max=1), x),
    "Color": lambda x, v: _blend(x, _gray(x).expand_as(x), 1 + 0.9 * v),
    "Contrast": lambda x, v: _blend(x, _gray(x).mean().expand_as(x), 1 + 0.9 * v),
    "Brightness": lambda x, v: _blend(x, torch.zeros_like(x), 1 + 0.9 * v),
    "Sharpness": lambda x, v: _sharpness(x, 1 + 0.9 * v),
    "ShearX": lambda x, v: _affine(x, [[1, 0.3 * v, 0], [0, 1, 0]]),
    "ShearY": lambda x, v: _affine(x, [[1, 0, 0], [0.3 * v, 1, 0]]),
    "TranslateXRel": lambda x, v: _affine(x, [[1, 0, 0.9 * v], [0, 1, 0]]),  # 0.45 of the width
    "TranslateYRel": lambda x, v: _affine(x, [[1, 0, 0], [0, 1, 0.9 * v]]),
}


def _uniform(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - smoothing + off)


class ClipAugment(nn.Module):
    """uint8 clips (B, 3, 2T, H, W) -> normalised float clips, and labels -> soft targets per task.

    In eval mode only normalisation is applied (to any leading shape, e.g. (B, V, 3, 2T, H, W)).
    """

    def __init__(self, cfg: DataConfig, num_classes: dict[str, int]):
        super().__init__()
        self.cfg, self.num_classes = cfg, dict(num_classes)
        self.rand_augment = parse_rand_augment(cfg.rand_augment) if cfg.rand_augment else None
        self.register_buffer("mean", torch.tensor(cfg.mean).view(3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(3, 1, 1, 1), persistent=False)

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        return (video.float() / 255 - self.mean) / self.std

    def forward(self, video: torch.Tensor, labels: dict[str, torch.Tensor] | None = None,
                generator: torch.Generator | None = None):
        if not self.training:
            return self.normalize(video), labels
        g = generator or torch.Generator(device=video.device).manual_seed(int(torch.randint(2**31, ())))
        x = video.float() / 255  # (B, 3, 2T, H, W)
        x = torch.stack([self._clip(c.transpose(0, 1), g).transpose(0, 1) for c in x])
        x = (x - self.mean) / self.std
        if self.cfg.random_erasing > 0:
            x = torch.stack([self._erase(c, g) for c in x])
        smoothing = self.cfg.label_smoothing
        targets = {t: smooth_one_hot(y, self.num_classes[t], smoothing) for t, y in (labels or {}).items()}
        return self._mix(x, targets, g)

    def _clip(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One clip (T, 3, H, W) in [0, 1]: every random draw is shared by all its frames."""
        cfg = self.cfg
        if cfg.flip and _uniform(g) < 0.5:
            x = x.flip(-1)
        if self.rand_augment is not None:
            n, m, mstd = self.rand_augment
            names = list(RAND_OPS)
            for i in torch.randint(len(names), (n,), generator=g).tolist():
                if _uniform(g) < 0.5:  # timm applies each chosen op with probability 0.5
                    continue
                level = min(max(m + mstd * torch.randn((), generator=g).item(), 0), 10) / 10
                sign = -1 if _uniform(g) < 0.5 else 1
                x = RAND_OPS[names[i]](x, sign * level).clamp(0, 1)
        if cfg.color_jitter > 0:
            j = cfg.color_jitter
            x = _blend(x, torch.zeros_like(x), _uniform(g, 1 - j, 1 + j))  # brightness
            x = _blend(x, _gray(x).mean().expand_as(x), _uniform(g, 1 - j, 1 + j))  # contrast
            x = _blend(x, _gray(x).expand_as(x), _uniform(g, 1 - j, 1 + j))  # saturation
        return x

    def _erase(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random erasing of one box, the same in every frame, filled with normal noise."""
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
        """Mixup or cutmix with the batch reversed as partner; one lambda for every task."""
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
            x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            x = lam * x + (1 - lam) * partner
        return x, {t: lam * y + (1 - lam) * y.flip(0) for t, y in targets.items()}


def _beta(alpha: float, g: torch.Generator) -> float:
    """Beta(alpha, alpha) from two Gamma draws made with the given generator."""
    a = torch._standard_gamma(torch.tensor([alpha, alpha]), generator=g)
    return (a[0] / a.sum()).item()


def build_gpu_augment(cfg: DataConfig, num_classes: dict[str, int]) -> ClipAugment:
    return ClipAugment(cfg, num_classes)
