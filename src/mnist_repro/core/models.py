"""The seven published architectures and two open families, composed from one conv block.

Notation follows reference/variants.md: ``conv(8, 16, post="BRD")`` is a
3x3 Conv2d without padding or bias, then BatchNorm, ReLU, Dropout in that order.
The post-op order differs between the published steps (lr_scheduler puts ReLU
before BatchNorm, dropout puts Dropout before ReLU), so it is data, not code.

A family model is named by its letter and its convs' output channels, so any
width is buildable without a list of them: ``c8-8-12-12-16`` is ``compact``,
``s16-24-32-32-32`` is ``separable`` (five to seven convs).

Add a variant: name a family model in params.yaml, or write a builder below and
add it to ``NAMED`` (README "Add a variant").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import torch
from torch import nn


class Dropout(nn.Dropout):
    """nn.Dropout whose keep mask costs a quarter of the random draws.

    On a CPU, drawing one random number per activation is a third of a small
    model's training step. Here one 64-bit draw yields four 16-bit uniforms, so
    ``p`` is rounded to a multiple of 1/65536 (0.03 -> 0.029999); activations are
    kept with probability ``1 - p`` and scaled by ``1 / (1 - p)`` as in nn.Dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        cut = round(self.p * 65536)
        words = torch.randint(-2**63, 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64, device=x.device)
        # Reinterpret as int16, uniform on [-32768, 32767], laid out like x (channels_last or not).
        bits = torch.as_strided(words.view(torch.int16), x.shape, x.stride())
        return x * (bits >= cut - 32768) * (65536 / (65536 - cut))


class ConvBlock(nn.Sequential):
    """Conv2d followed by post-ops, each a letter: B=BatchNorm, R=ReLU, D=Dropout."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, post: str = "", *,
                 padding: int = 0, bias: bool = False, dropout: float = 0.0, groups: int = 1):
        ops = {
            "B": lambda: nn.BatchNorm2d(c_out),
            "R": lambda: nn.ReLU(),
            "D": lambda: Dropout(dropout),
        }
        unknown = set(post) - set(ops)
        if unknown:
            raise ValueError(f"ConvBlock post-ops {post!r}: unknown letter(s) {sorted(unknown)}; use B, R, D")
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=bias, groups=groups),
            *(ops[letter]() for letter in post),
        )


class LogSoftmaxHead(nn.Module):
    """(N, 10, 1, 1) -> (N, 10) log-probabilities; fails loudly if the map is not 1x1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"expected a 1x1 map before the classifier, got {tuple(x.shape)}")
        return torch.log_softmax(x.flatten(1), dim=1)


def basic_setup(dropout: float) -> nn.Sequential:
    def conv(c_in, c_out, post="R", padding=1):
        return ConvBlock(c_in, c_out, 3, post, padding=padding, bias=True)

    return nn.Sequential(
        conv(1, 32), conv(32, 64), nn.MaxPool2d(2, 2),             # 28 -> 14
        conv(64, 128), conv(128, 256), nn.MaxPool2d(2, 2),         # 14 -> 7
        conv(256, 512, padding=0), conv(512, 1024, padding=0),     # 7 -> 3
        conv(1024, 10, post="", padding=0),                        # 3 -> 1
        LogSoftmaxHead(),
    )


def skeleton(dropout: float) -> nn.Sequential:
    return nn.Sequential(
        ConvBlock(1, 8, post="R"), ConvBlock(8, 16, post="R"),     # 28 -> 24
        nn.MaxPool2d(2, 2), ConvBlock(16, 8, 1, "R"),              # transition: 12
        ConvBlock(8, 10, post="R"), ConvBlock(10, 10, post="R"),   # 12 -> 8
        ConvBlock(10, 16, post="R"), ConvBlock(16, 10, 1),         # 8 -> 6
        nn.AvgPool2d(6), LogSoftmaxHead(),
    )


def _bn_body(post: str, dropout: float) -> list[nn.Module]:
    """batch_norm / dropout: BN (and Dropout) after every conv, the last one included."""
    def conv(c_in, c_out, kernel=3):
        return ConvBlock(c_in, c_out, kernel, post, dropout=dropout)

    return [
        conv(1, 8), conv(8, 16), nn.MaxPool2d(2, 2), conv(16, 8, 1),
        conv(8, 10), conv(10, 16), conv(16, 10),
        nn.AvgPool2d(6), LogSoftmaxHead(),
    ]


def batch_norm(dropout: float) -> nn.Sequential:
    return nn.Sequential(*_bn_body("BR", dropout))


def dropout(dropout: float) -> nn.Sequential:
    return nn.Sequential(*_bn_body("BDR", dropout))


def fc_after_gap(dropout: float) -> nn.Sequential:
    def conv(c_in, c_out, kernel=3):
        return ConvBlock(c_in, c_out, kernel, "BRD", dropout=dropout)

    return nn.Sequential(
        conv(1, 8), conv(8, 16), nn.MaxPool2d(2, 2), conv(16, 8, 1),
        conv(8, 10), conv(10, 16), conv(16, 16),
        nn.AvgPool2d(6),
        ConvBlock(16, 10, 1),                                      # the "FC" after GAP
        LogSoftmaxHead(),
    )


def lr_scheduler(dropout: float) -> nn.Sequential:
    def conv(c_in, c_out, kernel=3):
        return ConvBlock(c_in, c_out, kernel, "RBD", dropout=dropout)

    return nn.Sequential(
        conv(1, 8), conv(8, 16), nn.MaxPool2d(2, 2),
        ConvBlock(16, 8, 1),                                       # bare transition 1x1
        conv(8, 10), conv(10, 16), conv(16, 18),
        nn.AvgPool2d(6),
        conv(18, 16, 1), ConvBlock(16, 10, 1),                     # two "FC" layers after GAP
        LogSoftmaxHead(),
    )


# Two convs before the pool, three to five after it: each shrinks the 12x12 pooled map by 2.
MIN_CONVS, MAX_CONVS = 5, 7


def _convs_pool_convs_gap_fc(family: str, widths: tuple[int, ...], first, further) -> nn.Sequential:
    """The layout compact and separable share: two convs, max-pool, three to five convs,
    GAP, one 1x1 "FC". ``first(c_in, c_out)`` builds the first conv and ``further`` each
    later one, as lists of top-level blocks (the layer table gives each block a row)."""
    if not MIN_CONVS <= len(widths) <= MAX_CONVS:
        raise ValueError(f"{family} widths {widths}: need two convs before the pool and three to five after")
    side = 12 - 2 * len(widths[2:])                               # 28 -> 24, pooled to 12, -2 per conv
    return nn.Sequential(
        *first(1, widths[0]), *further(*widths[:2]), nn.MaxPool2d(2, 2),
        *[block for c_in, c_out in zip(widths[1:], widths[2:]) for block in further(c_in, c_out)],
        nn.AvgPool2d(side), ConvBlock(widths[-1], 10, 1),        # GAP, then the "FC"
        LogSoftmaxHead(),
    )


def compact(widths: tuple[int, ...], dropout: float) -> nn.Sequential:
    """lr_scheduler's layout without its 1x1 transition and second FC: two 3x3 convs,
    max-pool, three to five 3x3 convs, GAP, one 1x1 "FC". With three convs after the
    pool the receptive field is lr_scheduler's (18 px before GAP, then all 28); each
    further one adds 4 px and shrinks the map GAP averages by 2. The 10-class head
    reads the last conv's channels directly, so the parameters go into the convs.
    ``widths`` are the convs' output channels; the name ``c8-8-10-12-14`` spells them."""
    def conv(c_in, c_out):
        return [ConvBlock(c_in, c_out, 3, "RBD", dropout=dropout)]

    return _convs_pool_convs_gap_fc("compact", widths, conv, conv)


def separable(widths: tuple[int, ...], dropout: float) -> nn.Sequential:
    """compact's layout with every 3x3 conv but the first split into a per-channel
    (depthwise) 3x3 and a 1x1 across channels, with no post-op between them (Xception):
    a 3x3 conv from 16 to 32 channels costs 4,608 weights, split 656, so the budget
    buys about twice compact's widths. The name ``s16-16-32-32-32`` spells the widths."""
    def conv(c_in, c_out):
        return [ConvBlock(c_in, c_out, 3, "RBD", dropout=dropout)]

    def split(c_in, c_out):
        return [ConvBlock(c_in, c_in, 3, groups=c_in), ConvBlock(c_in, c_out, 1, "RBD", dropout=dropout)]

    return _convs_pool_convs_gap_fc("separable", widths, conv, split)


NAMED = {
    "basic_setup": basic_setup,
    "skeleton": skeleton,
    "batch_norm": batch_norm,
    "dropout": dropout,
    "fc_after_gap": fc_after_gap,
    "lr_scheduler": lr_scheduler,
}
# A family model's name: the family's letter, then each conv's output channels.
FAMILIES = {"c": compact, "s": separable}
FAMILY_NAME = re.compile(r"([a-z])([1-9][0-9]*(?:-[1-9][0-9]*)*)")


def unbuildable(name: str) -> str | None:
    """None if ``name`` is a model build_model can build, else the one-line reason it is not."""
    if name in NAMED:
        return None
    match = FAMILY_NAME.fullmatch(name)
    if not match or match[1] not in FAMILIES:
        return (f"unknown model {name!r}; choose one of {', '.join(NAMED)}, or a family model: "
                f"{' or '.join(f'{letter}<widths> ({family.__name__})' for letter, family in FAMILIES.items())} "
                "with five to seven conv widths, such as c8-8-12-12-16")
    convs = len(match[2].split("-"))
    if not MIN_CONVS <= convs <= MAX_CONVS:
        return (f"model {name!r}: {convs} conv widths; {FAMILIES[match[1]].__name__} takes {MIN_CONVS} to "
                f"{MAX_CONVS} (two before the pool, three to five after)")
    return None


class Models(Mapping):
    """Model name -> builder(dropout): the named architectures (what iterating lists) and
    every well-formed family name (``c8-8-12-12-16``), parsed when looked up."""

    def __getitem__(self, name: str):
        problem = unbuildable(name)
        if problem:
            raise KeyError(problem)
        if name in NAMED:
            return NAMED[name]
        widths = tuple(int(w) for w in name[1:].split("-"))
        return functools.partial(FAMILIES[name[0]], widths)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and unbuildable(name) is None

    def __iter__(self):
        return iter(NAMED)

    def __len__(self) -> int:
        return len(NAMED)


MODELS = Models()


def build_model(name: str, dropout: float = 0.0) -> nn.Sequential:
    problem = unbuildable(name)
    if problem:
        raise ValueError(problem)
    return MODELS[name](dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
