"""`precision: auto` (bf16 only where it is faster) and frozen expert weights stored in bf16."""

import copy
import inspect

import pytest
import torch

from cast_video import CAST, precision
from cast_video.config_utils import ConfigError
from cast_video.models import preset_config
from cast_video.precision import CPU_BF16_MIN_GMACS, resolve_precision

XEON_FLAGS = "fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"  # Sapphire Rapids
ZEN4_FLAGS = "fpu vme sse sse2 avx avx2 avx512f avx512_bf16"  # AVX512-BF16, no AMX
ZEN3_FLAGS = "fpu vme sse sse2 avx avx2 fma"  # no native bf16 at all


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    def fake(flags: str):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nmodel name\t: fake\nflags\t\t: {flags}\n\n"
                        f"processor\t: 1\nflags\t\t: {flags}\n")
        monkeypatch.setattr(precision, "_CPUINFO", path)
    return fake


def test_cpu_without_native_bf16_is_fp32_even_for_a_large_model(cpuinfo):
    cpuinfo(ZEN3_FLAGS)
    chosen, reason = resolve_precision("auto", "cpu", preset_config("cast_b16_ek100"))
    assert chosen == "fp32" and "no native bf16" in reason


@pytest.mark.parametrize("flags, units", [(XEON_FLAGS, "AMX"), (ZEN4_FLAGS, "AVX512-BF16")])
def test_cpu_with_native_bf16_is_bf16_only_for_a_large_model(cpuinfo, flags, units):
    cpuinfo(flags)
    big, reason = resolve_precision("auto", "cpu", preset_config("cast_b16_ek100"))
    assert big == "bf16" and units in reason
    small, reason = resolve_precision("auto", "cpu", preset_config("cast_tiny"))
    assert small == "fp32" and f"{CPU_BF16_MIN_GMACS:g}" in reason
    assert resolve_precision("auto", "cpu", None)[0] == "fp32"  # size unknown: the safe choice


def test_no_cpuinfo_means_no_amx(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "_CPUINFO", tmp_path / "absent")
    assert resolve_precision("auto", "cpu", preset_config("cast_b16_ek100"))[0] == "fp32"


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_gpu_is_bf16_where_supported(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")
    chosen, reason = resolve_precision("auto", "cuda", preset_config("cast_tiny"))
    assert chosen == expected and "Fake GPU" in reason


def test_explicit_choice_is_obeyed_and_warned(cpuinfo):
    cpuinfo(ZEN3_FLAGS)
    for p in ("bf16", "fp16", "fp32"):
        assert resolve_precision(p, "cpu")[0] == p
    assert "slower" in resolve_precision("bf16", "cpu")[1]
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("bf32", "cpu")


def test_the_default_is_auto():
    from cast_video.benchmark import run_benchmark
    from cast_video.cli import build_parser
    from cast_video.engine import TrainConfig
    from cast_video.engine.predict import Predictor

    parser = build_parser()
    assert parser.parse_args(["benchmark", "cast_tiny"]).precision == "auto"
    assert parser.parse_args(["predict", "v.mp4", "--model", "m"]).precision == "auto"
    for fn in (run_benchmark, Predictor):
        assert inspect.signature(fn).parameters["precision"].default == "auto"
    assert TrainConfig().precision == "auto"


def test_auto_must_be_resolved_before_autocast():
    """`auto` reaching autocast unresolved would silently become some dtype; it is an error instead."""
    with pytest.raises(ConfigError, match="resolve it first"):
        precision.autocast("auto", torch.device("cpu"))
    assert precision.autocast("bf16", torch.device("cpu")).fast_dtype == torch.bfloat16


def test_prepare_casts_the_frozen_weights_only_for_bf16(cpuinfo):
    cpuinfo(XEON_FLAGS)
    small = CAST.from_preset("cast_tiny")
    assert precision.prepare(small, "auto", "cpu")[0] == "fp32"
    assert all(p.dtype == torch.float32 for p in small.parameters())
    assert precision.prepare(small, "bf16", "cpu")[0] == "bf16"
    assert small.spatial.patch_embed.weight.dtype == torch.bfloat16


def test_the_choice_is_logged(cpuinfo, caplog):
    cpuinfo(ZEN3_FLAGS)
    with caplog.at_level("INFO", logger="cast_video.precision"):
        resolve_precision("auto", "cpu", preset_config("cast_tiny"))
    assert "precision fp32 (auto: this CPU has no native bf16 units" in caplog.text


@pytest.mark.parametrize("flags, requested, frozen, said", [
    (ZEN3_FLAGS, "fp32", True, "expect it to be slower than fp32"),
    (ZEN4_FLAGS, "bf16", True, "not used under bf16 autocast"),
    (ZEN4_FLAGS, "fp32", False, "nothing to act on: freeze_experts is false"),
    (ZEN4_FLAGS, "fp32", True, None),
])
def test_prepare_says_when_the_bf16_backward_will_not_pay(cpuinfo, caplog, flags, requested, frozen, said):
    cpuinfo(flags)
    with caplog.at_level("INFO", logger="cast_video.precision"):
        model = CAST.from_preset("cast_tiny", frozen_backward="bf16", freeze_experts=frozen)
        precision.prepare(model, requested, "cpu")
    assert ("frozen_backward" in caplog.text) == (said is not None)
    assert said is None or said in caplog.text



@pytest.mark.parametrize("supported", [True, False])
def test_prepare_warns_of_the_bf16_backward_on_a_gpu_without_bf16(caplog, monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    with caplog.at_level("INFO", logger="cast_video.precision"):
        precision.prepare(CAST.from_preset("cast_tiny", frozen_backward="bf16"), "fp32", "cuda")
    assert ("GPU without bf16 units" in caplog.text) == (not supported)

# --- frozen weights in bf16 ----------------------------------------------------------------------
def _model() -> CAST:
    torch.manual_seed(0)
    model = CAST.from_preset("cast_tiny")
    with torch.no_grad():  # move zero-initialised exchanges and adapters away from zero, so they act
        for _, p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_cast_frozen_stores_frozen_matmul_weights_in_bf16_only():
    model = _model()
    model.cast_frozen_(torch.bfloat16)
    for name, p in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        is_matmul = isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d))
        assert p.dtype == (torch.bfloat16 if is_matmul and not p.requires_grad else torch.float32), name
    assert any(p.dtype == torch.bfloat16 for p in model.parameters())


def test_bf16_frozen_weights_give_autocasts_outputs():
    """Autocast rounds each frozen weight to bf16 in every forward; storing the rounded weight
    once must give the same outputs bit for bit, and the fp32 model's within bf16 rounding."""
    fp32 = _model()
    frozen = copy.deepcopy(fp32).cast_frozen_(torch.bfloat16)
    torch.manual_seed(1)
    video = torch.randn(2, 3, fp32.config.num_frames, fp32.config.img_size, fp32.config.img_size)
    with torch.no_grad():
        reference = fp32(video)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = fp32(video)
            stored = frozen(video)
    for head in reference:
        torch.testing.assert_close(stored[head], autocast[head], rtol=0, atol=0)
        # bf16 has 8 bits of mantissa: logits of order 1 agree to a few 1e-2 through 2 blocks
        torch.testing.assert_close(stored[head].float(), reference[head], rtol=0.05, atol=0.05)


def test_training_step_with_bf16_frozen_weights_matches_autocast():
    fp32 = _model().train()
    frozen = copy.deepcopy(fp32).cast_frozen_(torch.bfloat16)
    video = torch.randn(2, 3, fp32.config.num_frames, fp32.config.img_size, fp32.config.img_size)
    for model in (fp32, frozen):
        torch.manual_seed(2)  # the same drop-path draws
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sum(out.float().logsumexp(-1).mean() for out in model(video).values()).backward()
    grads = dict(frozen.trainable_parameters())
    assert grads
    for name, p in fp32.trainable_parameters():
        assert grads[name].grad is not None, name
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=0, atol=0, msg=name)
