"""A small DenseNet, built the way DenseNet-161 is (a stem, dense blocks whose layers each
see every earlier layer's features, transitions that halve the picture, a linear
classifier), written here so that TorchServe's getting-started tutorial runs without
torchvision or a download. It is the archive's ``--model-file``: exactly one ``nn.Module``
class, built with no arguments.

Sizes: growth rate 12, blocks of (2, 4, 6, 4) layers, 24 stem features, 10 classes
(DenseNet-161: 48, (6, 12, 36, 24), 96 and 1000)."""

from __future__ import annotations

import torch
from torch import nn


def _dense_layer(in_features: int, growth: int, bottleneck: int = 4) -> nn.Sequential:
    """BN-ReLU-1x1 conv to ``bottleneck * growth`` channels, BN-ReLU-3x3 conv to ``growth``."""
    return nn.Sequential(
        nn.BatchNorm2d(in_features), nn.ReLU(inplace=True),
        nn.Conv2d(in_features, bottleneck * growth, kernel_size=1, bias=False),
        nn.BatchNorm2d(bottleneck * growth), nn.ReLU(inplace=True),
        nn.Conv2d(bottleneck * growth, growth, kernel_size=3, padding=1, bias=False))


class ImageClassifier(nn.Module):
    def __init__(self, growth: int = 12, blocks: tuple[int, ...] = (2, 4, 6, 4),
                 stem: int = 24, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.blocks = nn.ModuleList()  # each a ModuleList of dense layers
        self.transitions = nn.ModuleList()  # halve the channels and the picture
        features = stem
        for i, layers in enumerate(blocks):
            self.blocks.append(nn.ModuleList(_dense_layer(features + j * growth, growth)
                                             for j in range(layers)))
            features += layers * growth
            last = i == len(blocks) - 1
            self.transitions.append(nn.Sequential(
                nn.BatchNorm2d(features), nn.ReLU(inplace=True)) if last else nn.Sequential(
                nn.BatchNorm2d(features), nn.ReLU(inplace=True),
                nn.Conv2d(features, features // 2, kernel_size=1, bias=False),
                nn.AvgPool2d(kernel_size=2, stride=2)))
            if not last:
                features //= 2
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block, transition in zip(self.blocks, self.transitions):
            features = [x]
            for layer in block:  # every layer sees every earlier layer's features
                features.append(layer(torch.cat(features, 1)))
            x = transition(torch.cat(features, 1))
        pooled = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.classifier(torch.flatten(pooled, 1))
