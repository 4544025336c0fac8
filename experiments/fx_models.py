"""Small PyTorch modules for ``python -m dse.roofline module=experiments/fx_models.py:<factory>``: the
kinds of network the cross-stack studies dse descends from cost beside transformers. Each factory
returns a fresh module; dse builds it on the meta device, so the sizes cost no memory.

    python -m dse.roofline module=experiments/fx_models.py:gemm_chain 'inputs=[[256,1024]]'
    python -m dse.roofline module=experiments/fx_models.py:small_cnn 'inputs=[[64,3,32,32]]'
    python -m dse.roofline module=experiments/fx_models.py:lstm 'inputs=[[32,128,256]]'
"""

from __future__ import annotations

import torch
from torch import nn


def gemm_chain(width: int = 1024, depth: int = 4) -> nn.Module:
    """``depth`` square linear layers of ``width`` with ReLU between them (an MLP)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(width, width))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def small_cnn(classes: int = 10) -> nn.Module:
    """A VGG-style CNN for 32×32 images: two 3×3 convolution blocks with pooling, then a classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 8 * 8, classes),
    )


class _LastStep(nn.Module):
    """An LSTM over a sequence and a linear read-out of its last hidden state."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def lstm(features: int = 256, hidden: int = 512) -> nn.Module:
    """One LSTM layer (inputs: batch × time × features) with a read-out."""
    return _LastStep(features, hidden)
