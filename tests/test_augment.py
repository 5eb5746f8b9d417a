"""Random affine augmentation for autoencoder pre-training (DEC-DA)."""

import math

import torch

from dgmm_lab.data.augment import affine, random_affine


def test_quarter_turn_and_whole_pixel_shifts_move_pixels_exactly():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 7, 7, dtype=torch.float64)
    n, one_right_two_down = len(x), torch.tensor([[1 / 7, 2 / 7]] * 3, dtype=torch.float64)
    turned = affine(x, (1, 7, 7), torch.full((n,), math.pi / 2, dtype=torch.float64), torch.zeros(n, 2))
    torch.testing.assert_close(turned, torch.rot90(x, 1, (2, 3)))
    # one pixel right, two down; pixels entering from outside repeat the border
    moved = affine(x, (1, 7, 7), torch.zeros(n), one_right_two_down)
    rows, cols = torch.arange(7).sub(2).clamp(min=0), torch.arange(7).sub(1).clamp(min=0)
    torch.testing.assert_close(moved, x[:, :, rows][:, :, :, cols])
    # flattened rows give the same images
    flat = affine(x.flatten(1), (1, 7, 7), torch.zeros(n), one_right_two_down)
    torch.testing.assert_close(flat, moved.flatten(1))


def test_random_shifts_stay_within_the_range_and_use_it():
    blob = torch.zeros(1, 1, 28, 28)
    blob[..., 12:16, 12:16] = 1.0
    x = blob.expand(400, -1, -1, -1).flatten(1)
    out = random_affine(x, (1, 28, 28), shift=0.1, generator=torch.Generator().manual_seed(0))
    grid = torch.arange(28.0)
    img = out.view(-1, 28, 28)
    mass = img.sum((1, 2))
    centre_row = (img.sum(2) * grid).sum(1) / mass - 13.5
    centre_col = (img.sum(1) * grid).sum(1) / mass - 13.5
    for centre in (centre_row, centre_col):
        assert centre.abs().max() <= 2.8 + 1e-4          # 10% of 28 pixels
        assert centre.min() < -2.0 and centre.max() > 2.0   # and the range is used
    torch.testing.assert_close(mass, torch.full_like(mass, 16.0))  # nothing falls off
    same = random_affine(x, (1, 28, 28), shift=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)


def test_no_rotation_and_no_shift_is_the_identity():
    x = torch.rand(5, 784)
    torch.testing.assert_close(random_affine(x, (1, 28, 28)), x)


def test_random_rotations_turn_a_bar_within_the_range_and_use_it():
    bar = torch.zeros(1, 1, 28, 28)
    bar[..., 13:15, 4:24] = 1.0
    x = bar.expand(400, -1, -1, -1)
    img = random_affine(x, (1, 28, 28), rotation=30.0, generator=torch.Generator().manual_seed(1))[:, 0]
    # orientation of each image's principal axis from its second moments
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = img.sum((1, 2))
    r = rows - (img * rows).sum((1, 2), keepdim=True) / mass[:, None, None]
    c = cols - (img * cols).sum((1, 2), keepdim=True) / mass[:, None, None]
    mu_rr, mu_cc, mu_rc = ((img * a * b).sum((1, 2)) for a, b in ((r, r), (c, c), (r, c)))
    degrees = torch.rad2deg(0.5 * torch.atan2(2 * mu_rc, mu_cc - mu_rr))
    assert degrees.abs().max() <= 31.0
    assert degrees.min() < -25 and degrees.max() > 25
