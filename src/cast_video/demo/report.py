"""The demo's results: a printed table, results.json, a bar chart and results.md."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_open, atomic_write_json, atomic_write_text

METRICS = (("verb", "Verb"), ("noun", "Noun"), ("action", "Action"), ("harmonic_mean", "H.M."))


def table(results: list[dict]) -> str:
    """A Markdown table of test top-1 accuracies (%), one row per method."""
    head = "| Method | Trainable params | " + " | ".join(label for _, label in METRICS) + " |"
    rule = "|---|---:|" + "---:|" * len(METRICS)
    rows = [f"| {r['label']} | {r['trainable_params']:,} | "
            + " | ".join(f"{100 * r['test'][key]:.1f}" for key, _ in METRICS) + " |" for r in results]
    return "\n".join([head, rule, *rows])


def verdict(results: list[dict]) -> str:
    """One honest sentence: does CAST have the best action accuracy, and by how much."""
    cast = next((r for r in results if r["method"] == "cast"), None)
    others = [r for r in results if r["method"] != "cast"]
    if cast is None or not others:
        return "CAST was not compared with a baseline in this run."
    best = max(others, key=lambda r: r["test"]["action"])
    gap = 100 * (cast["test"]["action"] - best["test"]["action"])
    if gap > 0:
        return (f"CAST has the best action accuracy: {gap:+.1f} points over the best baseline "
                f"({best['label']}).")
    return (f"CAST does not win here: its action accuracy is {gap:+.1f} points against the best baseline "
            f"({best['label']}).")


def bar_chart(results: list[dict], path: str | Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(METRICS))]
        values = [100 * r["test"][key] for key, _ in METRICS]
        bars = ax.bar(xs, values, width, label=r["label"])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(METRICS)), [label for _, label in METRICS])
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 108)
    ax.set_title(f"Moving digits, frozen experts (seed {seed})", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=len(results), frameon=False)
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def write_report(results: list[dict], run_dir: str | Path, seed: int, extra: dict) -> str:
    """Write results.json, results.png and results.md; return the Markdown table plus the verdict."""
    run = Path(run_dir)
    summary = {"seed": seed, "methods": [{k: r[k] for k in ("method", "label", "test", "trainable_params")}
                                         for r in results], **extra}
    atomic_write_json(run / "results.json", summary, indent=1)
    bar_chart(results, run / "results.png", seed)
    text = table(results) + "\n\n" + verdict(results)
    lines = ["# Moving-digits demo", "", f"Test split, top-1 accuracy (%), seed {seed}.", "", text, "",
             "![results](results.png)", ""]
    for key, value in extra.items():
        lines.append(f"- {key}: {value}")
    atomic_write_text(run / "results.md", "\n".join(lines) + "\n")
    return text
