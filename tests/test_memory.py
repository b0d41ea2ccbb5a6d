"""The memory estimate that refuses runs too large for the machine, against the peak a real run reaches."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, json, sys, torch
from ftbc_core.checkpoint import load_checkpoint
from ftbc_core.memory import estimate_memory_bytes
from ftbc_core.snn import to_snn
torch.set_num_threads(1)
steps, batch = int(sys.argv[1]), int(sys.argv[2])
ann, _ = load_checkpoint("pretrained/resnet20-cifar10.safetensors")
snn = to_snn(ann, max_batch_steps=steps * batch)  # one chunk: the whole run at once
x = torch.rand(batch, 3, 32, 32)
def status(key):  # kB fields of /proc/self/status: VmRSS (now), VmHWM (peak of this process image)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
with torch.no_grad():
    snn(x[:1], 1)  # allocator and kernels warmed up: the baseline
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (getrusage's maxrss would carry the parent's peak across exec)
base = status("VmRSS")
with torch.no_grad():
    snn(x, steps)
peak = status("VmHWM")
print(json.dumps({"measured": peak - base, "estimate": estimate_memory_bytes(snn, (3, 32, 32), steps, batch)}))
"""


@pytest.mark.parametrize("steps, batch", [(64, 32), (8, 128)])
def test_estimate_covers_the_measured_peak_without_overstating_it(steps, batch):
    # a fresh process whose peak resident memory (reset after warm-up) belongs to this simulation alone
    out = subprocess.run([sys.executable, "-c", PROBE, str(steps), str(batch)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    measured, estimate = figures["measured"], figures["estimate"]
    assert measured > 50 * 2**20  # the run is large enough to measure
    assert measured <= estimate <= 4 * measured, figures  # safe, and not so cautious that it refuses fitting runs
