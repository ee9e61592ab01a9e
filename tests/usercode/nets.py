"""Model factories as a user would write them (fx-traceable, BN after bias-free convs)."""

from __future__ import annotations

from torch import nn


def tiny_cnn(num_classes: int, in_channels: int, width: int = 8) -> nn.Sequential:
    """Asks for the class count and channels only; global pooling makes it size-free."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


class TinyMLP(nn.Module):
    """An nn.Module class as the factory; asks for the whole input shape."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        c, h, w = input_shape
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c * h * w, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


def fixed_head(width: int = 4) -> nn.Sequential:
    """Asks for nothing from the data: only model_args reach it."""
    return nn.Sequential(nn.Flatten(), nn.Linear(width, 2))


def not_a_model(num_classes: int) -> str:
    return f"{num_classes} classes"


NOT_CALLABLE = 3
