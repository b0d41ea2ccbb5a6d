"""A/B of the dashboard's Run figure: two or more checkouts, fresh starts interleaved (A B A B ...).

    git worktree add /tmp/before HEAD~1
    python benchmarks/dashboard_run_ab.py --rounds 3 /tmp/before .

Each start is what ``dashboard_latency.py`` does up to the first run (its server child, headless Chromium, the
page with the form's defaults, Run, the accuracy page drawn), for each checkout in turn, so the shared machine's
drift between hours hits every checkout alike. Printed per start: Run → accuracy page (s), the experiment itself
(s), and the CPU seconds the server and the browser (Chromium and chromedriver) used meanwhile; then the medians.
Use it to tell a change's effect from this VM's spread (fresh starts of the same code differ by 1-3 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import dashboard_latency as lat


def one_start(tree: Path, work: Path, threads: int, timeout: float) -> dict[str, float]:
    """One fresh start of ``tree``'s dashboard: press Run, wait for the accuracy page; the figures."""
    log = work / f"experiments-{time.monotonic_ns()}.txt"
    drv = lat.chromium_driver(work / f"chromium-{time.monotonic_ns()}")
    port = lat.free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(tree))
    proc = lat.start_server(port, log, env, work / "server.log", root=tree)
    try:
        url = f"http://127.0.0.1:{port}"
        lat.wait_healthy(url, proc, timeout)
        drv.get(url)
        lat.wait_first_page(drv, timeout)
        browser = drv.service.process.pid
        cpu = lat._tree_cpu_seconds(browser), lat._cpu_seconds(proc.pid)
        _, clicked = lat.press_run(drv, timeout)
        run_s = time.monotonic() - clicked
        return {"run_s": run_s, "experiment_s": sum(lat._experiments(log)),
                "browser_cpu_s": lat._tree_cpu_seconds(browser) - cpu[0],
                "server_cpu_s": lat._cpu_seconds(proc.pid) - cpu[1]}
    finally:
        drv.quit()
        lat.stop_server(proc)


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="+", type=Path, help="checkouts of this repository (e.g. git worktrees)")
    p.add_argument("--rounds", type=int, default=3, help="fresh starts of each checkout")
    p.add_argument("--threads", type=int, default=2, help="OMP/MKL (torch) threads of the app")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for any one wait")
    args = p.parse_args(argv)
    trees = [t.resolve() for t in args.trees]
    for tree in trees:
        if not (tree / "dashboard" / "app.py").is_file():
            raise SystemExit(f"{tree}: not a checkout of this repository (no dashboard/app.py)")
    if not lat.CHROMIUM.exists():
        raise SystemExit(f"needs Debian's Chromium at {lat.CHROMIUM} (make browser-deps)")
    results: dict[str, list[dict[str, float]]] = {str(t): [] for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for tree in trees:
                row = one_start(tree, Path(tmp), args.threads, args.timeout)
                results[str(tree)].append(row)
                print(f"round {r + 1} {tree}: Run {row['run_s']:.2f} s, experiment {row['experiment_s']:.2f} s, "
                      f"CPU server {row['server_cpu_s']:.2f} s, browser {row['browser_cpu_s']:.2f} s", flush=True)
    print(f"\nmedians over {args.rounds} fresh starts ({args.threads} threads):")
    for tree, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"  {tree}: Run {med['run_s']:.2f} s, experiment {med['experiment_s']:.2f} s, browser CPU "
              f"{med['browser_cpu_s']:.2f} s ({med['browser_cpu_s'] / med['run_s']:.2f} of a core)")
    return results


if __name__ == "__main__":
    main()
