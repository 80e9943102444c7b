"""Layer table of a model, read from the model itself: shapes, jumps, receptive fields, parameters.

The standard recurrence, per spatial layer with kernel k, stride s, padding p::

    n_out = floor((n_in + 2p - k) / s) + 1     # feature-map side
    j_out = j_in * s                           # input pixels between adjacent outputs
    r_out = r_in + (k - 1) * j_in              # receptive field side

starting from the input image (n = 28, j = 1, r = 1). A 1x1 convolution leaves
r unchanged, which the published README's table gets wrong. Output shapes come
from a real forward pass and must agree with the recurrence, so a model that
the recurrence misdescribes fails loudly instead of printing a wrong table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

INPUT_SIDE = 28
INPUT_CHANNELS = 1

POST_OP_NAMES = {nn.BatchNorm2d: "BN", nn.SyncBatchNorm: "BN", nn.ReLU: "ReLU", nn.Dropout: "Dropout"}


@dataclass(frozen=True)
class LayerRow:
    layer: str
    c_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int
    n_in: int
    n_out: int
    j_in: int
    j_out: int
    r_in: int
    r_out: int
    output_shape: tuple  # (channels, height, width), measured by a forward pass
    params: int


def _square(value, what: str) -> int:
    """Conv/pool hyper-parameters may be ints or pairs; the recurrence here is for square ones."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f"{what}={tuple(value)}: only square kernels, strides and paddings are supported")
        value = value[0]
    if isinstance(value, str):
        raise ValueError(f"{what}={value!r}: string paddings are not supported; use an integer")
    return int(value)


def _post_op_name(module: nn.Module) -> str:
    for cls, name in POST_OP_NAMES.items():
        if isinstance(module, cls):
            return name
    return type(module).__name__


def _spatial_op(module: nn.Module):
    """(description, kernel, stride, padding, dilation) for a layer that changes the grid, else None."""
    conv, post = module, []
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], nn.Conv2d):
        conv, post = module[0], [_post_op_name(m) for m in list(module)[1:]]  # a conv block
    if isinstance(conv, nn.Conv2d):
        k = _square(conv.kernel_size, "kernel_size")
        desc = (f"Conv2d {k}x{k}" + (" depthwise" if conv.groups > 1 and conv.groups == conv.in_channels else "")
                + (" + " + ", ".join(post) if post else ""))
        return desc, k, _square(conv.stride, "stride"), _square(conv.padding, "padding"), _square(conv.dilation, "dilation")
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        if getattr(module, "ceil_mode", False):
            raise ValueError(f"{module}: ceil_mode=True is not supported by the floor recurrence")
        k = _square(module.kernel_size, "kernel_size")
        stride = _square(module.stride if module.stride is not None else module.kernel_size, "stride")
        kind = "MaxPool2d" if isinstance(module, nn.MaxPool2d) else "AvgPool2d"
        dilation = _square(getattr(module, "dilation", 1), "dilation")
        return f"{kind} {k}x{k}, stride {stride}", k, stride, _square(module.padding, "padding"), dilation
    return None


def layer_table(model: nn.Sequential, input_side: int = INPUT_SIDE,
                input_channels: int = INPUT_CHANNELS) -> list[LayerRow]:
    """One row per conv block, bare conv or pooling layer of a top-level nn.Sequential.

    A conv block's parameters include its BatchNorm; a top-level module that has
    parameters but is no spatial layer is an error, so the column always sums to
    the model's parameter count.
    """
    ops = []
    for index, module in enumerate(model):
        op = _spatial_op(module)
        if op is None:
            if any(True for _ in module.parameters()):
                raise ValueError(f"layer {index} ({type(module).__name__}) has parameters but is not a conv or "
                                 "pooling layer; the layer table cannot account for it")
            continue
        ops.append((module, op))

    shapes = {}
    hooks = [module.register_forward_hook(lambda m, args, out, key=id(module): shapes.__setitem__(key, out.shape))
             for module, _ in ops]
    was_training = model.training
    try:
        model.eval()  # BatchNorm with a batch of 1 would otherwise refuse 1x1 maps
        with torch.no_grad():
            model(torch.zeros(1, input_channels, input_side, input_side))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

    rows, n, j, r, channels = [], input_side, 1, 1, input_channels
    for module, (desc, k, s, p, d) in ops:
        effective_k = d * (k - 1) + 1
        n_out = (n + 2 * p - effective_k) // s + 1
        j_out, r_out = j * s, r + (effective_k - 1) * j
        shape = tuple(shapes[id(module)][1:])
        if shape[1:] != (n_out, n_out):
            raise RuntimeError(f"{desc}: the recurrence gives {n_out}x{n_out} but the forward pass gave "
                               f"{shape[1]}x{shape[2]}")
        c_out = shape[0]
        rows.append(LayerRow(layer=desc, c_in=channels, c_out=c_out, kernel=k, stride=s, padding=p,
                             n_in=n, n_out=n_out, j_in=j, j_out=j_out, r_in=r, r_out=r_out,
                             output_shape=shape, params=sum(q.numel() for q in module.parameters())))
        n, j, r, channels = n_out, j_out, r_out, c_out
    return rows
