"""Which frames a clip takes: segment sampling (SSV2, EK100) and dense sampling (K400), by hand."""

import numpy as np
import pytest

from cast_video.data.sampling import dense_indices, official_segment_indices, segment_indices


def test_segment_sampling_training_takes_one_frame_per_segment():
    rng = np.random.default_rng(0)
    draws = [segment_indices(160, 16, True, rng)[0] for _ in range(50)]
    for idx in draws:
        assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(idx))
    assert len({tuple(d) for d in draws}) == 50  # random, not a fixed pattern
    assert len({d[0] for d in draws}) == 10  # every frame of a segment gets drawn


@pytest.mark.parametrize("views", [1, 2, 3, 5])
def test_segment_sampling_test_views_spread_inside_each_segment(views):
    for v in range(views):
        idx, padded = segment_indices(160, 16, False, view=v, num_views=views)
        assert padded == 0 and idx == [10 * k + (10 * v) // views for k in range(16)]
    assert segment_indices(160, 16, False, view=1, num_views=2)[0] == list(range(5, 160, 10))  # centres


def test_segment_sampling_of_short_actions_repeats_frames_evenly():
    idx, _ = segment_indices(5, 16, False)
    assert idx == [k * 5 // 16 for k in range(16)] and max(idx) == 4


def test_dense_sampling_windows_and_padding():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(100):
        idx, padded = dense_indices(100, 16, 4, True, rng)
        assert padded == 0 and np.all(np.diff(idx) == 4) and 0 <= idx[0] and idx[-1] < 100
        starts.add(idx[0])
    assert min(starts) == 0 and max(starts) == 39 and len(starts) > 25  # 100 - 61 = 39 frames of room
    views = [dense_indices(100, 16, 4, False, view=v, num_views=3)[0][0] for v in range(3)]
    assert views == [0, 19, 39]  # evenly spaced over the room, floored as the official code
    assert dense_indices(100, 16, 4, False)[0][0] == 19  # one view: the centre window
    idx, padded = dense_indices(30, 16, 4, False)
    assert padded == 8 and idx == [0, 4, 8, 12, 16, 20, 24, 28] + [29] * 8  # the last frame repeated


def test_sampling_edges_pinned_by_mutation_testing():
    """What `make mutants` found unpinned: integer indices, no padding count when the last frame is taken,
    the first window of a short video in training, two test views, padding at the exact boundary."""
    idx, padded = segment_indices(16, 16, False)
    assert idx == list(range(16)) and padded == 0  # the last frame (15) is a frame, not padding
    assert all(type(i) is int for i in idx)
    assert segment_indices(5, 16, False)[1] == 0  # a short action repeats frames; nothing is padded
    rng = np.random.default_rng(0)
    assert {dense_indices(30, 16, 4, True, rng)[0][0] for _ in range(20)} == {0}  # no room: always frame 0
    assert [dense_indices(100, 16, 4, False, view=v, num_views=2)[0][0] for v in range(2)] == [0, 39]
    idx, padded = dense_indices(32, 16, 4, False)
    assert idx == [0, 4, 8, 12, 16, 20, 24, 28] + [31] * 8 and padded == 8  # 32..60 are past frame 31
    assert all(type(i) is int for i in idx)


def test_official_segment_sampling_by_hand():
    """The official code: segments of floor(L / n) whole frames over the first n * floor(L / n) frames,
    frame 0 everywhere for an action shorter than the clip; at test, the float segments' starts and
    centres."""
    rng = np.random.default_rng(0)
    seen = [set() for _ in range(8)]
    for _ in range(200):
        idx, padded = official_segment_indices(37, 8, True, rng)  # segments of 4: frames 0..31, never 32..36
        assert padded == 0
        for k, i in enumerate(idx):
            seen[k].add(i)
    assert seen == [{4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3} for k in range(8)]
    assert official_segment_indices(5, 8, True, rng)[0] == [0] * 8  # short: frame 0, not spread
    assert official_segment_indices(8, 8, True, rng)[0] == list(range(8))  # segments of one frame
    assert {tuple(official_segment_indices(17, 8, True, rng)[0]) for _ in range(100)} <= {
        tuple(2 * k + b for k, b in enumerate(bits)) for bits in np.ndindex(*(2,) * 8)}
    # test views of a 37-frame action: tick 4.625; starts int(4.625 k), centres int(2.3125 + 4.625 k)
    assert official_segment_indices(37, 8, False, view=0, num_views=2)[0] == [0, 4, 9, 13, 18, 23, 27, 32]
    assert official_segment_indices(37, 8, False, view=1, num_views=2)[0] == [2, 6, 11, 16, 20, 25, 30, 34]


def test_our_segment_sampling_reaches_the_end_of_the_action():
    """Ours spreads float segments over all L frames: the last frames, which the official rule never
    draws, are drawn too."""
    rng = np.random.default_rng(1)
    last = {segment_indices(37, 8, True, rng)[0][-1] for _ in range(200)}
    assert last == {32, 33, 34, 35, 36}  # the 8th segment is [32.375, 37)
