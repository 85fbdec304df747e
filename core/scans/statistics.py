"""Cheap, model-free measurements of a greyscale image, the evidence of the pipeline's screening checks.

They need no model: `core.pipeline.screen` compares them with limits measured on training MRI,
and `core.training.gate_evaluation` reports their percentiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.scans.levels import level_counts, levels_median, levels_percentile


@dataclass(frozen=True)
class ImageStatistics:
    """Cheap, model-free measurements of a greyscale image that separate MRI slices from most other pictures.

    `border_brightness`: median of the outer ring (4% of the short side) relative to the image's
    99th-percentile level; MRI slices sit on a dark background, so it is near 0.
    `dark_fraction`: share of pixels at background level.
    `largest_share`: share of the bright (foreground) pixels that belong to the largest connected
    region; a head is one region, text or a star field is many.
    `solidity`: area of that region over the area of its convex hull; a head is nearly convex, a
    hand or a drawing of lines is not.
    `extent`: area of that region over its bounding box; an ellipse fills about 0.79 of its box,
    a fan-shaped ultrasound sector or a cross much less.
    `inner_variation`: standard deviation over mean of the grey levels inside that region; brain
    tissue varies moderately, a star field or a mostly-dark frame enormously.
    `aspect_ratio`: long side over short side (>= 1).
    `contrast`: standard deviation of the grey levels.

    The rest describe the head (that region with its holes filled) the way CT and MRI differ
    physically. In CT bone is the brightest tissue, so a bright ring surrounds the head, and brain
    tissue is a narrow, flat band of grey; in MRI the skull is dark and the brain's grey levels spread.
    `rim_bright_share`: share of the head's outer band (its outer tenth, by distance from the edge)
    made of pixels at least 90% as bright as the head's 99th percentile.
    `bright_share`: share of the whole head made of such pixels.
    `rim_share_of_bright`: share of those bright pixels that lie in the outer band.
    `tissue_level`, `tissue_spread`: median and interquartile range of the inner head (deeper than
    a fifth of the way in), over the head's 99th percentile; they do not depend on the skull, so
    they describe brain-only crops too.
    `tissue_flatness`: share of the inner head within 5% of the head's 99th percentile of its median.
    `saturated_share`: share of the head at the image's top grey level (a clipped window).
    `entropy`: entropy of the head's 64-bin histogram over log2(64), in [0, 1].
    """

    border_brightness: float
    dark_fraction: float
    largest_share: float
    solidity: float
    extent: float
    inner_variation: float
    aspect_ratio: float
    contrast: float
    rim_bright_share: float = 0.0
    bright_share: float = 0.0
    rim_share_of_bright: float = 0.0
    tissue_level: float = 0.0
    tissue_spread: float = 0.0
    tissue_flatness: float = 0.0
    saturated_share: float = 0.0
    entropy: float = 0.0


# Pixels at or under this fraction of the 99th-percentile level count as background, as in
# core.scans.preprocess.content_box.
_BACKGROUND_FRACTION = 0.12
_BORDER_FRACTION = 0.04
_ANALYSIS_SIDE = 256  # statistics are measured on a copy no larger than this, for speed
_RIM_DEPTH = 0.1  # the head's outer band: the outer tenth of the largest distance from its edge
_TISSUE_DEPTH = 0.2  # the inner head, where brain tissue is: deeper than a fifth of that distance
_BRIGHT_FRACTION = 0.9  # "bone-bright": at least this fraction of the head's 99th percentile


def image_statistics(grey: np.ndarray) -> ImageStatistics:
    """Measure a 2-D uint8 greyscale image (any size); see `ImageStatistics`."""
    import cv2

    height, width = grey.shape
    contrast = float(grey.std())
    scale = _ANALYSIS_SIDE / max(height, width)
    small = grey if scale >= 1 else cv2.resize(
        grey, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    values = small.astype(np.float32)
    bright_level = float(levels_percentile(small, 99, np.float32))
    background = max(8.0, _BACKGROUND_FRACTION * bright_level)
    ring = max(2, round(_BORDER_FRACTION * min(small.shape)))
    border = np.concatenate([small[:ring].ravel(), small[-ring:].ravel(),
                             small[:, :ring].ravel(), small[:, -ring:].ravel()])
    border_brightness = float(levels_median(border, np.float32)) / max(bright_level, 1.0)
    dark_fraction = float((values <= background).mean())
    blurred = cv2.GaussianBlur(small, (5, 5), 0)
    mask = (blurred > max(8.0, _BACKGROUND_FRACTION * float(levels_percentile(blurred, 99)))).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    largest_share = solidity = extent = inner_variation = 0.0
    tissue = (0.0,) * 8
    if count > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        largest = 1 + int(np.argmax(areas))
        largest_share = float(areas.max() / areas.sum())
        region = (labels == largest).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea)
        area = float(cv2.contourArea(outline))
        solidity = area / max(float(cv2.contourArea(cv2.convexHull(outline))), 1.0)
        extent = area / max(float(stats[largest, cv2.CC_STAT_WIDTH] * stats[largest, cv2.CC_STAT_HEIGHT]), 1.0)
        inside = values[region.astype(bool)]
        inner_variation = float(inside.std() / max(float(inside.mean()), 1.0))
        filled = np.zeros_like(region)
        cv2.drawContours(filled, [outline], -1, 1, -1)
        tissue = _tissue_statistics(small, filled)
    return ImageStatistics(border_brightness, dark_fraction, largest_share, solidity, extent, inner_variation,
                           max(height, width) / min(height, width), contrast, *tissue)


def _tissue_statistics(small: np.ndarray, head: np.ndarray) -> tuple[float, ...]:
    """The head's CT-versus-MRI measurements (see `ImageStatistics`), for a uint8 image and a 0/1 head mask."""
    import cv2

    depth = cv2.distanceTransform(head, cv2.DIST_L2, 5)
    deepest = float(depth.max())
    in_head = head.astype(bool)
    head_levels = small[in_head]
    values = head_levels.astype(np.float32)
    if deepest < 2.0 or values.size < 16:
        return (0.0,) * 8
    level = max(float(levels_percentile(head_levels, 99, np.float32)), 1.0)
    inside = depth > 0
    bright = (small.astype(np.float32) >= _BRIGHT_FRACTION * level) & inside
    rim = inside & (depth <= _RIM_DEPTH * deepest)
    core = depth > _TISSUE_DEPTH * deepest
    rim_bright_share = float(bright[rim].mean()) if rim.any() else 0.0
    bright_share = float(bright[inside].mean())
    rim_share_of_bright = float((bright & rim).sum() / max(int(bright.sum()), 1))
    inner_levels = small[core] if core.any() else head_levels
    inner = inner_levels.astype(np.float32)
    low, median, high = levels_percentile(inner_levels, [25, 50, 75], np.float32)
    flatness = float((np.abs(inner - median) <= 0.05 * level).mean())
    saturated_share = float((values >= float(small.max())).mean())
    histogram = level_counts(head_levels, 64) / values.size  # 64 bins of 4 grey levels
    nonzero = histogram[histogram > 0]
    entropy = float(-(nonzero * np.log2(nonzero)).sum() / 6.0)
    return (rim_bright_share, bright_share, rim_share_of_bright, float(median) / level, float(high - low) / level,
            flatness, saturated_share, entropy)
