#!/usr/bin/env bash
# The README's accuracy tables: each is one `ftbc evaluate` command (the pipeline users run), its JSON in
# benchmarks/results/evaluate/, and the table printed from that JSON by benchmarks/evaluate_table.py.
#
#   bash benchmarks/readme_tables.sh DATA [NAME...]     # DATA: the folder with cifar10/ and mnist/
#
# NAME picks tables (default: all): resnet20 resnet20-root variants-resnet20 variants-cnn-mnist resnet20-relu vgg16
# cnn-mnist.
# Times on a 2-core CPU (2026-12-04, 2 threads): resnet20 14 min, vgg16 6 min, the others
# a few minutes each (resnet20-root: 11 min on 2026-12-05; resnet20-relu on the full test set: 45 min on 2026-12-06). Each command can also be run on its own (copy it from below).
set -euo pipefail
DATA=${1:?usage: readme_tables.sh DATA [NAME...]}
shift || true
OUT=benchmarks/results/evaluate
mkdir -p "$OUT"
ALL="cnn-mnist variants-cnn-mnist variants-resnet20 resnet20 resnet20-root resnet20-relu vgg16"
WANT=${*:-$ALL}

run() {  # NAME ARGS...: run one table unless not wanted
    local name=$1; shift
    case " $WANT " in *" $name "*) ;; *) return 0 ;; esac
    echo "== $name: ftbc evaluate $* --json $OUT/$name.json" >&2
    python -m ftbc_core evaluate "$@" --data-dir "$DATA" --threads 2 --json "$OUT/$name.json"
    python benchmarks/evaluate_table.py "$OUT/$name.json"
}

# cnn-mnist, options chosen on held-out training images, 3 draws, first 2,000 test images
run cnn-mnist --model cnn-mnist --timesteps 1,2,4,8,16 --methods none,ftbc,ftbc-root,ftbc-alpha,ftbc-exact,cos \
    --select auto --seeds 3 --limit 2000
# the published variants beside ours, each method with its registry defaults, 3 draws
run variants-cnn-mnist --model cnn-mnist --timesteps 1,2,4,8 \
    --methods none,ftbc,ftbc-root,ftbc-alpha,ftbc-official,cos,cos-causal --seeds 3 --limit 2000
run variants-resnet20 --model resnet20-cifar10 --timesteps 1,2,4,8 \
    --methods none,ftbc,ftbc-root,ftbc-alpha,ftbc-official,cos,cos-causal --seeds 3 --limit 2000
# the shipped QCFS ResNet-20 on the full test set, options chosen on held-out training images, 3 draws
run resnet20 --model resnet20-cifar10 --timesteps 1,2,4,8,16 --methods none,ftbc,cos --select auto --seeds 3
# the per-step target (the previous default) on the same protocol, beside the table above
run resnet20-root --model resnet20-cifar10 --timesteps 1,2,4,8,16 --methods ftbc-root --select auto --seeds 3
# plain ReLU ResNet-20 on the full test set (θ = 99.9th percentile of the calibration draw: every method repeats
# per draw)
run resnet20-relu --model resnet20-cifar10-relu --timesteps 1,2,4,8,16,32 --methods none,ftbc,cos \
    --select auto --seeds 3
# VGG-16 (9 ms per image-step here): 1,000 test images, registry defaults, 3 draws
run vgg16 --model vgg16-cifar10 --timesteps 1,2,4,8,16 --methods none,ftbc,cos --seeds 3 --limit 1000
