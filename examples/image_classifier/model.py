"""The shapes classifier: a small CNN over 3 x 64 x 64 normalized pictures.

This file is the archive's ``--model-file``: it defines exactly one ``nn.Module`` class,
which the handler builds with no arguments and fills with the trained state dict.
"""

from __future__ import annotations

import torch
from torch import nn


class ShapesCNN(nn.Module):
    """Four conv blocks (8, 16, 32, 64 channels), each halving the picture (64 -> 4), a
    2 x 2 average pool that keeps a little of where features are, and one linear layer:
    about 26 k parameters, cheap enough to train on one CPU thread in half a minute.

    The defaults are what the trained weights need: six classes, width 8."""

    def __init__(self, num_classes: int = 6, width: int = 8) -> None:
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 8 * width]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:]):
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(channels[-1] * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, one row per picture (the handler applies the softmax)."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
