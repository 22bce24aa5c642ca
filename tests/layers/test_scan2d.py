"""Directional unrolling of images and light-field subspace scans: orderings and exact round trips."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.layers.scan2d import (
    DIRECTION_PRESETS,
    IMAGE_DIRECTIONS,
    LIGHT_FIELD_SUBSPACES,
    image_to_sequences,
    light_field_to_sequences,
    sequences_to_image,
    sequences_to_light_field,
)


def test_image_directions_on_a_hand_made_example():
    # pixel values are their raster index:  0 1 2
    #                                       3 4 5
    image = torch.arange(6.0).view(1, 1, 2, 3)
    sequences = image_to_sequences(image)
    assert sequences.shape == (1, 4, 1, 6)
    assert sequences[0, :, 0].tolist() == [
        [0, 1, 2, 3, 4, 5],  # row
        [0, 3, 1, 4, 2, 5],  # column
        [5, 4, 3, 2, 1, 0],  # row_reversed
        [5, 2, 4, 1, 3, 0],  # column_reversed
    ]


def test_presets_and_named_directions():
    image = torch.arange(6.0).view(1, 1, 2, 3)
    assert image_to_sequences(image, 1)[0, :, 0].tolist() == [[0, 1, 2, 3, 4, 5]]
    assert image_to_sequences(image, 2)[0, :, 0].tolist() == [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]]
    assert image_to_sequences(image, ("column",))[0, 0, 0].tolist() == [0, 3, 1, 4, 2, 5]


def test_merge_sums_the_inverse_unrolled_sequences():
    # each direction's sequence is 0..5 in its own order, so pixel p gets the sum of its four positions
    sequences = torch.arange(6.0).expand(1, 4, 1, 6)
    merged = sequences_to_image(sequences, 2, 3)
    row = torch.tensor([[0, 1, 2], [3, 4, 5]])
    column = torch.tensor([[0, 2, 4], [1, 3, 5]])
    torch.testing.assert_close(merged[0, 0], (row + column + (5 - row) + (5 - column)).float())


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    directions=st.sampled_from([1, 2, 4, ("column",), ("column_reversed", "row")]),
)
def test_image_round_trip_is_exact(batch, channels, height, width, directions):
    image = torch.randn(batch, channels, height, width)
    count = len(DIRECTION_PRESETS[directions]) if isinstance(directions, int) else len(directions)
    sequences = image_to_sequences(image, directions)
    assert sequences.shape == (batch, count, channels, height * width)
    assert torch.equal(sequences_to_image(sequences, height, width, directions), image * count)
    for direction in IMAGE_DIRECTIONS:
        single = image_to_sequences(image, (direction,))
        assert torch.equal(sequences_to_image(single, height, width, (direction,)), image)


def test_light_field_orderings_on_a_hand_made_example():
    # features (batch 1, channel 1, U*V = 2*2, H = 2, W = 3) whose values encode (u, v, h, w) as digits
    u, v, h, w = torch.meshgrid(*(torch.arange(n) for n in (2, 2, 2, 3)), indexing="ij")
    lf = (1000 * u + 100 * v + 10 * h + w).reshape(1, 1, 4, 2, 3).float()

    spatial = light_field_to_sequences(lf, (2, 2), "spatial")
    assert spatial.shape == (4, 6, 1)
    assert spatial[1, :, 0].tolist() == [100, 101, 102, 110, 111, 112]  # view (u=0, v=1), (h, w) row-major

    angular = light_field_to_sequences(lf, (2, 2), "angular")
    assert angular.shape == (6, 4, 1)
    assert angular[4, :, 0].tolist() == [11, 111, 1011, 1111]  # pixel (h=1, w=1), (u, v) row-major

    epi_h = light_field_to_sequences(lf, (2, 2), "epi_h")
    assert epi_h.shape == (6, 4, 1)
    assert epi_h[5, :, 0].tolist() == [102, 112, 1102, 1112]  # (v=1, w=2), (u, h) row-major

    epi_w = light_field_to_sequences(lf, (2, 2), "epi_w")
    assert epi_w.shape == (4, 6, 1)
    assert epi_w[3, :, 0].tolist() == [1010, 1011, 1012, 1110, 1111, 1112]  # (u=1, h=1), (v, w) row-major


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    angular=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    spatial=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    subspace=st.sampled_from(sorted(LIGHT_FIELD_SUBSPACES)),
)
def test_light_field_round_trip_is_exact(batch, channels, angular, spatial, subspace):
    lf = torch.randn(batch, channels, angular[0] * angular[1], *spatial)
    sequences = light_field_to_sequences(lf, angular, subspace)
    assert sequences.shape[-1] == channels
    assert torch.equal(sequences_to_light_field(sequences, angular, spatial, subspace), lf)


def test_errors_name_expected_shapes():
    with pytest.raises(ValueError, match=r"x must be \(batch, channels, height, width\)"):
        image_to_sequences(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="directions must be names from"):
        image_to_sequences(torch.zeros(1, 1, 2, 2), ("diagonal",))
    with pytest.raises(ValueError, match="directions must be one of"):
        image_to_sequences(torch.zeros(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match=r"sequences must be \(batch, 4, channels, 6\)"):
        sequences_to_image(torch.zeros(1, 2, 1, 6), 2, 3)
    with pytest.raises(ValueError, match=r"x must be \(batch, channels, 5 \* 5, height, width\)"):
        light_field_to_sequences(torch.zeros(1, 8, 24, 4, 4), (5, 5), "spatial")
    with pytest.raises(ValueError, match=r"epi_h sequences must be \(batch \* 20, 20, channels\)"):
        sequences_to_light_field(torch.zeros(20, 16, 8), (5, 5), (4, 4), "epi_h")
    with pytest.raises(ValueError, match="subspace must be one of"):
        light_field_to_sequences(torch.zeros(1, 1, 4, 2, 2), (2, 2), "epi")
