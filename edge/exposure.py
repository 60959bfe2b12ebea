"""Exposure stage: measure how bright a frame is and, only when it is dark or flat, lift it for MediaPipe.

At night a NoIR camera gives dim, low-contrast grey frames; MediaPipe's detectors were trained on
well-lit photos. A frame whose mean luma is below ``dark_below`` (or whose spread is below
``flat_below``) gets its luminance conditioned before the landmarkers see it: an adaptive gamma
that maps the mean luma to ``target`` and then CLAHE (contrast-limited local equalization) on
luminance only, so colours stay as they were and a grey frame stays grey. Well-lit frames pass
through untouched (and uncopied).

The brightness is measured on a quarter-resolution subsample (about 0.1 ms at 640x480); the
conditioning costs a few milliseconds and only on frames that need it (``benchmarks/pipeline.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Exposure:
    """What the exposure stage saw in a frame: luma statistics (0-255) before any conditioning."""

    brightness: float  # mean luma
    contrast: float  # standard deviation of luma
    grey: bool  # the three channels are (nearly) equal: a mono or IR frame
    conditioned: bool  # the frame given to the landmarkers was lifted


def measure(image: np.ndarray, step: int = 4) -> tuple[float, float, bool]:
    """Mean and spread of luma and whether the frame is grey, from every ``step``-th pixel (pure)."""
    sample = image[::step, ::step].astype(np.float32)
    luma = sample @ np.array([0.299, 0.587, 0.114], np.float32)
    spread = float(np.abs(sample[..., 0] - sample[..., 1]).mean() + np.abs(sample[..., 1] - sample[..., 2]).mean())
    return float(luma.mean()), float(luma.std()), spread < 2.0


def gamma_lut(mean: float, target: float) -> np.ndarray:
    """A 256-entry lookup table of the gamma that takes luma ``mean`` to ``target`` (0-255)."""
    mean = min(max(mean, 1.0), 254.0) / 255.0
    gamma = np.log(target / 255.0) / np.log(mean)
    gamma = float(np.clip(gamma, 0.25, 1.0))  # only ever brighten, and not without limit
    return np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)


class ExposureStage:
    """Conditions dark or flat frames before the landmarkers; see the module docstring."""

    def __init__(self, enabled: bool = True, dark_below: float = 70.0, flat_below: float = 20.0, target: float = 110.0,
                 clahe_clip: float = 2.0):
        import cv2

        self.enabled = enabled
        self.dark_below, self.flat_below, self.target = dark_below, flat_below, target
        self._clahe = cv2.createCLAHE(clipLimit=clahe_clip, tileGridSize=(8, 8))

    @classmethod
    def from_config(cls, config) -> ExposureStage:
        return cls(config.enabled, config.dark_below, config.flat_below, config.target, config.clahe_clip)

    def needs_lift(self, brightness: float, contrast: float) -> bool:
        return self.enabled and (brightness < self.dark_below or contrast < self.flat_below)

    def process(self, image: np.ndarray) -> tuple[np.ndarray, Exposure]:
        """The image for the landmarkers (the same object when nothing was done) and what was measured."""
        brightness, contrast, is_grey = measure(image)
        if not self.needs_lift(brightness, contrast):
            return image, Exposure(brightness, contrast, is_grey, False)
        return self.lift(image, brightness, is_grey), Exposure(brightness, contrast, is_grey, True)

    def lift(self, image: np.ndarray, brightness: float, is_grey: bool) -> np.ndarray:
        import cv2

        lut = gamma_lut(brightness, self.target) if brightness < self.target else None
        if is_grey:
            luma = image[..., 1]
            luma = cv2.LUT(luma, lut) if lut is not None else luma
            luma = self._clahe.apply(np.ascontiguousarray(luma))
            return cv2.merge([luma, luma, luma])
        ycrcb = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
        luma = ycrcb[..., 0]
        luma = cv2.LUT(luma, lut) if lut is not None else luma
        ycrcb[..., 0] = self._clahe.apply(np.ascontiguousarray(luma))
        return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)
