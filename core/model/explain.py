"""Grad-CAM: which part of a scan pushed the classifier towards a class, as a heat-map.

The heat-map is computed on the model's input tensor (the head crop resized to S x S) from the
activations of the layer named `core.model.LAST_CONV_LAYER` and the gradient of one class's logit
(Selvaraju et al., 2017). With mirror averaging (see `core.model.inference`) the served logit's gradient
reaches both passes, and the mirror's map is flipped back before the two are added.

With the OpenVINO runtime and the project's pooled dense head, the classifier gives the maps
directly (`Classifier.class_activation_maps`: the gradient of such a head is its kernel), so no
TensorFlow is loaded; otherwise a traced TensorFlow gradient function, built once per classifier,
computes them. `overlay` maps the heat-map back into the head's box on the original picture, the
same box `core.scans.preprocess.prepare_image` cropped, so the colours sit on the anatomy they explain;
it is upsampled smoothly at the picture's own resolution and fades out before the box's edge.
"""

from __future__ import annotations

import threading
import weakref

import cv2
import numpy as np

from core.scans.preprocess import content_box

# One compiled gradient function per loaded classifier, dropped with the classifier.
_gradient_functions: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()
_build_lock = threading.Lock()


def gradcam(classifier, tensor: np.ndarray, class_index: int | None = None,
            class_maps: np.ndarray | None = None) -> np.ndarray:
    """Prepared tensor (S, S, 1) float32 -> Grad-CAM heat-map (S, S) float32 in [0, 1].

    `class_index` indexes `classifier.classes`; None explains the predicted class. A map of zeros
    means no region of the last convolutional layer argues for the class. `class_maps` (h, w, C),
    the maps the inference of this tensor already gave (`ScanResult.class_maps`), saves a second
    forward pass; with them `class_index` must be given.
    """
    size = classifier.image_size
    tensor = np.asarray(tensor, dtype=np.float32)
    if tensor.shape != (size, size, 1):
        raise ValueError(f"expected a ({size}, {size}, 1) tensor, got {tensor.shape}")
    if class_index is not None and not 0 <= int(class_index) < len(classifier.classes):
        raise ValueError(f"class_index must be in 0..{len(classifier.classes) - 1}, got {class_index}")
    if class_maps is not None and class_index is None:
        raise ValueError("class_maps need the class_index they are read for")
    direct = (None, np.asarray(class_maps)) if class_maps is not None else classifier.class_activation_maps(tensor)
    if direct is not None:
        logits, maps = direct
        chosen = int(np.argmax(logits)) if class_index is None else int(class_index)
        cam = np.maximum(maps[:, :, chosen], 0.0).astype(np.float32)
        # INTER_LINEAR samples at pixel centres, as tf.image.resize's bilinear does in the gradient path.
        cam = cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR)
        peak = float(cam.max())
        return cam / peak if peak > 0.0 else np.zeros_like(cam)
    import tensorflow as tf

    function = _gradient_function(classifier)
    heatmap = function(tensor[np.newaxis], tf.constant(-1 if class_index is None else int(class_index), tf.int32))
    return heatmap.numpy()


def warm_up(classifier) -> None:
    """Make the first `gradcam` as fast as the next: trace the gradient function if one is needed."""
    size = classifier.image_size
    if classifier.class_activation_maps(np.zeros((size, size, 1), np.float32)) is None:
        _gradient_function(classifier)  # Loads TensorFlow and traces: seconds, once per classifier.


# A heat-map whose values span less than this (after Grad-CAM's peak scaling) points nowhere in particular: it is
# shown as no heat, not as one colour over the whole head.
FLAT_SPAN = 0.05
# The heat-map's smoothing (a Gaussian of this fraction of the head box's longer side) and its fade to nothing
# over this fraction of the box at each edge, so neither the model's coarse grid nor the box's edge shows.
SMOOTHING, FADE = 1 / 40, 0.06


def heat_is_flat(heatmap: np.ndarray) -> bool:
    """True when a heat-map (S, S) in [0, 1] singles out no region: its values span less than `FLAT_SPAN`."""
    values = np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0.0, 1.0)
    return float(values.max() - values.min()) < FLAT_SPAN


def _fade(length: int) -> np.ndarray:
    """Weights (length,) rising smoothly from 0 at both ends to 1 inside a `FADE` margin."""
    margin = max(1.0, FADE * length)
    distance = np.minimum(np.arange(length) + 0.5, length - 0.5 - np.arange(length)) / margin
    ramp = np.clip(distance, 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)  # smoothstep


def heat_over(shape: tuple[int, int], heatmap: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Heat-map (S, S) -> float32 (H, W) weights in [0, 1] over a picture's head `box` (top, bottom, left, right).

    The map is rescaled from its lowest to its highest value (as Grad-CAM implementations show it),
    upsampled bicubically to the box at the picture's own resolution, smoothed and faded out
    towards the box's edges; zero outside the box, and zero everywhere for a flat map.
    """
    height, width = shape
    top, bottom, left, right = box
    heat = np.zeros((height, width), np.float32)
    values = np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0.0, 1.0)
    if heat_is_flat(values) or bottom <= top or right <= left:
        return heat
    values = (values - values.min()) / (values.max() - values.min())
    stretched = cv2.resize(values, (right - left, bottom - top), interpolation=cv2.INTER_CUBIC)
    sigma = max(0.5, SMOOTHING * max(right - left, bottom - top))
    stretched = cv2.GaussianBlur(stretched, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    stretched = np.clip(stretched, 0.0, 1.0) * _fade(bottom - top)[:, np.newaxis] * _fade(right - left)[np.newaxis]
    heat[top:bottom, left:right] = stretched
    return heat


def overlay(picture: np.ndarray, heatmap: np.ndarray, opacity: float = 0.45,
            box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Greyscale (H, W) or RGB (H, W, 3) uint8 picture + heat-map (S, S) in [0, 1] -> RGB uint8 (H, W, 3) picture.

    The heat-map is laid over the head's box (`box`, else `content_box` of the picture's grey, as in
    preprocessing) by `heat_over`, coloured with the jet map and blended with a per-pixel weight of
    `opacity * heat`, so regions with no heat keep the picture as it is, in its own colours.
    """
    if picture.dtype != np.uint8 or not (picture.ndim == 2 or (picture.ndim == 3 and picture.shape[2] == 3)):
        raise ValueError(f"overlay needs a 2-D or RGB uint8 picture, got {picture.dtype} {picture.shape}")
    if heatmap.ndim != 2:
        raise ValueError(f"overlay needs a 2-D heat-map, got shape {heatmap.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    rgb = np.repeat(picture[:, :, np.newaxis], 3, axis=2) if picture.ndim == 2 else picture
    if box is None:
        box = content_box(picture if picture.ndim == 2 else cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY))
    heat = heat_over(picture.shape[:2], heatmap, box)
    colours = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    weight = (opacity * heat)[:, :, np.newaxis]
    blended = rgb.astype(np.float32) * (1.0 - weight) + colours.astype(np.float32) * weight
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _gradient_function(classifier):
    function = _gradient_functions.get(classifier)
    if function is None:
        with _build_lock:
            function = _gradient_functions.get(classifier)
            if function is None:
                function = _build_gradient_function(classifier)
                _gradient_functions[classifier] = function
    return function


def _build_gradient_function(classifier):
    """A traced function (1, S, S, 1) images, class index (-1: predicted) -> (S, S) heat-map."""
    import keras
    import tensorflow as tf

    from core.model.network import LAST_CONV_LAYER  # imports Keras, so only here

    model = classifier.model
    size = classifier.image_size
    probe = keras.Model(model.inputs[0], [model.get_layer(LAST_CONV_LAYER).output, model.outputs[0]])

    mirror = classifier.mirror

    def heatmap(images, class_index):
        with tf.GradientTape() as tape:
            # Watching the input records the whole forward pass, even for a model whose
            # weights were frozen (variables are only watched when trainable).
            tape.watch(images)
            batch = tf.concat([images, tf.reverse(images, axis=[2])], axis=0) if mirror else images
            activations, logits = probe(batch, training=False)
            served = tf.reduce_mean(logits, axis=0)  # with mirror averaging, the mean of both passes
            predicted = tf.argmax(served, output_type=tf.int32)
            chosen = tf.where(class_index >= 0, class_index, predicted)
            score = tf.gather(served, chosen)
        gradients = tape.gradient(score, activations)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)  # (P, 1, 1, K): one weight per channel
        weighted = tf.reduce_sum(activations * weights, axis=-1, keepdims=True)  # (P, h, w, 1), P passes
        if mirror:
            # The mirror pass's map, flipped back, adds to the slice's: both feed the served logit.
            weighted = weighted[0:1] + tf.reverse(weighted[1:2], axis=[2])
        cam = tf.nn.relu(weighted)
        cam = tf.image.resize(cam, (size, size), method="bilinear")[0, :, :, 0]
        peak = tf.reduce_max(cam)
        return tf.where(peak > 0.0, cam / tf.maximum(peak, 1e-12), tf.zeros_like(cam))

    signature = [tf.TensorSpec([1, size, size, 1], tf.float32), tf.TensorSpec([], tf.int32)]
    function = tf.function(heatmap, input_signature=signature, autograph=False).get_concrete_function()
    function(tf.zeros([1, size, size, 1]), tf.constant(-1, tf.int32))  # Trace and allocate once, here.
    return function
