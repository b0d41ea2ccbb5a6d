"""Write the small bundled data samples in pretrained/samples/ from a full data directory.

    python tools/make_samples.py --data-dir ../shared/data

For each dataset: ``<name>-calib.npz`` (class-balanced, from the training split, for calibration and ReLU
thresholds) and ``<name>-eval.npz`` (class-balanced, from the test split, for evaluation), chosen with
``balanced_indices(seed=2024)`` so the selection is reproducible. Each file also stores the source indices.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from ftbc_core.assets import SAMPLES_DIR
from ftbc_core.data import balanced_indices, get_info, load_split

SEED = 2024
SIZES = {"calib": ("train", 1000), "eval": ("test", 1000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--datasets", default="cifar10,mnist")
    parser.add_argument("--out", default=str(SAMPLES_DIR))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.datasets.split(","):
        info = get_info(name)
        for kind, (split, n) in SIZES.items():
            data = load_split(name, split, args.data_dir)
            idx = balanced_indices(data.y, n, SEED, info.num_classes)
            x, y = data.x[idx], data.y[idx]
            path = out / f"{name}-{kind}.npz"
            np.savez_compressed(path, x=x, y=y, source_index=idx.astype(np.int64))
            digest = hashlib.sha256(x.tobytes()).hexdigest()[:16]
            print(f"{path}: {len(idx)} images from the {split} split, {path.stat().st_size / 1e6:.2f} MB, "
                  f"sha256(x)[:16]={digest}")


if __name__ == "__main__":
    main()
