"""``python -m dgmm_lab.sample ckpt_path=CKPT n=64 output=DIR [seed=0] [overwrite=true] [input=FILE]``

Draws from a trained model, in the raw units of its data (decoded for VaDE/DAGMM, through
the flow for ``backbone=flow``, grey levels 0-255 for MNIST):

- ``DIR/samples.npy``: ``TrainedModel.sample(n, seed=)``, shape (n, *input shape);
  ``DIR/components.npy``: the component each draw came from (models with one mixture);
- image data: ``DIR/samples.png``, one row per component (its draws; an empty row for a
  component none came from), or a plain grid where draws have no component;
- ``objective=mdn``: ``input=FILE`` (.npy/.npz/.csv/.mat, as for ``dgmm_lab.predict``) is
  required, and ``samples.npy`` holds n draws of y per input row, (N, n, target_dim); on
  ``data=mnist_halves`` also ``completions.npy`` (N, n, 28, 28) and ``completions.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .config import ConfigError

USAGE = ("usage: python -m dgmm_lab.sample ckpt_path=CKPT n=N output=DIR [seed=S] [overwrite=true] [input=FILE]\n"
         "  CKPT       a .ckpt written by dgmm_lab.train, or its run dir (the best checkpoint)\n"
         "  N          draws (per input row for objective=mdn), an integer >= 1\n"
         "  DIR        gets samples.npy (and samples.png for image data)\n"
         "  S          the random seed (default 0)\n"
         "  overwrite  true replaces existing files in DIR (default false)\n"
         "  FILE       objective=mdn only, required there: the x rows (.npy, .npz, .csv, .mat)")
ARGS = ("ckpt_path", "n", "output", "seed", "overwrite", "input")
MAX_PER_ROW = 16  # draws shown per component row of the picture


def image_shape(model) -> tuple[int, ...] | None:
    """(C, H, W) of one image where the run's data are images, else None."""
    shape = model.module.inputs.get("image_shape")
    if shape:
        return tuple(shape)
    if model.transform.pixel_scale is not None:
        side = math.isqrt(model.transform.n_features)
        if side * side == model.transform.n_features:
            return (1, side, side)
    return None


def component_labels(model, n: int, seed: int) -> tuple[np.ndarray, int] | None:
    """The component of each of ``model.sample(n, seed=seed)``'s draws: the module samples
    ``display_mixture().sample(n, generator)`` and decodes, so the same generator state
    gives the same labels.  (labels (n,), K), or None where there is no one mixture."""
    import torch

    module = model.module
    if model.conditional or not module.has_global_mixture():
        return None
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        mixture = module.display_mixture()
        _, labels = mixture.sample(n, generator)
    return labels.cpu().numpy(), int(mixture.log_weights.shape[-1])


def picture(images: np.ndarray, labels: np.ndarray | None, n_components: int | None, shape, path) -> None:
    """A PNG grid of grey-level images: one row per component where labels are known."""
    import torch
    from torchvision.utils import save_image

    from .viz import image_grid

    tiles = torch.as_tensor(np.clip(images, 0, 255) / 255.0, dtype=torch.float32).reshape(len(images), *shape)
    if labels is None or not n_components:
        save_image(image_grid(tiles, nrow=min(len(tiles), 10)), path)
        return
    per_row = max(1, min(MAX_PER_ROW, int(np.bincount(labels, minlength=n_components).max())))
    grid = torch.zeros(n_components, per_row, *shape)
    for k in range(n_components):
        mine = tiles[torch.as_tensor(labels == k)][:per_row]
        grid[k, :len(mine)] = mine
    save_image(image_grid(grid.flatten(0, 1), nrow=per_row), path)


def sample(ckpt: str, n: int, output: Path, seed: int = 0, overwrite: bool = False,
           input_path: Path | None = None) -> list[Path]:
    """Writes the files into ``output`` and returns them; every user mistake is a ConfigError."""
    import shutil
    import tempfile

    from .cli_io import check_new, load_model, read_input

    if output.exists() and not output.is_dir():
        raise ConfigError(f"output={str(output)!r} is a file; allowed: a directory (made if missing)")
    model = load_model({"ckpt_path": ckpt})
    halves = model.conditional and model.module.inputs.get("target_code") is not None
    names = ["samples.npy"]
    if model.conditional:
        if input_path is None:
            raise ConfigError("objective=mdn samples y given x: input=FILE (the x rows) is required")
        names += ["completions.npy", "completions.png"] if halves else []
    else:
        if input_path is not None:
            raise ConfigError(f"input= is for objective=mdn runs (samples of y given x); this is {model.kind}: "
                              "drop input=")
        shape = image_shape(model)
        names += (["components.npy"] if model.module.has_global_mixture() else []) + (["samples.png"] if shape else [])
    for name in names:
        check_new(output / name, overwrite)
    files: dict[str, object] = {}
    if model.conditional:
        x = read_input(input_path, model).read_all()
        files["samples.npy"] = model.sample(x, n, seed=seed)
        if halves:
            files["completions.npy"] = completed = model.complete(x, n, seed=seed)
            files["completions.png"] = (completed.reshape(-1, 28 * 28), None, None, (1, 28, 28))
    else:
        drawn = model.sample(n, seed=seed)
        files["samples.npy"] = drawn
        labels, k = component_labels(model, n, seed) or (None, None)
        if labels is not None:
            files["components.npy"] = labels
        if shape:
            files["samples.png"] = (drawn.reshape(n, -1), labels, k, shape)
    # written into a temporary folder first, then moved: all files or none
    staging = Path(tempfile.mkdtemp(prefix=".sample-", dir=output.parent if output.parent.is_dir() else None))
    try:
        for name, value in files.items():
            if name.endswith(".png"):
                picture(*value, staging / name)
            else:
                np.save(staging / name, value)
        output.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.move(staging / name, output / name)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return [output / name for name in files]


def main(argv: list[str] | None = None) -> None:
    from .cli_io import bool_arg, command_main, int_arg

    def action(args: dict) -> None:
        written = sample(args["ckpt_path"], int_arg(args, "n", 0), Path(args["output"]),
                         int_arg(args, "seed", 0, minimum=None), bool_arg(args, "overwrite"),
                         Path(args["input"]) if args.get("input") else None)
        for path in written:
            print(f"written: {path}")

    command_main(argv, USAGE, ARGS, ("n", "output"), action)


if __name__ == "__main__":
    main()
