"""The weight-free ControlNet preprocessors and the fitting of a map to the output, checked against
OpenCV itself and against what each one is defined to do."""

import cv2
import numpy as np
import pytest
from PIL import Image

from t2i.sampling.control_maps import control_map, detect, fit_map
from t2i.sampling.control_modules import PREPROCESSORS, pixel_perfect_resolution, resolve_module, resolve_resize_mode
from t2i.shapes.world import Shape, control_image, make_image


@pytest.fixture
def shapes_picture():
    """Two shapes on 64x64 (a multiple of 64: no padding, no resizing at processor resolution 64)."""
    picture = make_image(Shape("red", "circle", 20, 4, 6), 64)
    picture.paste(make_image(Shape("blue", "triangle", 22, 0, 0), 24).crop((0, 0, 24, 24)), (36, 34))
    return picture


@pytest.mark.parametrize("low, high", [(100, 200), (30, 60), (150, 250)])
def test_canny_is_opencv_canny_on_the_same_thresholds(shapes_picture, low, high):
    ours = np.asarray(detect(shapes_picture, "canny", 64, low, high))
    theirs = cv2.Canny(np.asarray(shapes_picture), low, high)
    assert np.array_equal(ours[..., 0], theirs) and np.array_equal(ours[..., 1], theirs)
    assert 0.02 < (theirs > 0).mean() < 0.3  # edges were found, not everything


def test_canny_at_a_processor_resolution_marks_the_outline_once_fitted(shapes_picture):
    edges = np.asarray(control_map(shapes_picture, "canny", (64, 64), "Crop and Resize", processor_res=256))
    mask = np.asarray(control_image(Shape("red", "circle", 20, 4, 6), "mask", 64))[..., 0] > 127
    ring = (cv2.dilate(mask.astype(np.uint8), np.ones((3, 3))) - cv2.erode(mask.astype(np.uint8), np.ones((3, 3))))
    found = edges[..., 0][:32, :32] > 127
    # found at 4x and brought back thin: a line along the ring, covering a good part of it, nothing elsewhere
    assert found[ring[:32, :32] == 0].sum() == 0
    assert found[ring[:32, :32] > 0].mean() > 0.3


def test_threshold_invert_blur_tile_and_none(shapes_picture):
    pixels = np.asarray(shapes_picture)
    assert np.array_equal(np.asarray(detect(shapes_picture, "none")), pixels)
    assert np.array_equal(np.asarray(detect(shapes_picture, "invert")), 255 - pixels)
    assert np.array_equal(np.asarray(detect(shapes_picture, "threshold", 64, 127)), (pixels > 127) * 255)
    assert np.array_equal(np.asarray(detect(shapes_picture, "threshold", 64, 230)), (pixels > 230) * 255)
    blurred = np.asarray(detect(shapes_picture, "blur_gaussian", 64, 3.0)).astype(float)
    assert blurred.std() < pixels.std() and abs(blurred.mean() - pixels.mean()) < 2
    assert detect(shapes_picture, "tile_resample", threshold_a=4.0).size == (16, 16)
    assert detect(shapes_picture, "tile_resample", threshold_a=1.0).size == (64, 64)


def test_xdog_marks_the_outlines_not_the_flat_areas(shapes_picture):
    lines = np.asarray(detect(shapes_picture, "scribble_xdog", 64))[..., 0] > 127
    mask = np.asarray(control_image(Shape("red", "circle", 20, 4, 6), "mask", 64))[..., 0] > 127
    inside = cv2.erode(mask.astype(np.uint8), np.ones((7, 7))) > 0
    background = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9)))[:32, :32] == 0
    assert lines[:32, :32][inside[:32, :32]].mean() < 0.05 and lines[:32, :32][background].mean() < 0.05
    assert lines[:32, :32].sum() > 20


@pytest.mark.parametrize("mode, shape_check", [
    ("Just Resize", lambda m: m[:, :, 0].mean() > 0),
    # the wide map covers the frame: the middle part is kept (white band in the centre stays)
    ("Crop and Resize", lambda m: m[:, 16, 0].min() == 255 and m[:, 0, 0].max() == 0),
    # the wide map fits inside: the bands above and below get its border's median colour (black)
    ("Resize and Fill", lambda m: m[0, :, 0].max() == 0 and m[:, 16, 0].max() == 255),
])
def test_fitting_modes(mode, shape_check):
    wide = np.zeros((20, 80, 3), dtype=np.uint8)
    wide[:, 36:44] = 255  # a white band in the middle
    fitted = fit_map(wide, (32, 32), resolve_resize_mode(mode))
    assert fitted.shape == (32, 32, 3)
    assert shape_check(fitted)


def test_black_and_white_maps_stay_black_and_white():
    mask = np.asarray(control_image(Shape("red", "circle", 20, 4, 6), "mask", 32))
    for size in ((64, 64), (20, 20), (48, 24)):
        fitted = fit_map(mask, size, "Just Resize")
        assert set(np.unique(fitted)) <= {0, 255}


def test_pixel_perfect_resolution_as_a1111():
    assert pixel_perfect_resolution((1024, 768), (512, 512), "Crop and Resize") == 512  # max(512/768, 0.5) * 768
    assert pixel_perfect_resolution((1024, 768), (512, 512), "Resize and Fill") == 384  # min(...) * 768
    assert pixel_perfect_resolution((32, 32), (64, 64), "Just Resize") == 64


def test_names_and_aliases():
    assert resolve_module("invert (from white bg & black line)") == "invert"
    assert resolve_resize_mode("Inner Fit (Scale to Fit)") == "Crop and Resize"
    assert resolve_resize_mode("Envelope (Outer Fit)") == "Resize and Fill"
    assert set(PREPROCESSORS) >= {"none", "canny", "invert", "threshold", "blur_gaussian", "scribble_xdog",
                                  "tile_resample"}


def test_the_shapes_worlds_control_images():
    spec = Shape("green", "square", 12, 5, 9)
    mask = np.asarray(control_image(spec, "mask"))[..., 0]
    assert mask.sum() // 255 == 144 and mask[9, 5] == 255 and mask[8, 5] == 0
    edges = np.asarray(control_image(spec, "edges"))[..., 0]
    assert edges[9:21, 5:17].sum() > 0 and edges[12:18, 8:14].sum() == 0  # an outline, hollow inside
    assert isinstance(control_image(spec, "mask"), Image.Image)
