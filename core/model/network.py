"""The classifier's architecture: a compact residual CNN trained from scratch on greyscale slices.

It uses only built-in Keras layers, so the saved `.keras` file loads on any Keras 3 backend.
The network ends in logits (no softmax): calibration divides them by the card's temperature.
"""

from __future__ import annotations

import keras
from keras import layers

from core.classes import CLASS_NAMES

FEATURES_LAYER = "features"  # pooled penultimate features, used by the out-of-distribution gate
LAST_CONV_LAYER = "last_conv"  # final convolutional activation, used by Grad-CAM
LOGITS_LAYER = "logits"


# Keras' default moving-average momentum (0.99) lags far behind weights that change quickly from
# scratch, which made validation accuracy swing by 30 points between epochs; 0.9 tracks them.
BATCH_NORM_MOMENTUM = 0.9


def _batch_norm(name: str):
    return layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=name)


def _conv_block(x, filters: int, stride: int, name: str):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = _batch_norm(f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = _batch_norm(f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = _batch_norm(f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_model(
    image_size: int,
    width: int = 32,
    stages: tuple[int, ...] = (1, 1, 1, 1),
    dropout: float = 0.3,
    num_classes: int = len(CLASS_NAMES),
) -> keras.Model:
    """Residual CNN: input (image_size, image_size, 1) float32 in [0, 1] -> (num_classes,) logits.

    `width` is the channel count of the first stage; each later stage doubles it and halves the
    resolution. `stages` gives the number of residual blocks per stage.
    """
    inputs = keras.Input(shape=(image_size, image_size, 1), name="scan")
    x = layers.Conv2D(width // 2, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _batch_norm("stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stage_index, block_count in enumerate(stages):
        filters = width * 2**stage_index
        for block_index in range(block_count):
            stride = 2 if block_index == 0 and stage_index > 0 else 1
            x = _conv_block(x, filters, stride, name=f"stage{stage_index + 1}_block{block_index + 1}")
    x = layers.Activation("linear", name=LAST_CONV_LAYER)(x)
    features = layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    x = layers.Dropout(dropout, name="dropout")(features)
    logits = layers.Dense(num_classes, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name="brainscan_cnn")
