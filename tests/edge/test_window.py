import numpy as np
import pytest

from edge.window import FeatureWindow


def test_window_gives_the_last_n_vectors_oldest_first():
    window = FeatureWindow(10, 156)
    for i in range(13):
        window.push(np.full(156, i, np.float32))
    array = window.array()
    assert array.shape == (10, 156) and array.dtype == np.float32
    assert list(array[:, 0]) == list(range(3, 13))
    assert window.full and len(window) == 10


def test_partly_filled_window_pads_the_oldest_rows_with_zeros():
    window = FeatureWindow(4, 2)
    window.push(np.array([1, 1]))
    window.push(np.array([2, 2]))
    assert not window.full
    np.testing.assert_array_equal(window.array()[:, 0], [0, 0, 1, 2])


def test_array_is_a_copy_the_caller_may_keep():
    window = FeatureWindow(2, 1)
    window.push(np.array([1.0]))
    kept = window.array()
    window.push(np.array([2.0]))
    window.push(np.array([3.0]))
    assert kept[-1, 0] == 1.0


def test_clear_empties_the_window():
    window = FeatureWindow(3, 1)
    for i in range(3):
        window.push(np.array([i + 1.0]))
    window.clear()
    assert not window.full and not window.array().any()


def test_window_of_images_for_face_crop_models():
    window = FeatureWindow(10, (48, 48, 1), dtype=np.uint8)
    window.push(np.full((48, 48, 1), 7, np.uint8))
    assert window.array().shape == (10, 48, 48, 1)


def test_window_needs_a_positive_length():
    with pytest.raises(ValueError):
        FeatureWindow(0, 156)
