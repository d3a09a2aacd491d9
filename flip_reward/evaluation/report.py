"""Eval results as JSON, a Markdown report, and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _fmt(estimate: dict | None) -> str:
    if not estimate or estimate.get("n", 0) == 0:
        return "–"
    low, high = estimate["ci95"]
    return f"{estimate['value']:.3f} [{low:.2f}, {high:.2f}]"


def markdown(results: dict[str, Any], header: str = "") -> str:
    lines = [header] if header else []
    pairwise = {k: v for k, v in results.items() if v["kind"] == "pairwise"}
    recon = {k: v for k, v in results.items() if v["kind"] == "reconstruction"}
    if pairwise:
        names = list(next(iter(pairwise.values()))["methods"])
        lines += ["### Pairwise accuracy (chosen above rejected; tie = 0.5; 95% bootstrap interval)", ""]
        lines += ["| method | " + " | ".join(f"{k} (n={v['rows']})" for k, v in pairwise.items()) + " |"]
        lines += ["|---|" + "---|" * len(pairwise)]
        for name in names:
            lines.append(
                f"| {name} | " + " | ".join(_fmt(v["methods"][name]["accuracy"]) for v in pairwise.values()) + " |"
            )
        for file, data in pairwise.items():
            lines += ["", f"### Accuracy by response length: {file}", ""]
            buckets = list(next(iter(data["methods"].values()))["by_length"])
            lines += [
                "| method | "
                + " | ".join(f"{b} (n={next(iter(data['methods'].values()))['by_length'][b]['n']})" for b in buckets)
                + " |"
            ]
            lines += ["|---|" + "---|" * len(buckets)]
            for name, entry in data["methods"].items():
                lines.append(f"| {name} | " + " | ".join(_fmt(entry["by_length"][b]) for b in buckets) + " |")
            first = next(iter(data["methods"].values()))["by_relative_length"]
            lines += ["", f"### Accuracy when the chosen response is the longer / the shorter one: {file}", ""]
            lines += ['Length-balanced: the mean of the two, where "longer wins" scores 0.5.', ""]
            lines += [
                "| method | " + " | ".join(f"{k} (n={v['n']})" for k, v in first.items()) + " | length-balanced |"
            ]
            lines += ["|---|" + "---|" * (len(first) + 1)]
            for name, entry in data["methods"].items():
                cells = [_fmt(v) for v in entry["by_relative_length"].values()] + [_fmt(entry.get("length_balanced"))]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for file, data in recon.items():
        names = list(data["methods"])
        probe_names = list(next(iter(data["methods"].values()))["probes"])
        lines += [
            "",
            f"### {file} (n={data['rows']}): right instruction vs another row's, and reward-hacking probes",
            "",
        ]
        lines += ["Cells: share of rows where the honest response scores above the probe.", ""]
        lines += ["| method | matched > other instruction | mean reward | " + " | ".join(probe_names) + " |"]
        lines += ["|---|---|---|" + "---|" * len(probe_names)]
        for name in names:
            entry = data["methods"][name]
            mean = entry["reward_distribution"].get("mean")
            cells = [f"{entry['probes'][p]['honest_wins']['value']:.2f}" for p in probe_names]
            lines.append(
                f"| {name} | {_fmt(entry['matched_vs_other_instruction'])} | "
                f"{'–' if mean is None else f'{mean:.3f}'} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out_dir: Path, highlight: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    pairwise = {k: v for k, v in results.items() if v["kind"] == "pairwise"}
    if not pairwise:
        return written
    names = list(next(iter(pairwise.values()))["methods"])

    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(pairwise)
    for j, (file, data) in enumerate(pairwise.items()):
        values = [data["methods"][n]["accuracy"]["value"] for n in names]
        errs = np.array(
            [
                [v - data["methods"][n]["accuracy"]["ci95"][0], data["methods"][n]["accuracy"]["ci95"][1] - v]
                for n, v in zip(names, values)
            ]
        ).T
        ax.bar(np.arange(len(names)) + j * width, values, width, yerr=errs, label=file, capsize=2)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)) + width * (len(pairwise) - 1) / 2, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("pairwise accuracy")
    ax.set_title("Accuracy by method and file")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out_dir / "accuracy_by_method.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(pairwise), figsize=(5 * len(pairwise), 4), squeeze=False)
    for ax, (file, data) in zip(axes[0], pairwise.items()):
        entry = data["methods"].get(highlight) or next(iter(data["methods"].values()))
        chosen = [s for s in entry["chosen_scores"] if s is not None]
        rejected = [s for s in entry["rejected_scores"] if s is not None]
        bins = np.linspace(min(chosen + rejected, default=0), max(chosen + rejected, default=1), 30)
        ax.hist(chosen, bins=bins, alpha=0.6, label="chosen")
        ax.hist(rejected, bins=bins, alpha=0.6, label="rejected")
        ax.set_title(f"{file}: {highlight}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out_dir / "reward_distributions.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    file, data = next(iter(pairwise.items()))
    buckets = list(next(iter(data["methods"].values()))["by_length"])
    for name in names:
        ax.plot(buckets, [data["methods"][name]["by_length"][b]["value"] for b in buckets], marker="o", label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("pairwise accuracy")
    ax.set_title(f"Accuracy by response length ({file})")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    written.append(out_dir / "accuracy_by_length.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write(results: dict[str, Any], out_dir: Path, header: str, highlight: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "report.md").write_text(markdown(results, header))
    files = {"json": out_dir / "results.json", "markdown": out_dir / "report.md"}
    for path in plots(results, out_dir, highlight):
        files[path.stem] = path
    return files
