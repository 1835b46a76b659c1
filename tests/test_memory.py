"""`CASTConfig.memory`: what a training step keeps for backward, and `CASTConfig.frozen_backward`: the
precision of the gradient carried back through the frozen experts. Every option computes the forward of
the reference ("full", "fp32"); recomputation gives its gradients exactly, bf16 storage and the bf16
backward within bf16 rounding."""

import pytest
import torch
from torch import nn

from cast_video import CAST
from cast_video.models import layers
from cast_video.models.bcast import CrossExchange
from cast_video.models.experts import ExpertBlock
from cast_video.models.layers import Adapter, QuickGELU, SavedInBf16, frozen_backward_in_bf16, linear

VIDEO_SHAPE = (2, 3, 8, 32, 32)


def _model(**overrides):
    torch.manual_seed(0)
    model = CAST.from_preset("cast_tiny", drop_path=0.3, **overrides)
    with torch.no_grad():  # adapters and exchange up-projections start at zero: make them count
        for _, p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.train()


def _step(model, video):
    """Outputs and trainable gradients of one step; seeded so that every option draws the same drop-path masks."""
    torch.manual_seed(1)
    out = model(video)
    (out["verb"].square().sum() + out["noun"].sum()).backward()
    return {k: v.detach() for k, v in out.items()}, {n: p.grad.clone() for n, p in model.trainable_parameters()}


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(5)
    video = torch.randn(*VIDEO_SHAPE)
    return video, _step(_model(memory="full"), video)


@pytest.mark.parametrize("mode", ["recompute", "bf16", "recompute_bf16"])
def test_memory_options_give_the_reference_outputs_and_gradients(mode, reference):
    """Outputs: the same bits (no option changes the forward). Gradients: exact for recomputation in
    fp32 (the same ops on the same values, the same drop-path masks replayed); with bf16 storage each
    trainable parameter's gradient within 1e-2 of its norm. bf16 keeps 8 bits (2**-9 relative per
    stored value) and a gradient multiplies several stored values of every block above it: measured
    here, median 1e-4 and at most 4e-3 (T2S's query weights: its softmax over T keys is the sharpest).
    A wrong value read back (not a rounded one) is off by its own size; and the median over the
    parameters is held to 1e-3, so rounding spread everywhere fails too."""
    video, (ref_out, ref_grads) = reference
    out, grads = _step(_model(memory=mode), video)
    for k in ref_out:
        assert torch.equal(out[k], ref_out[k]), k
    assert ref_grads.keys() == grads.keys()
    for n, g in ref_grads.items():
        if mode == "recompute":
            torch.testing.assert_close(grads[n], g, rtol=1e-6, atol=1e-9, msg=n)
        else:
            assert (grads[n] - g).norm() <= 1e-2 * g.norm() + 1e-9, n
    if mode != "recompute":
        relative = torch.tensor([((grads[n] - g).norm() / (g.norm() + 1e-12)).item() for n, g in ref_grads.items()])
        assert relative.median() <= 1e-3


def _calls(model, video, monkeypatch):
    """How often the exchange, the MLP adapters and the frozen MLP run during one step (forward +
    backward; the recomputation runs the methods again, without module hooks)."""
    counts = {"exchange": 0, "mlp adapter": 0, "frozen mlp": 0}
    mlp_adapters = {id(b.s_mlp_adapter) for b in model.blocks} | {id(b.t_mlp_adapter) for b in model.blocks}

    def counting(cls, method, key, only=None):
        original = getattr(cls, method)

        def wrapper(self, *args, **kwargs):
            if only is None or id(self) in only:
                counts[key] += 1
            return original(self, *args, **kwargs)
        monkeypatch.setattr(cls, method, wrapper)

    counting(CrossExchange, "forward", "exchange")
    counting(Adapter, "forward", "mlp adapter", mlp_adapters)
    counting(ExpertBlock, "feed_forward", "frozen mlp")
    _step(model, video)
    monkeypatch.undo()
    return counts


def test_recompute_runs_the_exchange_and_mlp_adapters_again_in_backward(monkeypatch):
    video = torch.randn(*VIDEO_SHAPE)
    full = _calls(_model(memory="full"), video, monkeypatch)
    depth = CAST.from_preset("cast_tiny").config.depth
    assert full == {"exchange": depth, "mlp adapter": 2 * depth, "frozen mlp": 2 * depth}
    for mode in ("recompute", "recompute_bf16"):
        again = _calls(_model(memory=mode), video, monkeypatch)
        assert again == {"exchange": 2 * depth, "mlp adapter": 4 * depth, "frozen mlp": 2 * depth}, mode  # MLP: once
    assert _calls(_model(memory="bf16"), video, monkeypatch) == full


def _saved_by_full(model, video) -> int:
    """How many values a `full` step saves for backward in large float32 tensors other than the
    model's parameters (autograd's own hooks count them, each storage once)."""
    resident = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if t.dtype == torch.float32 and t.numel() >= 4096 and t.shape[-1] != 1 and ptr not in resident:
            seen[ptr] = t.untyped_storage().nbytes() // 4
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _step(model, video)
    return sum(seen.values())


def test_bf16_storage_takes_everything_the_blocks_keep(monkeypatch):
    """`bf16` stores in bf16 about all that `full` keeps (frozen branches, adapters and the exchange;
    only the last norms and heads, outside the blocks, stay), and never copies a parameter. Two saved
    views that overlap in one storage (a token slice and its whole) are copied each: a few percent
    more values than `full`'s storages hold (3% here)."""
    video = torch.randn(*VIDEO_SHAPE)
    packs = []
    init = SavedInBf16.__init__

    def spy(self, keep, min_numel=4096):
        init(self, keep, min_numel)
        packs.append(self)

    monkeypatch.setattr(SavedInBf16, "__init__", spy)
    model = _model(memory="bf16")
    _step(model, video)
    full = _saved_by_full(_model(memory="full"), video)
    assert len(packs) == 1
    assert 0.9 * full <= packs[0].packed <= 1.05 * full


def test_nothing_changes_without_gradients():
    """eval and no_grad runs keep nothing for backward: every option is the plain forward."""
    video = torch.randn(*VIDEO_SHAPE)
    with torch.no_grad():
        outs = [_model(memory=m, frozen_backward=b).eval()(video)
                for m, b in (("full", "fp32"), ("recompute_bf16", "bf16"))]
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k])


def test_saved_in_bf16_keeps_parameters_and_small_tensors():
    w = nn.Parameter(torch.randn(256, 256))
    x = torch.randn(64, 256, requires_grad=True)
    stored = []
    hooks = SavedInBf16({w.untyped_storage().data_ptr()}, min_numel=1000)
    pack = hooks.pack_hook
    hooks.pack_hook = lambda t: stored.append(pack(t)) or stored[-1]
    with hooks:
        y = torch.tanh((x @ w) / 16)  # mm saves x and w; tanh saves its 64x256 output
        stats = torch.randn(64, 1, requires_grad=True) * 2  # a per-token column: kept
        (y * stats).sum().backward()
    kept = [s for s in stored if isinstance(s, torch.Tensor)]
    packed = [s[0] for s in stored if isinstance(s, tuple)]
    assert any(s is w for s in kept) and all(p.dtype == torch.bfloat16 for p in packed)
    assert {tuple(p.shape) for p in packed} == {(64, 256)} and hooks.packed == 64 * 256 * len(packed)
    assert any(tuple(s.shape) == (64, 1) for s in kept)
    xr = x.detach().clone().requires_grad_()
    (torch.tanh((xr @ w) / 16) * stats.detach()).sum().backward()
    assert 0 < (x.grad - xr.grad).norm() <= 1e-2 * xr.grad.norm()  # rounded (not equal), within bf16's 2**-9


def test_quick_gelu_is_x_sigmoid_and_keeps_one_tensor():
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = QuickGELU()(x)
    torch.testing.assert_close(y, x * torch.sigmoid(1.702 * x), rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(y.sum(), x)
    s = torch.sigmoid(1.702 * x)
    torch.testing.assert_close(g, s + 1.702 * x * s * (1 - s), rtol=1e-10, atol=1e-12)  # d/dx x sigma(ax)
    assert len([t for t in saved if t.numel() == x.numel()]) == 1


def test_memory_must_be_a_known_option():
    with pytest.raises(ValueError, match="memory must be one of"):
        CAST.from_preset("cast_tiny", memory="half")
    with pytest.raises(ValueError, match="frozen_backward must be one of"):
        CAST.from_preset("cast_tiny", frozen_backward="fp16")


def test_a_frozen_linear_in_bf16_backward_computes_the_input_gradient_from_bf16_values():
    """Forward: F.linear's bits. Backward: dL/dx = dL/dy W from dL/dy and W rounded to bf16, exact
    sums (the float64 product of the rounded values is the truth), the result rounded to bf16 once:
    within 2**-8 of the truth per element. No gradient for the frozen weight."""
    torch.manual_seed(0)
    w, b = torch.randn(96, 64), torch.randn(96)
    x = torch.randn(3, 50, 64, requires_grad=True)
    g = torch.randn(3, 50, 96)
    with frozen_backward_in_bf16():
        y = linear(x, w, b)
    assert torch.equal(y, nn.functional.linear(x, w, b))
    (dx,) = torch.autograd.grad(y, x, g)
    truth = g.bfloat16().double() @ w.bfloat16().double()  # (3, 50, 64)
    assert ((dx.double() - truth).abs() <= 2**-8 * truth.abs() + 1e-30).all()
    exact = g @ w
    assert not torch.equal(dx, exact) and (dx - exact).norm() <= 1e-2 * exact.norm()
    with frozen_backward_in_bf16():  # a device without autocast (meta, for FLOP counting) runs it too
        y = linear(torch.empty(2, 64, device="meta", requires_grad=True), w.to("meta"))
    assert y.shape == (2, 96)


@pytest.mark.parametrize("case", ["trainable weight", "trainable bias", "autocast", "outside the context", "no_grad"])
def test_the_bf16_backward_leaves_everything_else_to_f_linear(case):
    torch.manual_seed(0)
    w = torch.randn(32, 16, requires_grad=case == "trainable weight")
    b = torch.randn(32, requires_grad=case == "trainable bias")
    x = torch.randn(8, 16, requires_grad=True)
    context = frozen_backward_in_bf16() if case != "outside the context" else torch.enable_grad()
    with context, torch.autocast("cpu", torch.bfloat16, enabled=case == "autocast"), \
            torch.set_grad_enabled(case != "no_grad"):
        y = linear(x, w, b)
        ref = nn.functional.linear(x, w, b)
    assert torch.equal(y, ref)
    assert y.grad_fn is None if case == "no_grad" else type(y.grad_fn) is type(ref.grad_fn)


def test_frozen_backward_bf16_gives_the_reference_outputs_and_gradients_within_bf16_rounding(reference, monkeypatch):
    """The forward's bits are the reference's; trainable gradients within 1e-2 of their norms and 1e-3
    in the median (measured: median 1e-4, at most 3e-3; on CAST-B/16, median 1.6e-3). Parameters
    whose gradient passes no frozen layer's backward (the heads, the last norms, the last block's MLP
    adapters) get the reference's bits; the others differ. Every frozen linear whose input needs a
    gradient runs through it once: the four of every expert block, but the first block's attention,
    whose input comes from the frozen embedding."""
    video, (ref_out, ref_grads) = reference
    calls = []
    apply = layers._LinearInputGradInBf16.apply
    monkeypatch.setattr(layers._LinearInputGradInBf16, "apply", lambda *a: calls.append(a[1].shape) or apply(*a))
    model = _model(frozen_backward="bf16")
    out, grads = _step(model, video)
    for k in ref_out:
        assert torch.equal(out[k], ref_out[k]), k
    blocks = model.config.spatial.depth + model.config.temporal.depth
    assert len(calls) == 4 * blocks - 2 * 2
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    relative = {n: ((grads[n] - g).norm() / (g.norm() + 1e-12)).item() for n, g in ref_grads.items()}
    assert all(r <= 1e-2 for r in relative.values()) and torch.tensor(list(relative.values())).median() <= 1e-3
    unchanged = {n for n, r in relative.items() if r == 0}
    last = f"blocks.{model.config.depth - 1}."
    after_every_frozen_layer = ("heads.", last + "s_mlp_adapter", last + "t_mlp_adapter")
    assert {n for n in ref_grads if n.startswith(after_every_frozen_layer)} <= unchanged
    assert len(unchanged) < len(relative) / 4


def test_a_deeper_experts_unadapted_blocks_route_only_what_needs_a_gradient(monkeypatch):
    """Spatial expert twice as deep as the temporal one (k = 2): CAST block 0 runs spatial block 0 as
    the expert alone would, so nothing in it, nor block 1's attention, sees a gradient (0 + 2 routed
    layers); the six spatial blocks above route all four (24). Temporal: 2 in block 0, then 4 x 3.
    Hand count: 26 + 14 = 40."""
    calls = []
    apply = layers._LinearInputGradInBf16.apply
    monkeypatch.setattr(layers._LinearInputGradInBf16, "apply", lambda *a: calls.append(1) or apply(*a))
    model = _model(frozen_backward="bf16", **{"spatial.depth": 8, "temporal.depth": 4})
    _step(model, torch.randn(*VIDEO_SHAPE))
    assert len(calls) == 40


def test_checkpointed_blocks_rerun_under_the_bf16_backward():
    """With whole-block checkpointing the frozen layers' graph is rebuilt in backward: it is rebuilt under
    the bf16 backward too, so the gradients are those of the uncheckpointed bf16 run, not fp32's."""
    torch.manual_seed(5)
    video = torch.randn(*VIDEO_SHAPE)
    _, bf16 = _step(_model(frozen_backward="bf16"), video)
    _, checkpointed = _step(_model(frozen_backward="bf16", grad_checkpointing=True), video)
    _, fp32 = _step(_model(grad_checkpointing=True), video)
    differs = 0
    for n, g in bf16.items():
        torch.testing.assert_close(checkpointed[n], g, rtol=1e-5, atol=1e-8, msg=n)
        differs += not torch.equal(fp32[n], g)
    assert differs > len(bf16) / 2
