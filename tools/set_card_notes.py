"""Replace the free-text ``notes`` of a checkpoint's model card; the weights are rewritten unchanged.

    python tools/set_card_notes.py pretrained/resnet20-cifar10 "How it was trained, and why so."

For what training could not know (e.g. a run resumed with other speed settings); the card inside the
``.safetensors`` file and the ``.json`` beside it stay identical.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from ftbc_core.checkpoint import CARD_KEY, atomic_write_bytes, read_card


def set_notes(path: str | Path, notes: str) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    card = dataclasses.replace(read_card(path), notes=notes)
    tensors = st_load_bytes(path.read_bytes())
    atomic_write_bytes(path, st_save_bytes(tensors, metadata={CARD_KEY: card.to_json()}))
    atomic_write_bytes(path.with_suffix(".json"), (card.to_json() + "\n").encode())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="pretrained/NAME or pretrained/NAME.safetensors")
    parser.add_argument("notes")
    args = parser.parse_args()
    print(f"updated {set_notes(args.checkpoint, args.notes)}")


if __name__ == "__main__":
    main()
