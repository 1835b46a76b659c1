"""The standard benchmark matrix, one fresh process per row, written into docs/benchmarks.md.

    .venv/bin/python benchmarks/run_matrix.py [--quick] [--also LABEL=COMMAND ...]

Each row runs `cast-video benchmark ... --json` in its own process, so its figures (peak memory
above all) are its own. `--also` adds rows from any other command that prints the same JSON keys
(another implementation timed with `cast_video.benchmark.measure`), measured in the same run so that
the ratios compare like with like. The data-loader benchmark (benchmarks/bench_decode.py) is run
too when it is present. Only the part between the markers of the output file is rewritten.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from cast_video.benchmark import device_name
from cast_video.models.cast import MEMORY_MODES, CASTConfig

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "cast_video", "benchmark"]
B16 = "cast_b16_ek100"
DEFAULT_MEMORY = CASTConfig().memory


def cpu_rows(quick: bool) -> list[list[str]]:
    few = ["--warmup", "1", "--steps", "1" if quick else "3"]
    fewer = ["--warmup", "1", "--steps", "1" if quick else "2"]
    return [
        ["cast_tiny", "--mode", "train", "--warmup", "3", "--steps", "20"],
        ["cast_tiny", "--mode", "train", "--batch", "8", "--warmup", "3", "--steps", "20"],
        ["cast_tiny", "--mode", "train", "--batch", "8", "--compile", "--warmup", "4", "--steps", "20"],
        [B16, "--mode", "infer", "--precision", "fp32", "--gemm", *few],
        [B16, "--mode", "infer", "--precision", "bf16", "--gemm", *fewer],
        [B16, "--mode", "infer", "--precision", "fp32", "--attention", "math", *few],
        [B16, "--mode", "infer", "--precision", "fp32", "--threads", "1", *fewer],
        [B16, "--mode", "infer", "--precision", "fp32", "--compile", "--warmup", "2", "--steps", "1" if quick else "3"],
        # training in fp32, as the official rows: the default memory option first, then the others
        [B16, "--mode", "train", "--precision", "fp32", *few],
        *([B16, "--mode", "train", "--precision", "fp32", "--memory", m, *few]
          for m in MEMORY_MODES if m != DEFAULT_MEMORY),
        # the frozen experts' input gradients in bf16, alone and with the least memory short of checkpointing
        [B16, "--mode", "train", "--precision", "fp32", "--frozen-backward", "bf16", *few],
        [B16, "--mode", "train", "--precision", "fp32", "--memory", "recompute_bf16", "--frozen-backward", "bf16",
         *few],
        # the default precision (auto: bf16 on a CPU with bf16 units, see "Precision")
        [B16, "--mode", "train", "--precision", "auto", *few],
        [B16, "--mode", "train", "--precision", "fp32", "--attention", "math", *few],
        [B16, "--mode", "train", "--precision", "fp32", "--grad-checkpointing", *few],
    ]


def gpu_rows() -> list[list[str]]:
    steps = ["--warmup", "5", "--steps", "20"]
    rows = [[B16, "--mode", "infer", "--batch", "32", "--precision", p, *c, *steps]
            for p in ("bf16", "fp32") for c in ([], ["--compile"])]
    rows.append([B16, "--mode", "infer", "--batch", "32", "--precision", "bf16", "--attention", "math", *steps])
    for batch in ("6", "16", "32", "64"):
        for extra in ([], ["--compile"], ["--grad-checkpointing"]):
            rows.append([B16, "--mode", "train", "--batch", batch, "--precision", "bf16", *extra, *steps])
    for batch in ("6", "32"):  # the memory options (the default is the plain row above)
        rows += [[B16, "--mode", "train", "--batch", batch, "--precision", "bf16", "--memory", m, *steps]
                 for m in MEMORY_MODES if m != DEFAULT_MEMORY]
    # fp32 training (TF32 matmuls), plain and with the CPU table's lean setting: the frozen backward in bf16
    lean = ["--memory", "recompute_bf16", "--frozen-backward", "bf16"]
    rows += [[B16, "--mode", "train", "--batch", "6", "--precision", "fp32", *extra, *steps]
             for extra in ([], ["--frozen-backward", "bf16"], lean)]
    return rows


def run_row(command: list[str]) -> dict:
    """The last JSON line a command prints, or {"error": ...} when it fails (out of memory, say)."""
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1][:200]}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["wall_s"] = round(time.perf_counter() - start, 1)
    return row


def table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| command | precision | ms/step | clips/s | peak memory (GB) | GMACs/view | MFU | time / GEMM bound "
             "| CPU busy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for command, r in rows:
        if "error" in r:
            lines.append(f"| `{command}` | | failed: {r['error']} | | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}% of {r['peak_tflops']:.0f}" if r.get("mfu") is not None else "-"
        gmacs = f"{r['gmacs_per_view']:.4g}" if "gmacs_per_view" in r else "-"
        bound = "-"
        if r.get("time_to_bound") is not None:
            rate = r["gemm_gflops"]["fp32" if r["precision"] == "fp32" else "bf16"]
            bound = f"{r['time_to_bound']:.2f} (bound {r['bound_ms'] / 1000:.2f} s at {rate:.0f} GFLOP/s)"
        lines.append(f"| `{command}` | {r.get('precision', '-')} | {r['ms_per_step']:.1f} | {r['clips_per_s']:.3f} | "
                     f"{r['peak_memory_gb']:.2f} | {gmacs} | {mfu} | {bound} | {r.get('cpu_busy', '-')} |")
    return lines


def ratios(rows: list[tuple[str, dict]]) -> list[str]:
    """Slower / faster and heavier / lighter against our default row of the same mode and batch."""
    ok = [(c, r) for c, r in rows if "error" not in r]

    def key(r):
        return r["mode"], r["batch"]

    base = {}  # the first plain row of each mode and batch: the matrix lists the default setting first
    for _, r in ok:
        if (r.get("preset") == B16 and r["attention"] == "sdpa" and not r["compile"] and not r["grad_checkpointing"]
                and r.get("memory", DEFAULT_MEMORY) == DEFAULT_MEMORY):
            base.setdefault(key(r), r)
    lines = []
    for command, r in ok:
        b = base.get(key(r))
        if b is None or r is b or (r.get("preset") != B16 and "official" not in r.get("preset", "")):
            continue
        lines.append(f"- `{command}`: {r['ms_per_step'] / b['ms_per_step']:.2f}x the time and "
                     f"{r['peak_memory_gb'] / b['peak_memory_gb']:.2f}x the peak memory of our default "
                     f"{r['mode']} step")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed step per ViT-B row")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=COMMAND",
                        help="another command printing benchmark JSON, e.g. another implementation")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    results = []
    for row in gpu_rows() if cuda else cpu_rows(args.quick):
        shown = "cast-video benchmark " + " ".join(row)
        print("$", shown, flush=True)
        results.append((shown, run_row(CLI + row + ["--json"])))
        print(json.dumps(results[-1][1]), flush=True)
    for also in args.also:
        label, _, command = also.partition("=")
        print("$", command, flush=True)
        r = run_row(shlex.split(command))
        r.setdefault("preset", label)
        results.append((f"{label}: {command}", r))
        print(json.dumps(r), flush=True)
    first = next((r for _, r in results if "error" not in r), {})
    lines = [
        f"Measured {date.today()} by `python benchmarks/run_matrix.py"
        f"{' --quick' if args.quick else ''}{''.join(f' --also {shlex.quote(a)}' for a in args.also)}`.", "",
        f"- machine: {device_name(torch.device('cuda' if cuda else 'cpu'))}, "
        f"{torch.get_num_threads()} threads by default, {platform.machine()}, {platform.system()} {platform.release()}",
        f"- versions: PyTorch {torch.__version__}, Python {platform.python_version()}"
        f"{f', CUDA {torch.version.cuda}' if cuda else ''}",
        f"- peak memory: {first.get('memory_kind', '?')}; batch 1 unless the command says otherwise; "
        "precision: what the step ran in (auto resolves per model and machine); "
        "each row in a fresh process; CPU busy: process CPU time / (wall time x threads) over the timed "
        "steps (well below 1: something else was running)", "",
        *table(results), "", "Against our default step of the same mode (same run):", "", *ratios(results),
    ]
    decode_script = ROOT / "benchmarks" / "bench_decode.py"
    if decode_script.exists():
        print("$ python benchmarks/bench_decode.py --json", flush=True)
        out = subprocess.run([sys.executable, str(decode_script), "--json"], cwd=ROOT, capture_output=True, text=True)
        lines += ["", "### Data loading", "", "`python benchmarks/bench_decode.py --json` (see docs/DATA.md):", ""]
        if out.returncode == 0:
            lines += ["| what | clips/s |", "|---|---:|"]
            decoded = json.loads(out.stdout.strip().splitlines()[-1])
            lines += [f"| {r['what']} | {r['clips_per_s']:.2f} |" for r in decoded]
        else:
            lines.append(f"failed: {(out.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    write_between_markers(Path(args.out), "\n".join(lines))
    print(f"wrote {args.out}")


BEGIN, END = "<!-- generated by benchmarks/run_matrix.py -->", "<!-- end of generated part -->"


def write_between_markers(path: Path, text: str) -> None:
    """Replace the generated part of `path`, keeping the hand-written discussion around it."""
    old = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in old or END not in old:
        old = old.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = old.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
