"""Qt-free parts of the annotation widget: label edits, image layouts."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune._qt.image_planes import describe_image
from napari_samtune._qt.label_edits import UndoEntry, UndoStack, write_objects


def test_write_objects_numbers_new_ids_and_respects_existing_objects():
    labels = np.zeros((2, 6, 6), dtype=np.uint32)
    labels[0, 0, :] = 4
    objects = np.zeros((6, 6), dtype=np.uint32)
    objects[0:2, 0:3] = 9  # overlaps object 4 on row 0
    objects[4:6, 4:6] = 2
    entry = UndoEntry()
    ids = write_objects(labels, {0: objects, 1: objects}, overwrite=False, entry=entry)
    assert ids == [5, 6]  # object ids 2 and 9 in increasing order -> 5, 6 on both planes
    assert (labels[0, 0, :] == 4).all()  # not overwritten
    assert (labels[0, 1, 0:3] == 6).all() and (labels[1, 0:2, 0:3] == 6).all()
    assert (labels[:, 4:6, 4:6] == 5).all()
    assert entry.planes == [0, 1]
    entry.restore(labels)
    assert labels.max() == 4 and (labels[0, 0] == 4).all()
    write_objects(labels, {0: objects}, overwrite=True)
    assert (labels[0, 0, 0:3] == 5 + 1).all()  # overwrite: object 9 -> id 6 took the pixels
    assert write_objects(labels, {0: np.zeros((6, 6), np.uint32)}) == []


def test_undo_reverts_only_pixels_that_still_hold_what_the_edit_wrote():
    """A brush stroke (or another commit) made after an edit survives undoing the edit."""
    labels = np.zeros((6, 6), dtype=np.uint32)
    labels[0, :] = 3
    objects = np.zeros((6, 6), dtype=np.uint32)
    objects[0:3, 0:3] = 1
    entry = UndoEntry()
    assert write_objects(labels, {None: objects}, overwrite=True, entry=entry) == [4]
    labels[2, 2] = 9  # painted over the new object afterwards
    labels[5, 5] = 9  # painted elsewhere afterwards
    entry.restore(labels)
    expected = np.zeros((6, 6), dtype=np.uint32)
    expected[0, :] = 3  # overwritten pixels get their object back
    expected[2, 2] = expected[5, 5] = 9
    np.testing.assert_array_equal(labels, expected)


def _cover_half_of_object_3():
    """Labels with object 3 on the top rows; an undoable edit that covered half of it."""
    labels = np.zeros((6, 6), dtype=np.uint32)
    labels[0:2, :] = 3
    objects = np.zeros((6, 6), dtype=np.uint32)
    objects[0:4, 0:3] = 1
    entry = UndoEntry()
    assert write_objects(labels, {None: objects}, overwrite=True, entry=entry) == [4]
    entry.note_survivors(labels)
    return labels, entry


@pytest.mark.parametrize("by_hand", [0, 7])  # deleted; relabelled (the fill bucket)
def test_undo_does_not_bring_back_an_object_removed_by_hand_since(by_hand):
    """Undo put the covered half back as object 3 beside the object the person had
    relabelled (one object, two ids), or brought back one they had deleted."""
    labels, entry = _cover_half_of_object_3()
    labels[labels == 3] = by_hand
    entry.restore(labels)
    assert not (labels == 3).any() and not (labels == 4).any()
    assert (labels[0:2, 3:] == by_hand).all() and (labels[0:2, 0:3] == 0).all()


def test_undo_brings_back_an_object_the_edit_covered_whole_or_left_alone():
    labels, entry = _cover_half_of_object_3()
    entry.restore(labels)
    assert (labels[0:2, :] == 3).all() and labels[2:].max() == 0
    labels = np.zeros((6, 6), dtype=np.uint32)
    labels[0, 0:2] = 2
    entry = UndoEntry()
    write_objects(labels, {None: np.ones((6, 6), np.uint32)}, overwrite=True, entry=entry)
    entry.note_survivors(labels)
    assert not (labels == 2).any()
    entry.restore(labels)
    assert (labels[0, 0:2] == 2).all() and labels.sum() == 4


def test_undoing_a_loaded_file_brings_back_every_object_it_replaced():
    before = np.arange(36, dtype=np.uint32).reshape(6, 6)  # 35 objects: ids compared sorted
    loaded = np.zeros((6, 6), dtype=np.uint32)
    loaded[:3] = 50
    entry = UndoEntry()
    entry.remember_replacement(before, loaded)
    labels = loaded.copy()
    entry.note_survivors(labels)
    entry.restore(labels)
    np.testing.assert_array_equal(labels, before)


def test_undoing_a_loaded_file_whose_object_of_the_same_id_was_deleted_restores_the_old():
    """The file's own object 1 made the old object 1 look still there after the load; with
    the file's object deleted by hand, undo wrote 0 where the old object 1 was."""
    before = np.zeros((6, 6), dtype=np.uint32)
    before[0:2, 0:2] = 1
    loaded = np.zeros((6, 6), dtype=np.uint32)
    loaded[4:6, 4:6] = 1
    entry = UndoEntry()
    entry.remember_replacement(before, loaded)
    labels = loaded.copy()
    entry.note_survivors(labels)
    labels[labels == 1] = 0  # the loaded object deleted by hand
    entry.restore(labels)
    np.testing.assert_array_equal(labels, before)


def test_undo_does_not_bring_back_a_3d_object_erased_by_hand_from_one_plane():
    """Object 1 on planes 0 and 1; an edit covered part of it on plane 0, whose rest was
    erased by hand: still on plane 1, it counted as there, and came back on plane 0."""
    labels = np.zeros((2, 6, 6), dtype=np.uint32)
    labels[:, 0:4, 0:4] = 1
    objects = np.zeros((6, 6), dtype=np.uint32)
    objects[0:2, 0:4] = 1
    entry = UndoEntry()
    assert write_objects(labels, {0: objects}, overwrite=True, entry=entry) == [2]
    entry.note_survivors(labels)
    labels[0][labels[0] == 1] = 0  # erased on plane 0
    entry.restore(labels)
    assert not labels[0].any() and (labels[1, 0:4, 0:4] == 1).all()


def test_new_objects_never_take_an_id_given_before():
    labels = np.zeros((6, 6), dtype=np.uint32)
    labels[0, 0] = 2
    objects = np.zeros((6, 6), dtype=np.uint32)
    objects[3, 3] = 1
    assert write_objects(labels, {None: objects}, used_before=5) == [6]
    assert write_objects(
        labels, {None: objects.T * 0 + np.eye(6, dtype=np.uint32)}, 0, None, 2
    ) == [7]


def test_undo_stack_keeps_the_latest_edits():
    stack = UndoStack(depth=2)
    entries = [UndoEntry() for _ in range(3)]
    for entry in entries:
        stack.push(entry)
    assert len(stack) == 2
    assert stack.pop() is entries[2] and stack.pop() is entries[1] and stack.pop() is None


@pytest.mark.parametrize(
    ("shape", "rgb", "channels_first", "channels", "spatial", "n_planes"),
    [
        ((40, 50), False, False, None, (40, 50), 1),
        ((40, 50, 3), True, False, None, (40, 50), 1),
        ((5, 40, 50), False, False, None, (5, 40, 50), 5),
        ((5, 40, 50, 4), True, False, None, (5, 40, 50), 5),
        ((2, 40, 50), False, True, (1,), (40, 50), 1),
        ((3, 5, 40, 50), False, True, (0, 1, 2), (5, 40, 50), 5),
    ],
)
def test_image_layouts(shape, rgb, channels_first, channels, spatial, n_planes):
    axes = describe_image(shape, rgb, channels_first, channels)
    assert axes.spatial_shape == spatial and axes.n_planes == n_planes
    data = np.arange(np.prod(shape)).reshape(shape)
    plane = axes.plane(data, n_planes - 1)
    expected = {
        (False, False): data[-1] if n_planes > 1 else data,
        (True, False): data[-1] if n_planes > 1 else data,
        (False, True): data[:, -1] if n_planes > 1 else data,
    }[(rgb, channels_first)]
    np.testing.assert_array_equal(plane, expected)


@pytest.mark.parametrize(
    ("shape", "rgb", "channels_first", "channels", "message"),
    [
        ((2, 3, 40, 50), False, False, None, "channels on first axis"),
        ((40, 50), False, True, None, "expected \\(C, H, W\\)"),
        ((2, 40, 50), False, True, (5,), "invalid for 2 channels"),
        ((40, 50, 3), True, True, None, "untick 'channels on first axis'"),
        ((40, 50), False, False, (0,), "needs 'channels on first axis'"),
        # (H, W, C): annotated as 40 planes of 50 x 2 pixels, without a word
        ((40, 50, 2), False, False, None, r"2 channels on its last axis.*channel_axis=-1"),
        ((64, 64, 5), False, False, None, r"shows as 64 planes of 64 x 5 pixels"),
    ],
)
def test_unsupported_layouts_say_how_to_fix_them(shape, rgb, channels_first, channels, message):
    with pytest.raises(ValueError, match=message):
        describe_image(shape, rgb, channels_first, channels)


def test_stacks_of_few_or_narrow_planes_are_still_stacks():
    for shape in [(5, 64, 64), (3, 40, 50), (40, 50, 20), (16, 16, 8)]:
        assert describe_image(shape).spatial_shape == shape


def test_worker_errors_become_messages_with_a_fix():
    import urllib.error

    from napari_samtune._qt.task_messages import user_message

    offline = user_message(urllib.error.URLError("Name or service not known"))
    assert "offline" in offline and "checkpoint file" in offline
    assert "the built-in nano (no download)" in offline  # what works offline, by name
    from napari_samtune.core.fetch import DownloadError

    answered = DownloadError("could not download http://x/nano.pth: the server answered HTTP 404")
    answered.__cause__ = urllib.error.HTTPError("http://x/nano.pth", 404, "Not Found", {}, None)
    said = user_message(answered)  # the server was reached: not "offline"
    assert "offline" not in said and "connect to the internet" not in said
    assert "server was reached but did not send the file" in said and "HTTP 404" in said
    assert "Check the path" in user_message(FileNotFoundError("no file /x.pth"))
    assert "cpu device" in user_message(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert user_message(ValueError("channels=[5] is invalid; pick 0..2")) == (
        "channels=[5] is invalid; pick 0..2"
    )
    assert user_message(KeyError("x")).startswith("KeyError")


def test_a_new_id_past_the_largest_uint32_id_is_none_given_before():
    """With the dtype's largest id in use, a new object took the lowest free id: that of a
    deleted object, whose record then listed it twice (taken for the new object's)."""
    labels = np.zeros((32, 32), np.uint32)
    labels[0:4, 0:4], labels[20:24, 20:24] = 1, np.iinfo(np.uint32).max  # 2 and 3 deleted
    new = np.zeros((32, 32), np.uint32)
    new[10:14, 10:14], new[10:14, 0:4] = 1, 2
    assert write_objects(labels.copy(), {None: new}, used_before=3) == [4, 5]
    assert write_objects(labels.copy(), {None: new}) == [2, 3]  # none given before: the lowest
