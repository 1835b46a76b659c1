"""engine/optim.py: what the optimizer really receives (per-parameter learning rate and weight decay after
`set_lr`, and the step AdamW then takes), against the layer-decay rule worked out by hand from the names."""

import math

import pytest
import torch

from cast_video.engine.config import OptimConfig
from cast_video.engine.optim import build_optimizer, lr_at, param_groups, set_lr
from cast_video.models import CAST, preset_config

DEPTH = 4  # cast_tiny


def hand_layer(name: str) -> int:
    """The paper's layer-wise decay by name: embeddings 0, block i (of either expert, or its exchange and
    adapters) i + 1, final norms, fusion adapters and heads depth + 1."""
    parts = name.split(".")
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    if parts[0] in ("spatial", "temporal") and parts[1] == "blocks":
        return int(parts[2]) + 1
    if parts[0] in ("spatial", "temporal") and parts[1] != "norm":
        return 0
    return DEPTH + 1


def hand_decays(name: str, p: torch.Tensor) -> bool:
    leaf = name.split(".")[-1]
    return p.ndim >= 2 and not leaf.startswith("pos") and leaf != "class_embedding"


def lr_of(optimizer: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    """id(parameter) -> (lr, weight_decay) as the optimizer holds them."""
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("ablation", [None, "independent"])  # adapters only; the whole experts too
def test_per_parameter_lr_and_weight_decay_after_set_lr(ablation):
    torch.manual_seed(0)
    model = CAST(preset_config("cast_tiny", ablation=ablation))
    cfg = OptimConfig(layer_decay=0.6, weight_decay=0.07)
    optimizer = build_optimizer(model, cfg)
    set_lr(optimizer, 2e-3)
    held = lr_of(optimizer)
    trainable = model.trainable_parameters()
    assert len(held) == len(trainable)  # every trainable parameter once, nothing frozen
    layers_seen = set()
    for name, p in trainable:
        layer = hand_layer(name)
        layers_seen.add(layer)
        lr, wd = held[id(p)]
        assert lr == pytest.approx(2e-3 * 0.6 ** (DEPTH + 1 - layer), rel=1e-12), name
        assert wd == (0.07 if hand_decays(name, p) else 0.0), name
    assert layers_seen == (set(range(DEPTH + 2)) if ablation else set(range(1, DEPTH + 2)))
    set_lr(optimizer, 1e-4)  # a later step of the schedule rescales every group, keeping the decay
    assert held.keys() == lr_of(optimizer).keys()
    for name, p in trainable:
        assert lr_of(optimizer)[id(p)][0] == pytest.approx(1e-4 * 0.6 ** (DEPTH + 1 - hand_layer(name))), name


def _rates(ablation=None) -> dict[str, tuple[float, float]]:
    model = CAST(preset_config("cast_tiny", ablation=ablation))
    optimizer = build_optimizer(model, OptimConfig(layer_decay=0.5))
    set_lr(optimizer, 1.0)
    held = lr_of(optimizer)
    return {n: held[id(p)] for n, p in model.named_parameters() if id(p) in held}


def test_named_parameters_get_the_hand_computed_rates():
    rate = _rates()
    assert rate["heads.verb.weight"] == (1.0, 0.05) and rate["heads.noun.bias"] == (1.0, 0.0)
    assert rate["spatial.norm.weight"] == (1.0, 0.0)
    assert rate["blocks.3.exchange.t2s.attn.q.weight"] == (0.5, 0.05)  # last block: one decay step
    assert rate["blocks.0.s_attn_adapter.fc1.weight"] == (0.5 ** 4, 0.05)
    assert rate["blocks.1.exchange.s2t.pos_q_space"] == (0.5 ** 3, 0.0)
    assert "temporal.blocks.1.attn.qkv.weight" not in rate  # frozen: not in the optimizer
    experts = _rates("independent")  # Table 1(a)'s fine-tuned experts
    assert experts["temporal.blocks.1.attn.qkv.weight"] == (0.5 ** 3, 0.05)  # block 1's rate, as its adapters
    assert experts["spatial.class_embedding"] == (0.5 ** 5, 0.0)
    assert experts["spatial.patch_embed.weight"] == (0.5 ** 5, 0.05)


def test_the_adamw_step_moves_each_parameter_by_its_own_rate():
    """The first AdamW step is p <- p - lr * (wd * p + g / (|g| + eps)): a parameter moves by its group's lr,
    so a layer decay that is computed but not applied shows up in the weights."""
    torch.manual_seed(0)
    model = CAST(preset_config("cast_tiny"))
    cfg = OptimConfig(layer_decay=0.5, weight_decay=0.1)
    optimizer = build_optimizer(model, cfg)
    set_lr(optimizer, 1e-2)
    trainable = model.trainable_parameters()
    before = {n: p.detach().clone() for n, p in trainable}
    for _, p in trainable:
        p.grad = torch.ones_like(p)
    optimizer.step()
    for name, p in trainable:
        lr = 1e-2 * 0.5 ** (DEPTH + 1 - hand_layer(name))
        wd = 0.1 if hand_decays(name, p) else 0.0
        expected = before[name] * (1 - lr * wd) - lr * (1 / (1 + 1e-8))
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7, msg=name)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    assert build_optimizer(model, OptimConfig(betas=(0.8, 0.95))).defaults["betas"] == (0.8, 0.95)


def test_param_groups_split_by_layer_and_decay():
    model = CAST(preset_config("cast_tiny"))
    groups = param_groups(model, OptimConfig(layer_decay=0.75))
    keys = [(hand_layer(g["names"][0]), g["weight_decay"] == 0) for g in groups]
    assert keys == sorted(set(keys)) and len(keys) == len(groups)  # one group per (layer, no decay), in order
    for g in groups:
        assert all((hand_layer(n), g["weight_decay"] == 0) == (hand_layer(g["names"][0]), g["weight_decay"] == 0)
                   for n in g["names"])
        assert g["lr_scale"] == pytest.approx(0.75 ** (DEPTH + 1 - hand_layer(g["names"][0])))
    assert sorted(n for g in groups for n in g["names"]) == sorted(n for n, _ in model.trainable_parameters())


def test_warmup_cosine_schedule_by_hand():
    peak, floor, start = 1.0, 0.1, 0.01
    assert lr_at(0, 110, 10, peak, floor, start) == pytest.approx(start)
    assert lr_at(3, 110, 10, peak, floor, start) == pytest.approx(start + (peak - start) * 0.3)
    assert lr_at(10, 110, 10, peak, floor, start) == pytest.approx(peak)
    assert lr_at(35, 110, 10, peak, floor, start) == pytest.approx(floor + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(60, 110, 10, peak, floor, start) == pytest.approx((peak + floor) / 2)
    assert lr_at(110, 110, 10, peak, floor, start) == pytest.approx(floor)
    assert lr_at(500, 110, 10, peak, floor, start) == pytest.approx(floor)  # past the end: stays at the floor
    assert lr_at(0, 100, 0, peak, floor, start) == pytest.approx(peak)  # no warm-up: the peak at once
    assert lr_at(7, 7, 7, peak, floor, start) == pytest.approx(peak)  # all warm-up: no division by zero
    assert lr_at(11, 11, 10, peak, floor, start) == pytest.approx(floor)  # a one-step cosine ends at the floor


@pytest.mark.parametrize("total, pct", [(1, 0.1), (5, 0.1), (37, 0.1), (40, 0.3), (1000, 0.1), (9, 0.5)])
def test_one_cycle_equals_pytorchs_one_cycle_lr(total, pct):
    """OneCycle against torch.optim.lr_scheduler.OneCycleLR (the reference): the lr and AdamW beta1 the
    optimizer holds at every step, counts where pct x total is not whole included."""
    from cast_video.engine.optim import OneCycle, apply_schedule

    peak = 3e-3
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak, betas=(0.9, 0.98))
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=peak, total_steps=total, pct_start=pct)
    ours = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 1.0}], lr=peak,
                             betas=(0.9, 0.98))
    schedule = OneCycle(total, peak, pct_start=pct)
    for step in range(total):
        apply_schedule(ours, schedule, step)
        want, got = ref_opt.param_groups[0], ours.param_groups[0]
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-12, abs=0), step
        assert got["betas"] == pytest.approx(want["betas"], rel=1e-12), step
        ref_opt.step()
        ref.step()
    if pct * total > 1:  # a rise: it starts at peak / div_factor
        assert schedule(0) == pytest.approx(peak / 25)
    assert schedule(total - 1) == pytest.approx(peak / 25 / 1e4)


def test_one_cycle_rise_ending_at_step_zero_starts_at_the_peak():
    """pct_start x total = 1 puts the end of the rise at step 0, where PyTorch divides by zero: here step 0
    is the peak, with beta1 at its low, and the fall follows."""
    from cast_video.engine.optim import OneCycle

    schedule = OneCycle(10, 1e-3, pct_start=0.1)
    assert schedule(0) == 1e-3 and schedule.beta1(0) == 0.85
    assert all(schedule(s) > schedule(s + 1) for s in range(9))
    with pytest.raises(ValueError, match="total_steps"):
        OneCycle(0, 1e-3)


def test_warmup_cosine_leaves_adamw_beta1_alone():
    from cast_video.engine.optim import WarmupCosine, apply_schedule

    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.5}], betas=(0.8, 0.9))
    apply_schedule(opt, WarmupCosine(10, 2, 1e-3, 1e-6, 0.0), 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 5e-4) and opt.param_groups[0]["betas"] == (0.8, 0.9)
