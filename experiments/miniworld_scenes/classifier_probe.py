"""Can a small conv classifier read the relational mini world's 9 label slots from its 128 px pictures?

python experiments/miniworld_scenes/classifier_probe.py [--seconds 420]: trains a 5-layer conv net with one
head per slot (cross-entropy, -1 slots ignored) on train-split scenes (a pool of 6,000 rendered images, moved
along the world every 500 steps), batch 64, AdamW 2e-3, for a fixed wall-clock budget on 2 threads; prints the
all-slot and per-slot accuracy of 500 held-out train-split items (from item 10,000,000) and 500 held-out-binding
pairs (``split="held_out"``). A feasibility probe for issue 22's scoring classifier, not that classifier.
"""

import argparse
import itertools
import time

import torch
from torch import nn

from bksdm.miniworld.scenes import LABEL_SLOTS, VALUES, SceneWorld


class Probe(nn.Module):
    def __init__(self, width: int = 32, features: int = 256):
        super().__init__()
        widths = [3, width, 2 * width, 4 * width, 4 * width, 4 * width]
        layers = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(widths[-1] * 16, features), nn.SiLU())
        self.heads = nn.ModuleDict({slot: nn.Linear(features, len(VALUES[slot])) for slot in LABEL_SLOTS})

    def forward(self, images):
        hidden = self.embed(self.body(images))
        return {slot: head(hidden) for slot, head in self.heads.items()}


def rendered(world: SceneWorld, indices) -> tuple[torch.Tensor, torch.Tensor]:
    items = [world[i] for i in indices]
    return torch.stack([i["pixel_values"] for i in items]), torch.stack([i["labels"] for i in items])


@torch.no_grad()
def accuracy(model: Probe, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict]:
    out, all_right, per_slot = model(images), torch.ones(len(labels), dtype=torch.bool), {}
    for j, slot in enumerate(LABEL_SLOTS):
        present = labels[:, j] >= 0
        right = (out[slot].argmax(1) == labels[:, j]) | ~present
        all_right &= right
        if present.any():
            per_slot[slot] = round(float(right[present].float().mean()), 3)
    return round(float(all_right.float().mean()), 3), per_slot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=420)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    start = time.time()
    train = SceneWorld(20_000)
    pool = rendered(train, range(6000))
    held_items = rendered(SceneWorld(500, offset=10_000_000), range(500))
    held_pairs = rendered(SceneWorld(500, split="held_out"), range(500))
    model = Probe()
    optimizer = torch.optim.AdamW(model.parameters(), 2e-3)
    loss_of = nn.CrossEntropyLoss(ignore_index=-1)
    step = 0
    while time.time() - start < args.seconds:
        if step and step % 500 == 0:  # fresh pictures: a pool further along the world
            first = step * 12 % 14_000
            pool = rendered(train, range(first, first + 6000))
        pick = torch.randint(0, len(pool[0]), (64,))
        out, labels = model(pool[0][pick]), pool[1][pick]
        loss = sum(loss_of(out[slot], labels[:, j]) for j, slot in enumerate(LABEL_SLOTS))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
    print(f"{step} steps in {time.time() - start:.0f} s")
    print("held-out items:", *accuracy(model, *held_items))
    print("held-out-binding pairs:", *accuracy(model, *held_pairs))


if __name__ == "__main__":
    main()
