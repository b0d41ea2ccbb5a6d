"""Every shipped model loads, matches its card on the bundled sample, and converts."""

import math

import pytest
import torch

from ftbc_core.assets import PRETRAINED_DIR, list_pretrained, load_sample
from ftbc_core.checkpoint import load_checkpoint
from ftbc_core.evaluate import ann_accuracy
from ftbc_core.experiment import simulate_dataset
from ftbc_core.snn import to_snn
from ftbc_core.data import to_tensor

SHIPPED = list_pretrained()


def test_the_repository_ships_models():
    for name in ("cnn-mnist", "resnet20-cifar10", "resnet20-cifar10-relu", "vgg16-cifar10"):
        assert name in SHIPPED, f"no {name} in {PRETRAINED_DIR}"
    for name in ("resnet20-cifar10", "vgg16-cifar10"):
        assert SHIPPED[name].activation == "qcfs" and SHIPPED[name].levels == 4, name
    assert SHIPPED["vgg16-cifar10"].arch == "vgg16"
    assert SHIPPED["resnet20-cifar10-relu"].activation == "relu"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_card_accuracy_holds_on_the_bundled_sample(name):
    # The bundled eval sample is 1000 class-balanced test images: the card's full-test accuracy p must be
    # within 4 binomial standard errors, sqrt(p(1-p)/n), plus 0.5 points for the class-balancing.
    model, card = load_checkpoint(PRETRAINED_DIR / f"{name}.safetensors")
    sample = load_sample(card.dataset, "eval")
    acc = ann_accuracy(model, sample)
    p = card.ann_test_accuracy / 100
    tolerance = 100 * 4 * math.sqrt(max(p * (1 - p), 1e-4) / len(sample)) + 0.5
    assert abs(acc - card.ann_test_accuracy) <= tolerance, (acc, card.ann_test_accuracy, tolerance)
    for key in ("command", "date", "dataset", "arch"):
        assert getattr(card, key)


@pytest.mark.slow
def test_mnist_snn_at_t8_tracks_its_ann():
    # Issue 2's target on the full test set is |ANN - SNN(T=8)| <= 1 point (see README for the figures);
    # on the 1000-image bundled sample we allow 1 point plus 2 standard errors of a difference (~0.9).
    model, card = load_checkpoint(PRETRAINED_DIR / "cnn-mnist.safetensors")
    assert card.ann_test_accuracy >= 99.0
    sample = load_sample("mnist", "eval")
    ann = ann_accuracy(model, sample)
    acc, _ = simulate_dataset(to_snn(model), model, sample, 8)
    assert ann - acc[-1] <= 1.9, (ann, acc[-1])


def test_calibration_sample_is_from_the_training_split_and_balanced():
    for dataset in ("mnist", "cifar10"):
        calib = load_sample(dataset, "calib")
        counts = torch.bincount(torch.from_numpy(calib.y), minlength=10)
        assert counts.min() == counts.max() == len(calib) // 10
        assert to_tensor(calib.x[:2]).max() <= 1.0


@pytest.mark.slow
def test_resnet20_ftbc_beats_plain_conversion_on_the_bundled_sample():
    # Issue 4's claim, on the shipped data only: calibrated on the bundled training images, FTBC beats the
    # uncorrected SNN at T = 4 on the 1000 bundled test images. On the full test set the gain is about 7 points
    # (README table); the standard error of a difference of two accuracies on 1000 images is at most ~2.2
    # points, so a 2-point margin fails only if FTBC stopped working.
    from ftbc_core.calibration import get_method
    from ftbc_core.experiment import calibration_images

    model, card = load_checkpoint(PRETRAINED_DIR / "resnet20-cifar10.safetensors")
    calib = calibration_images(load_sample("cifar10", "calib"), 512, 0, 10)
    sample = load_sample("cifar10", "eval")
    snn = to_snn(model)
    plain, _ = simulate_dataset(snn, model, sample, 4)
    net, report = get_method("ftbc").calibrate(snn, model, calib, 4, {"alpha": 0.5, "batches": 8, "batch_size": 64})
    fixed, _ = simulate_dataset(net, model, sample, 4)
    assert fixed[-1] >= plain[-1] + 2.0, (plain, fixed)
    assert all(abs(b).max() < 10 for b in report.biases.values())
