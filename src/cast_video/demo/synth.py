"""Moving digits: scikit-learn's handwritten digits doing one of eight motions, written as real mp4 files.

The noun is the digit (a fine-grained spatial question), the verb is the motion (a temporal one). The
verbs come in time-reversed pairs (left/right, up/down, zoom in/out, rotate clockwise/anticlockwise),
so a single frame, or a bag of frames without their order, cannot tell the verb: as in SSV2, the
order of the frames is the label. A textured background, sensor noise and a distractor blob that
moves on its own keep both questions from being trivial. The action is the (verb, noun) pair, as in
EK100.

Everything is drawn from one `numpy.random.Generator`, so a clip is a function of (seed, index).
A reversed verb is drawn exactly as its partner and then played backwards, so the two are each
other's time reverse frame for frame.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from ..files import atomic_open, atomic_write_text

# Pairs: the second of each pair is the first played backwards.
VERB_PAIRS = (("move_right", "move_left"), ("move_down", "move_up"), ("zoom_in", "zoom_out"),
              ("rotate_clockwise", "rotate_anticlockwise"))
VERBS = tuple(v for pair in VERB_PAIRS for v in pair)
NOUNS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# What a saved demo model calls its classes: "move left", ..., and the digits "0".."9".
CLASS_NAMES = {"verb": [v.replace("_", " ") for v in VERBS], "noun": [str(d) for d in range(len(NOUNS))]}
SPLITS = ("train", "validation", "test")

# EK100's annotation columns, in its order (EPIC_100_train.csv).
EK100_COLUMNS = ("narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                 "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                 "noun_class", "all_nouns", "all_noun_classes")


@dataclass
class SynthConfig:
    """How the clips look. Sizes are in pixels of the square canvas."""

    num_frames: int = 8
    img_size: int = 32
    fps: int = 8
    digit_size: float = 16.0  # side of the 8x8 digit when drawn at scale 1
    move_distance: tuple[float, float] = (9.0, 13.0)  # pixels travelled by move verbs over the clip
    zoom_range: tuple[float, float] = (0.7, 1.25)  # digit scale at the start and end of zoom_in
    rotate_degrees: tuple[float, float] = (70.0, 90.0)  # total turn of rotate verbs
    jitter: float = 1.5  # random drift (pixels over the clip) of every verb, and the off-axis drift of moves
    distractors: int = 1
    background: float = 0.25  # amplitude of the low-frequency background texture
    noise: float = 0.03  # per-pixel Gaussian noise, in [0, 1] units


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 digits (values 0..16) as floats in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def split_images(num_images: int, seed: int, fractions: tuple[float, float] = (0.6, 0.15)) -> dict[str, np.ndarray]:
    """Disjoint image indices per split, so test digits are handwriting the models never saw."""
    order = np.random.default_rng(seed).permutation(num_images)
    n_train, n_val = int(fractions[0] * num_images), int(fractions[1] * num_images)
    return {"train": order[:n_train], "validation": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def _affine_sprite(texture: np.ndarray, centres: np.ndarray, sizes: np.ndarray, angles: np.ndarray,
                   img_size: int) -> np.ndarray:
    """Draw a (h, w) texture at F poses on an img_size canvas: (F, S, S) coverage in [0, 1].

    centres (F, 2) are (x, y) pixel positions, sizes (F,) the drawn side in pixels, angles (F,) radians,
    clockwise on screen (y points down).
    """
    s = img_size
    cos, sin = np.cos(angles), np.sin(angles)
    k = 2.0 / sizes  # canvas pixels -> texture units in [-1, 1]
    # texture coordinate u = k R(-angle) (p - c), with the canvas pixel p = (s/2) q + s/2 - 1/2 for the
    # normalised canvas coordinate q of affine_grid.
    rot_inv = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # (F, 2, 2)
    linear = (k * s / 2)[:, None, None] * rot_inv  # (F, 2, 2)
    offset = np.einsum("fij,fj->fi", rot_inv, (s / 2 - 0.5) - centres) * k[:, None]  # (F, 2)
    theta = torch.from_numpy(np.concatenate([linear, offset[:, :, None]], -1)).float()  # (F, 2, 3)
    grid = F.affine_grid(theta, [len(angles), 1, s, s], align_corners=False)  # (F, S, S, 2)
    tex = torch.from_numpy(texture).float()[None, None].expand(len(angles), 1, *texture.shape)  # (F, 1, h, w)
    out = F.grid_sample(tex, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (F, 1, S, S)
    return out[:, 0].numpy()


def _trajectory(verb: str, cfg: SynthConfig, rng: np.random.Generator):
    """Per-frame (centres (F, 2), scales (F,), angles (F,)) of the *forward* member of the verb's pair."""
    n, s = cfg.num_frames, cfg.img_size
    ramp = np.linspace(0.0, 1.0, n)  # (F,)
    drift = rng.uniform(-cfg.jitter, cfg.jitter, size=2)[None] * ramp[:, None]  # (F, 2)
    centre = np.full((n, 2), s / 2) + rng.uniform(-2, 2, size=2) + drift
    scales = np.full(n, rng.uniform(0.85, 1.05))
    angles = np.full(n, np.deg2rad(rng.uniform(-12, 12)))
    forward = next(pair[0] for pair in VERB_PAIRS if verb in pair)
    if forward in ("move_right", "move_down"):
        axis = 0 if forward == "move_right" else 1
        dist = rng.uniform(*cfg.move_distance)
        centre[:, axis] += (ramp - 0.5) * dist
    elif forward == "zoom_in":
        lo, hi = cfg.zoom_range
        scales = lo * (hi / lo) ** ramp * rng.uniform(0.9, 1.1)
    else:  # rotate_clockwise: the digit is upright half-way through
        turn = np.deg2rad(rng.uniform(*cfg.rotate_degrees))
        angles = angles + (ramp - 0.5) * turn
    return centre, scales, angles


def render_clip(digit: np.ndarray, verb: str, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """One clip of `digit` (8x8 in [0, 1]) doing `verb`: uint8 frames (F, S, S, 3)."""
    if verb not in VERBS:
        raise ValueError(f"unknown verb {verb!r}; verbs: {', '.join(VERBS)}")
    n, s = cfg.num_frames, cfg.img_size
    # Background: a smooth random colour field, static over the clip.
    coarse = torch.from_numpy(rng.normal(size=(1, 3, 4, 4))).float()
    background = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)[0].numpy()  # (3, S, S)
    background = 0.35 + cfg.background * np.tanh(background).transpose(1, 2, 0)  # (S, S, 3)
    frames = np.repeat(background[None], n, axis=0)  # (F, S, S, 3)
    # Distractors: random 4x4 blobs drifting in a straight line in any direction, drawn under the digit.
    for _ in range(cfg.distractors):
        blob = (rng.random((4, 4)) < 0.6).astype(np.float32)
        start = rng.uniform(6, s - 6, size=2)
        velocity = rng.uniform(-1.5, 1.5, size=2)
        centres = start[None] + velocity[None] * np.arange(n)[:, None]
        cover = _affine_sprite(blob, centres, np.full(n, rng.uniform(4, 6)), np.zeros(n), s)  # (F, S, S)
        colour = rng.uniform(0.3, 1.0, size=3)
        frames = frames * (1 - cover[..., None]) + colour * cover[..., None]
    centres, scales, angles = _trajectory(verb, cfg, rng)
    cover = _affine_sprite(digit, centres, cfg.digit_size * scales, angles, s)  # (F, S, S)
    colour = rng.uniform(0.6, 1.0, size=3)
    colour[rng.integers(3)] = 1.0  # bright, so the digit stands out from the mid-grey background
    frames = frames * (1 - cover[..., None]) + colour * cover[..., None]
    frames = frames + rng.normal(scale=cfg.noise, size=frames.shape)
    if verb not in (pair[0] for pair in VERB_PAIRS):
        frames = frames[::-1]
    return (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_still(digit: np.ndarray, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """One still image for the spatial expert: a random frame of a random clip, (S, S, 3) uint8.

    The spatial expert learns digits from such stills only; it never sees motion.
    """
    short = dataclasses.replace(cfg, num_frames=4)  # four poses along the motion are enough for a still
    clip = render_clip(digit, VERBS[rng.integers(len(VERBS))], rng, short)
    return clip[rng.integers(len(clip))]


def write_video(path: str | Path, frames: np.ndarray, fps: int) -> None:
    """Write uint8 frames (F, H, W, 3) as lossless H.264 in 4:4:4.

    Written atomically (`atomic_open`), so a killed run never leaves a truncated file behind.
    """
    with atomic_open(path) as f, av.open(f, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        # Lossless (qp 0): libx264 here sometimes writes different bytes for the same frames from one run
        # to the next (seen on a busy machine, even single-threaded), and a lossy stream then decodes to
        # different pixels; any lossless stream decodes to the same ones, so the clips are a function of
        # the seed. 2.7x the size of crf 12 (about 18 KB a clip).
        stream.options = {"qp": "0", "preset": "veryfast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def _timestamp(seconds: float) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{secs:05.2f}"


@dataclass
class ClipRecord:
    narration_id: str
    participant_id: str
    video_id: str
    verb_class: int
    noun_class: int
    num_frames: int
    fps: int

    def ek100_row(self) -> dict:
        verb, noun = VERBS[self.verb_class], NOUNS[self.noun_class]
        stop = _timestamp(self.num_frames / self.fps)
        return {
            "narration_id": self.narration_id, "participant_id": self.participant_id, "video_id": self.video_id,
            "narration_timestamp": _timestamp(0.0), "start_timestamp": _timestamp(0.0), "stop_timestamp": stop,
            "start_frame": 1, "stop_frame": self.num_frames,
            "narration": f"{verb.replace('_', ' ')} {noun}", "verb": verb, "verb_class": self.verb_class,
            "noun": noun, "noun_class": self.noun_class, "all_nouns": f"['{noun}']",
            "all_noun_classes": f"[{self.noun_class}]",
        }


def annotation_file(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"EPIC_100_{split}.csv"


def write_class_files(root: str | Path) -> None:
    """EK100's class lists: EPIC_100_verb_classes.csv and EPIC_100_noun_classes.csv (id, key, instances,
    category)."""
    folder = Path(root) / "annotations"
    for kind, names in (("verb", VERBS), ("noun", NOUNS)):
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["id", "key", "instances", "category"])
        for i, name in enumerate(names):
            writer.writerow([i, name, f"['{name}']", "motion" if kind == "verb" else "digit"])
        atomic_write_text(folder / f"EPIC_100_{kind}_classes.csv", text.getvalue())


def write_annotations(root: str | Path, split: str, records: list[ClipRecord]) -> Path:
    path = annotation_file(root, split)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=EK100_COLUMNS)
    writer.writeheader()
    writer.writerows(r.ek100_row() for r in records)
    atomic_write_text(path, text.getvalue())
    return path


def plan_split(split: str, num_clips: int, image_ids: np.ndarray, labels: np.ndarray, seed: int,
               num_frames: int, fps: int) -> list[tuple[ClipRecord, int, int]]:
    """(record, image index, clip seed) for every clip of a split: verbs balanced, every image used."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    verbs = np.resize(np.arange(len(VERBS)), num_clips)
    rng.shuffle(verbs)
    images = np.concatenate([rng.permutation(image_ids) for _ in range(num_clips // len(image_ids) + 1)])[:num_clips]
    participant = f"P{SPLITS.index(split) + 1:02d}"
    plan = []
    for i, (verb, image) in enumerate(zip(verbs, images, strict=True)):
        video_id = f"{participant}_{i:05d}"
        record = ClipRecord(f"{video_id}_0", participant, video_id, int(verb), int(labels[image]), num_frames, fps)
        plan.append((record, int(image), int(rng.integers(2**31))))
    return plan


def video_path(root: str | Path, record: ClipRecord) -> Path:
    return Path(root) / "videos" / record.participant_id / f"{record.video_id}.mp4"


def write_moving_digits(root: str | Path, cfg: SynthConfig, clips: dict[str, int], seed: int,
                        progress: bool = True) -> dict[str, list[ClipRecord]]:
    """Write every split's videos and EK100-format annotation files under `root`; returns the records.

    A video already on disk is kept (its content is a function of the seed), so an interrupted run
    resumes where it stopped.
    """
    from tqdm import tqdm

    images, labels = load_digit_images()
    pools = split_images(len(images), seed)
    write_class_files(root)
    out = {}
    for split in SPLITS:
        plan = plan_split(split, clips[split], pools[split], labels, seed, cfg.num_frames, cfg.fps)
        for record, image, clip_seed in tqdm(plan, desc=f"videos {split}", disable=not progress, unit="clip"):
            path = video_path(root, record)
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            frames = render_clip(images[image], VERBS[record.verb_class], np.random.default_rng(clip_seed), cfg)
            write_video(path, frames, cfg.fps)
        write_annotations(root, split, [r for r, _, _ in plan])
        out[split] = [r for r, _, _ in plan]
    return out
