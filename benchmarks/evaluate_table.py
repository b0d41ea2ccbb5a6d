"""Print the README's Markdown table of one ``ftbc evaluate --json`` file: accuracy per T and method, with
± the standard deviation over the calibration draws where a method was run on more than one draw.

    python benchmarks/evaluate_table.py benchmarks/results/evaluate/resnet20-cifar10.json

Below the table: the ANN's accuracy, the images, the draws, each method's options (chosen or given) and its
latency. Nothing is computed here that the JSON does not hold; the numbers are the ones ``ftbc evaluate``
printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cell(row: dict, decimals: int) -> str:
    """``mean ± std`` when the method ran on several calibration draws (the JSON's ``draws``)."""
    text = f"{row['accuracy']:.{decimals}f}"
    if row.get("repeated"):
        text += f" ± {row['accuracy_std']:.{decimals}f}"
    return text


def _draws(payload: dict, method: str) -> int:
    """How many calibration draws a method ran (files written before ``draws`` was recorded: the seeded
    methods ran every draw, the others one; ReLU thresholds from statistics were not drawn then)."""
    info = payload["methods"][method]
    return info.get("draws", len(payload.get("seeds", [0])) if "seed" in info.get("options", {}) else 1)


def table(payload: dict, decimals: int = 2) -> str:
    methods = list(payload["methods"])
    rows = payload["rows"]
    by = {(r["method"], r["T"]): r for r in rows}
    steps = sorted({r["T"] for r in rows})
    repeated = {m for m in methods if _draws(payload, m) > 1}
    for r in rows:
        r["repeated"] = r["method"] in repeated
    out = ["| T | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for t in steps:
        out.append(f"| {t} | " + " | ".join(cell(by[(m, t)], decimals) for m in methods) + " |")
    return "\n".join(out)


def notes(payload: dict) -> str:
    seeds = payload.get("seeds", [0])
    lines = [f"ANN {payload['ann_accuracy']:.2f} % on {payload['data']}; calibration draws (seeds) "
             f"{', '.join(map(str, seeds))}."]
    for m, info in payload["methods"].items():
        opts = {k: v for k, v in info.get("options", {}).items() if k != "seed"}
        lat = next((r["latency"] - r["T"] for r in payload["rows"] if r["method"] == m), 0)
        extra = f"; latency T + {lat}" if lat else ""
        lines.append(f"- `{m}`: {', '.join(f'{k} {v}' for k, v in opts.items()) or 'no options'}{extra}")
    if payload.get("selection"):
        lines.append("Options chosen by `--select auto` on held-out training images (every trial in the JSON).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", help="files written by ftbc evaluate --json")
    p.add_argument("--decimals", type=int, default=2)
    args = p.parse_args(argv)
    for path in args.json:
        payload = json.loads(Path(path).read_text())
        print(f"<!-- {path}: {payload.get('command', '')} -->")
        print(table(payload, args.decimals))
        print()
        print(notes(payload))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
