"""Random affine augmentation of image batches (rotation and shift), as in DEC-DA
(Guo et al., ACML 2018), whose autoencoder trained on shifted and rotated digits gives codes
that cluster better.  Works on flattened rows as well as (N, C, H, W) batches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_affine(x: Tensor, image_shape: tuple[int, ...], rotation: float = 0.0,
                  shift: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Rotate each image by an angle uniform in [-rotation, rotation] degrees and shift it
    by up to ``shift`` of its width and height (uniform, independently per axis).

    x: (N, *image_shape) or (N, prod(image_shape)); returns a tensor of the same shape.
    """
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotation)
    offset = (torch.rand(n, 2, generator=generator) * 2 - 1) * shift
    return affine(x, image_shape, angle, offset)


def affine(x: Tensor, image_shape: tuple[int, ...], angle: Tensor, offset: Tensor) -> Tensor:
    """Rotate image i by angle[i] radians about its centre (counter-clockwise as displayed,
    row 0 at the top), then move it by offset[i] = (right, down) in fractions of its size.

    x: (N, *image_shape) or (N, prod(image_shape)); angle: (N,); offset: (N, 2).
    Pixels moved in from outside repeat the border (the background of centred digits,
    whatever the data's scaling).
    """
    n = x.shape[0]
    # affine_grid maps each output pixel to where it samples the input, in [-1, 1]
    # coordinates (an image size is 2): the inverse of the motion
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, -2 * (cos * offset[:, 0] - sin * offset[:, 1])], 1),
                         torch.stack([sin, cos, -2 * (sin * offset[:, 0] + cos * offset[:, 1])], 1)], 1)
    images = x.reshape(n, *image_shape)
    grid = F.affine_grid(theta.to(x), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False).reshape(x.shape)
