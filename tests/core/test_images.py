import warnings

import numpy as np
import pytest

from napari_samtune.core import images, intensity
from napari_samtune.core.images import parse_channels, plane_channel_axis, to_sam_rgb
from napari_samtune.core.intensity import HIGH_PERCENTILE, LOW_PERCENTILE, rescale_to_uint8


def test_uint8_grayscale_is_repeated_unchanged(rng):
    image = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    rgb = to_sam_rgb(image)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], image)


def test_uint16_uses_the_full_8bit_range_and_keeps_order(rng):
    image = rng.integers(1000, 5000, size=(64, 64)).astype(np.uint16)
    rgb = to_sam_rgb(image)[..., 0]
    assert rgb.min() == 0 and rgb.max() == 255
    flat_in, flat_out = image.ravel(), rgb.ravel().astype(int)
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order]) >= 0)  # monotone mapping


def test_float_outliers_are_clipped_not_stretched():
    image = np.linspace(0, 1, 10000, dtype=np.float32).reshape(100, 100)
    image[0, 0] = 1e6  # one hot pixel must not squash everything to black
    rgb = to_sam_rgb(image)[..., 0]
    assert rgb[50, 50] > 100


def _by_sorting(image: np.ndarray) -> np.ndarray:
    """The documented rule, spelled out with np.percentile (the float path, in float64)."""
    data = image.astype(np.float64)
    low, high = np.percentile(data, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high <= low:  # one value but for a few pixels: by those few
        rest = data[data != low]
        if rest.size:
            rest_low, rest_high = np.percentile(rest, intensity.REST_PERCENTILES)
            low, high = min(low, rest_low), max(high, rest_high)
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    return np.clip(np.rint((data - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [
        (np.uint16, 0, 65536),  # 16-bit camera data
        (np.uint16, 100, 140),  # a narrow range: many ties at the percentiles
        (np.int16, -32768, 32768),  # negative values, shifted without overflow
        (np.int32, -500, 500),
        (np.uint32, 4_000_000_000, 4_000_000_900),  # beyond float32's exact integers
        (np.int8, 0, 3),
        (np.uint16, 7, 8),  # constant
        (np.int32, 0, 1 << 30),  # too wide for a histogram: the sorting path
    ],
)
def test_integer_images_rescale_by_histogram_exactly_as_by_sorting(rng, dtype, low, high):
    """Integer images take an O(pixels) histogram path (4096 x 4096 uint16: 0.13 s instead
    of 3.5 s on this VM), which must give every pixel the same value as np.percentile."""
    for shape in [(1, 1), (3, 7), (97, 131)]:
        image = rng.integers(low, high, size=shape).astype(dtype)
        np.testing.assert_array_equal(rescale_to_uint8(image), _by_sorting(image))
    wide = high - low > intensity.MAX_HISTOGRAM_BINS
    assert (intensity._rescale_integers(image) is None) == wide  # which path was taken
    gamma = np.minimum(rng.gamma(2.0, 300.0, size=(120, 90)), 65535).astype(np.uint16)
    np.testing.assert_array_equal(rescale_to_uint8(gamma), _by_sorting(gamma))
    sparse = np.where(rng.random((120, 90)) < 0.005, gamma, 3).astype(dtype)  # flat but 0.5%
    np.testing.assert_array_equal(rescale_to_uint8(sparse), _by_sorting(sparse))


def test_a_few_hot_pixels_do_not_darken_the_sparse_cells_of_a_flat_background():
    """3 hot pixels scaled the cells of a background-subtracted image (0.12% of it) to 4 of
    255, the image's full range: nothing was found in it, unsaid."""
    image = np.zeros((512, 512), np.uint16)
    image[100:110, 100:110] = 1000
    image[300:310, 200:211] = 1200
    image[400:410, 50:60] = 1100
    image[5, 5] = image[6, 500] = image[500, 7] = 65535
    for pixels in (image, image.astype(np.float32)):  # the histogram and the sorting paths
        scaled = rescale_to_uint8(pixels)
        assert scaled[105, 105] > 200 and scaled[305, 205] == 255
        assert scaled[0, 0] == 0 and scaled[5, 5] == 255


def _ramp(rng) -> np.ndarray:
    """A (48, 64) float64 image of the values 0..255, 12 pixels each, shuffled."""
    return rng.permutation(np.repeat(np.arange(256.0), 12)).reshape(48, 64)


@pytest.mark.parametrize(
    "change",
    [
        lambda ramp: ramp + 1e9,  # float64 far from 0: float32 steps by 64 there
        lambda ramp: ramp.astype(np.int64) * 8192 + 2**40,  # float32 steps by 2**17 there
        lambda ramp: ramp.astype(np.int64) + 2**62,  # float64 steps by 1024 there
        lambda ramp: ramp.astype(np.uint64) * 2 + 2**63,  # beyond int64
        lambda ramp: (ramp + 4_000_000_000).astype(np.uint32),  # the histogram path
        lambda ramp: ramp * 1e-300,  # float32: all 0
        lambda ramp: ramp * 1e300,  # float32: all inf
        lambda ramp: (ramp - 128) * 1e306,  # a range beyond float64's largest number
        lambda ramp: ramp * 1e-310,  # subnormal: 255 / range overflows
    ],
    ids=[
        "float64+1e9",
        "int64*8192+2**40",
        "int64+2**62",
        "uint64+2**63",
        "uint32+4e9",
        "*1e-300",
        "*1e300",
        "float64 range overflows",
        "subnormal",
    ],
)
def test_an_offset_or_extreme_scale_keeps_the_images_contrast(rng, change):
    """Rescaling is invariant to offset and scale: the result is the plain ramp's (to the
    rounding of one level), not blank or a few levels as when computed in float32."""
    ramp = _ramp(rng)
    expected = rescale_to_uint8(ramp).astype(int)
    assert expected.min() == 0 and expected.max() == 255
    got = rescale_to_uint8(change(ramp))
    assert np.abs(got.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_images_are_refused_with_the_fix(dtype):
    image = np.ones((8, 8), dtype=dtype)
    with pytest.raises(TypeError, match=r"dtype complex.*np\.abs\(image\).*image\.real"):
        to_sam_rgb(image)


def test_constant_image_gives_zeros():
    assert rescale_to_uint8(np.full((5, 5), 7.5)).max() == 0


def test_rgba_drops_alpha_and_rgb_passes(rng):
    rgba = rng.integers(0, 256, size=(8, 8, 4), dtype=np.uint8)
    np.testing.assert_array_equal(to_sam_rgb(rgba), rgba[..., :3])


def test_multichannel_needs_a_channel_choice(rng):
    image = rng.integers(0, 256, size=(5, 16, 16), dtype=np.uint8)  # channels first
    with pytest.raises(ValueError, match="channel"):
        to_sam_rgb(image)
    one = to_sam_rgb(image, channel_axis=0, channels=[2])
    np.testing.assert_array_equal(one[..., 1], image[2])
    three = to_sam_rgb(image, channel_axis=0, channels=[0, 1, 4])
    np.testing.assert_array_equal(three[..., 2], image[4])


def test_bad_channel_index_names_the_range(rng):
    image = rng.integers(0, 256, size=(16, 16, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        to_sam_rgb(image, channel_axis=-1, channels=[7])


def test_stack_is_rejected_with_a_hint():
    with pytest.raises(ValueError, match="one plane at a time"):
        to_sam_rgb(np.zeros((3, 4, 8, 8), dtype=np.uint8))


@pytest.mark.parametrize(
    ("axis", "ndim", "plane_axis"),
    [(None, 4, None), (1, 4, 0), (3, 4, 2), (-1, 4, 2), (-3, 4, 0), (None, 3, None)],
)
def test_a_stacks_channel_axis_is_one_less_within_a_plane(axis, ndim, plane_axis):
    assert plane_channel_axis(axis, ndim) == plane_axis
    if axis is not None:  # the same channel, taken from the stack or from its plane
        shape = (2, 3, 5, 7)[:ndim]
        stack = np.arange(np.prod(shape)).reshape(shape)
        along = np.take(stack, 1, axis=axis)[0]  # channel 1 of plane 0
        assert np.array_equal(along, np.take(stack[0], 1, axis=plane_axis))


@pytest.mark.parametrize(
    ("axis", "ndim", "message"),
    [
        (0, 4, "axis of planes"),
        (-4, 4, "axis of planes"),
        (4, 4, r"out of range.*-4\.\.3"),
        (2, 3, "a stack of 3 axes, whose planes are 2D without channels"),
        (-1, 3, "stack of 3 axes.* leave channel_axis out"),
    ],
)
def test_a_channel_axis_outside_a_stacks_planes_is_refused(axis, ndim, message):
    with pytest.raises(ValueError, match=f"channel_axis={axis}.*{message}|{message}"):
        plane_channel_axis(axis, ndim)


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((20, 24, 2), -1), ((8, 20, 24), 0), ((2, 20, 24), 0), ((20, 24, 3), -1), ((16, 20, 24), 0)],
)
def test_with_channels_chosen_the_one_short_end_axis_holds_them(rng, shape, axis):
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    expected = np.take(image, 1, axis=axis)
    np.testing.assert_array_equal(to_sam_rgb(image, channels=[1])[..., 0], expected)
    if shape[axis] not in (3, 4):  # without a choice only RGB(A) is clear
        with pytest.raises(ValueError, match="ambiguous"):
            to_sam_rgb(image)


@pytest.mark.parametrize("shape", [(12, 40, 2), (17, 40, 40), (40, 40, 17)])
def test_two_short_or_no_short_end_axes_stay_ambiguous(rng, shape):
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    with pytest.raises(ValueError, match="channel axis is ambiguous; pass channel_axis"):
        to_sam_rgb(image, channels=[1])


@pytest.mark.parametrize(
    ("text", "channels"), [("1", (1,)), (" 0, 2,1 ", (0, 2, 1)), ("", None), ("  ", None)]
)
def test_channels_typed_as_text(text, channels):
    assert parse_channels(text) == channels


@pytest.mark.parametrize(
    ("text", "message"),
    [("a", "not a channel list"), ("0,1", "one channel index or three"), ("-1", "0 or more")],
)
def test_bad_channel_text_is_named(text, message):
    with pytest.raises(ValueError, match=f"'{text}'.*{message}|{message}"):
        parse_channels(text)


@pytest.mark.parametrize("shape", [(1, 20, 24), (20, 24, 1)])
def test_a_single_channel_axis_is_gray_without_a_choice(rng, shape):
    image = rng.integers(0, 4000, size=shape, dtype=np.uint16)
    np.testing.assert_array_equal(to_sam_rgb(image), to_sam_rgb(image.reshape(20, 24)))


@pytest.mark.parametrize("shape", [(1, 1, 20, 24), (20, 24, 1, 1), (1, 20, 1, 24, 1)])
def test_extra_axes_of_one_entry_are_dropped(rng, shape):
    """(1, 1, H, W), as numpy saves a 2D image with singleton axes, was refused as a stack."""
    image = rng.integers(0, 4000, size=shape, dtype=np.uint16)
    np.testing.assert_array_equal(to_sam_rgb(image), to_sam_rgb(image.reshape(20, 24)))


def test_the_channel_axis_counts_the_axes_of_one_entry_too(rng):
    image = rng.integers(0, 4000, size=(1, 3, 20, 24), dtype=np.uint16)
    expected = to_sam_rgb(image[0], channel_axis=0)
    np.testing.assert_array_equal(to_sam_rgb(image, channel_axis=1), expected)
    np.testing.assert_array_equal(to_sam_rgb(image, channel_axis=-3), expected)
    np.testing.assert_array_equal(to_sam_rgb(image, channels=[0, 1, 2]), expected)
    with pytest.raises(ValueError, match=r"ambiguous.*shape is \(1, 2, 20, 24\)"):
        to_sam_rgb(image[:, :2])  # two channels: which axis is meant, counted in the image
    with pytest.raises(ValueError, match="one plane at a time"):
        to_sam_rgb(np.zeros((1, 1, 1, 8)))  # a 1D image is none of these


def test_planes_first_turns_channels_first_stacks_into_planes_of_channels():
    czyx = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    for axis in (0, -4):
        moved, plane_axis = images.planes_first(czyx, axis)
        assert moved.shape == (3, 2, 4, 5) and plane_axis == 1
        assert np.shares_memory(moved, czyx) and np.array_equal(moved[2, 1], czyx[1, 2])
    assert images.planes_first(czyx, None, [1], n_planes=3)[1] == 1  # guessed from the labels
    for axis, channels, n_planes in [
        (None, None, 3),  # nothing chosen: nothing guessed
        (None, [1], 2),  # axis 0 matches the labels' planes: planes first already
        (0, [1], 4),  # axis 1 does not match the labels' planes
        (2, [1], 3),  # another axis given
    ]:
        same, kept_axis = images.planes_first(czyx, axis, channels, n_planes)
        assert same is czyx and kept_axis == axis
    yx = np.zeros((4, 5))
    assert images.planes_first(yx, 0)[0] is yx


def test_as_many_channels_as_planes_without_an_axis_named_is_refused():
    """(C, Z, H, W) with C == Z was read as (Z, C, H, W) unsaid: labels plane z trained on
    plane 1 of channel z."""
    square = np.zeros((3, 3, 4, 5))
    with pytest.raises(ValueError, match="channels may come first.*channel_axis=0 or"):
        images.planes_first(square, None, [1], n_planes=3)
    assert images.planes_first(square, 0, [1], n_planes=3)[1] == 1  # named: no guess
    assert images.planes_first(square, 1, [1], n_planes=3) == (square, 1)


@pytest.mark.parametrize("one", [1, np.int64(1), (1,), [1], np.array([1])])
def test_one_channel_may_be_given_as_an_int(rng, one):
    image = rng.integers(0, 256, size=(16, 16, 5), dtype=np.uint8)
    rgb = to_sam_rgb(image, channel_axis=-1, channels=one)
    np.testing.assert_array_equal(rgb, to_sam_rgb(image[..., 1]))


@pytest.mark.parametrize(
    "channels", ["1", "0,1,2", 1.0, [0.0, 1.0, 2.0], True, [True], {"c": 1}, object()]
)
def test_channels_that_are_not_indices_are_a_type_error_naming_them(rng, channels):
    image = rng.integers(0, 256, size=(16, 16, 5), dtype=np.uint8)
    with pytest.raises(TypeError, match=r"channels=.*give one index \(e\.g\. 1\) or a list"):
        to_sam_rgb(image, channel_axis=-1, channels=channels)


def test_channels_typed_as_text_point_to_parse_channels(rng):
    image = rng.integers(0, 256, size=(16, 16, 5), dtype=np.uint8)
    with pytest.raises(TypeError, match="channels='1' .*parse_channels"):
        to_sam_rgb(image, channel_axis=-1, channels="1")


@pytest.mark.parametrize(
    ("shape", "axis", "message"),
    [
        ((16, 16, 2), 5, r"channel_axis=5 is out of range for an image of shape \(16, 16, 2\)"),
        ((16, 16, 2), -4, r"channel_axis=-4 is out of range.*-3\.\.2"),
        ((16, 16), 7, r"channel_axis=7 was given but the image has shape \(16, 16\), a 2D"),
        ((16, 16), -1, r"channel_axis=-1 was given but .* leave channel_axis out$"),
    ],
)
def test_a_channel_axis_the_image_cannot_have_is_named_with_the_shape(shape, axis, message):
    image = np.zeros(shape, dtype=np.uint16)
    with pytest.raises(ValueError, match=message):
        to_sam_rgb(image, channel_axis=axis, channels=[0] if len(shape) == 3 else None)


@pytest.mark.parametrize("axis", [1.0, "0", True])
def test_a_channel_axis_that_is_not_an_int_is_a_type_error(axis):
    with pytest.raises(TypeError, match=f"channel_axis={axis!r}; give the axis"):
        to_sam_rgb(np.zeros((16, 16, 3), np.uint8), channel_axis=axis)


@pytest.mark.parametrize("fill, shade", [(np.nan, 0), (-np.inf, 0), (np.inf, 255)])
def test_non_finite_pixels_leave_the_finite_ones_scaled_as_on_their_own(rng, fill, shade):
    """The percentiles come from the finite pixels only; NaN and -inf pixels come out black,
    +inf white, and no "invalid value" warning is raised."""
    image = rng.normal(1000.0, 50.0, size=(30, 40)).astype(np.float32)
    holes = rng.random(image.shape) < 0.2
    holed = np.where(holes, np.float32(fill), image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = to_sam_rgb(holed)
    np.testing.assert_array_equal(rgb[~holes, 0], rescale_to_uint8(image[~holes]))
    assert (rgb[holes] == shade).all()


def test_a_fourth_channel_that_varies_is_said_to_be_left_out():
    """A 4-channel fluorescence image (H, W, 4) with its signal in channel 3 was read as
    RGBA and the channel dropped unsaid: SAM saw black."""
    import warnings

    from napari_samtune.core.images import to_sam_rgb

    image = np.zeros((32, 40, 4), np.uint16)
    image[8:20, 10:30, 3] = 1000
    with pytest.warns(UserWarning, match=r"4th channel .* is not used, yet it varies"):
        rgb = to_sam_rgb(image)
    assert rgb.shape == (32, 40, 3) and not rgb.any()
    assert to_sam_rgb(image, channels=[3]).max() == 255  # what the warning says to pass
    image[..., 3] = 7  # an alpha channel that holds nothing: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_sam_rgb(image)
