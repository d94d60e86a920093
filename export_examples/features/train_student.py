"""Train a small student policy head on backbone features written by `gr00t-export features`.

    gr00t-export features out/gr1_fp16 --dataset_path demo_data/robot_sim.PickNPlace --out feats.safetensors
    python export_examples/features/train_student.py feats.safetensors --dataset_path demo_data/robot_sim.PickNPlace

Each record of the file is one dataset step: the backbone's features (L, D), unpadded (L is the step's own prompt
length), with its attention mask and token ids. A batch of steps is left-padded to its longest record here, as the
backbone pads a batch, and the mask keeps the padding out of the pooling. The target is the step's recorded action
(the first row of its action chunk), read from the dataset by (episode, frame); the keys come from the build's
policy interface, which the file's metadata carries.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gr00t_export.data.lerobot import LeRobotDataset
from gr00t_export.families.base import PolicyInterface
from gr00t_export.tools.features import FeaturesFile, StepFeatures


class StepDataset(Dataset):
    """(features record, action target) per step; records are read from the file on demand."""

    def __init__(self, features: FeaturesFile, targets: torch.Tensor):
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[StepFeatures, torch.Tensor]:
        return self.features[i], self.targets[i]


def collate(batch: list[tuple[StepFeatures, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pads the records to the longest: (B, L, D) float32 features, (B, L) mask, (B, A) targets."""
    longest = max(record.features.shape[0] for record, _ in batch)
    dim = batch[0][0].features.shape[1]
    features, mask = torch.zeros(len(batch), longest, dim), torch.zeros(len(batch), longest)
    for i, (record, _) in enumerate(batch):
        n = record.features.shape[0]
        features[i, longest - n:] = record.features.float()
        mask[i, longest - n:] = record.tokens["attention_mask"].float()
    return features, mask, torch.stack([target for _, target in batch])


class Student(nn.Module):
    """Masked mean of the backbone tokens, then a small MLP to the action."""

    def __init__(self, dim: int, out: int, hidden: int = 256):
        super().__init__()
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1)
        return self.head((features * weights).sum(1) / weights.sum(1).clamp(min=1))


def action_targets(features: FeaturesFile, dataset: LeRobotDataset) -> torch.Tensor:
    """Each step's first recorded action row, every action key concatenated, standardised per joint."""
    interface = PolicyInterface.from_dict(features.metadata["interface"])
    rows = []
    for episode, frame in zip(features.episode_index, features.frame_index, strict=True):
        actions = dataset.actions(int(episode), int(frame), interface)
        rows.append(np.concatenate([actions[key][0] for key in interface.action_keys]))
    targets = torch.from_numpy(np.stack(rows)).float()
    return (targets - targets.mean(0)) / targets.std(0).clamp(min=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", help="file written by `gr00t-export features` (.safetensors or .parquet)")
    parser.add_argument("--dataset_path", required=True, help="the LeRobot dataset the features were computed from")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    torch.manual_seed(0)
    features = FeaturesFile(args.features)
    print(f"{len(features)} steps of {features.metadata['dataset']['path']}, {features.metadata['dtype']} features "
          f"of width {features.metadata['dim']} from stages {', '.join(features.metadata['stages'])}")
    targets = action_targets(features, LeRobotDataset(args.dataset_path))
    loader = DataLoader(StepDataset(features, targets), batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    student = Student(features.metadata["dim"], targets.shape[1])
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr)
    losses = []
    for epoch in range(args.epochs):
        total = 0.0
        for x, mask, y in loader:
            loss = nn.functional.mse_loss(student(x, mask), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
        losses.append(total / len(features))
        print(f"epoch {epoch + 1}: mse {losses[-1]:.4f}")
    print(json.dumps({"steps": len(features), "epochs": args.epochs, "first_loss": losses[0],
                      "last_loss": losses[-1]}))


if __name__ == "__main__":
    main()
