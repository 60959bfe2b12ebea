"""The exposure stage: dark frames lifted for MediaPipe, well-lit ones untouched."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge import paths
from edge.exposure import ExposureStage, gamma_lut, measure
from edge.landmarks import LandmarkExtractor
from edge.records import Frame


@pytest.fixture(scope="module")
def demo_frame():
    capture = cv2.VideoCapture(str(paths.data_file("demo.mp4")))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    return np.ascontiguousarray(bgr[:, :, ::-1])


def night(image, gain, sigma, seed=0):
    """What a NoIR camera gives in a dim room: grey, dark, noisy."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) * gain
    grey += np.random.default_rng(seed).normal(0, sigma, grey.shape)
    return np.dstack([np.clip(grey, 0, 255).astype(np.uint8)] * 3)


def test_a_well_lit_frame_passes_through_untouched(demo_frame):
    image, exposure = ExposureStage().process(demo_frame)
    assert image is demo_frame and not exposure.conditioned and not exposure.grey
    assert 90 < exposure.brightness < 200


def test_a_dark_grey_frame_is_lifted_and_stays_grey(demo_frame):
    dark = night(demo_frame, 0.25, 3.0)
    image, exposure = ExposureStage().process(dark)
    assert exposure.conditioned and exposure.grey and exposure.brightness < 40
    assert measure(image)[0] > 2 * exposure.brightness
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_gamma_only_brightens_and_keeps_black_and_white():
    lut = gamma_lut(20.0, 110.0)
    assert lut[0] == 0 and lut[255] == 255 and (np.diff(lut.astype(int)) >= 0).all()
    assert lut[20] > 60
    assert (gamma_lut(200.0, 110.0) == np.arange(256)).all()  # never darkens


def test_lifting_a_dim_night_frame_lets_the_pose_landmarker_find_the_body(demo_frame):
    """Measured on the demo clip at half light, grey and noisy: MediaPipe's pose finds no body until lifted."""
    dim = night(demo_frame, 0.5, 2.0)
    lifted, _ = ExposureStage().process(dim)
    found = {}
    for name, image in (("dim", dim), ("lifted", lifted)):
        with LandmarkExtractor(mode="video") as extractor:
            results = [extractor.extract(Frame(image, i / 15, i)) for i in range(5)]
        found[name] = (results[-1].has_face, results[-1].has_pose)
    assert found["lifted"] == (True, True)
    assert found["dim"] == (True, False)
