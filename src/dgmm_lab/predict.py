"""``python -m dgmm_lab.predict ckpt_path=CKPT [input=FILE] output=FILE [overwrite=true] [batch_size=N]``

A trained model's answers for every row of a file, one output row per input row:

- ``component``: the most probable mixture component (``TrainedModel.predict``), and
  ``probability``: its responsibility p(component | x);
- ``score``: ``score_samples``, higher = more normal (log p(x) for EM and ``nll``, the ELBO
  for VaDE, minus the energy for DAGMM);
- runs trained under the anomaly protocol (``data.normal_label``): ``anomaly_score``
  (= -score) and ``is_anomaly`` (above the threshold fixed at training time);
- mixture density networks (``objective=mdn``): ``component``/``probability`` of y's
  mixture given x and the conditional mean ``mean_<target>`` per target dimension (there
  is no y to score).

``input=`` is ``.npy`` (memory-mapped, read batch by batch), ``.npz``/``.mat`` (array ``X``
or the run's ``data.features`` key) or ``.csv`` (the training columns by header name when
the run was trained on a CSV, else every column), in the raw units of the training file;
the model applies the preprocessing fitted at training time.  Without ``input=`` the run's
own test split is scored (with its ``label`` column where it has labels, and an MDN's
``score`` = log p(y | x)).  ``output=`` is ``.csv``, ``.npz`` or ``.parquet`` (needs pyarrow
or fastparquet), written whole or not at all.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np

from .config import ConfigError

USAGE = ("usage: python -m dgmm_lab.predict ckpt_path=CKPT [input=FILE] output=FILE [overwrite=true] "
         "[batch_size=N]\n"
         "  CKPT        a .ckpt written by dgmm_lab.train, or its run dir (the best checkpoint)\n"
         "  input       .npy (memory-mapped), .npz, .csv or .mat rows in the training file's units;\n"
         "              omitted: the run's test split\n"
         "  output      .csv, .npz or .parquet: component, probability, score per row (anomaly runs:\n"
         "              anomaly_score, is_anomaly; objective=mdn: the conditional mean of y)\n"
         "  overwrite   true replaces an existing output (default false)\n"
         "  batch_size  rows per batch (default 4096)")
ARGS = ("ckpt_path", "input", "output", "overwrite", "batch_size")
OUTPUT_FORMATS = (".csv", ".npz", ".parquet")
BATCH_SIZE = 4096


def parquet_engine() -> str | None:
    for name in ("pyarrow", "fastparquet"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def check_output(output: Path, overwrite: bool) -> str:
    """The output format, before anything is computed."""
    from .cli_io import check_new

    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ConfigError(f"output={str(output)!r}: unknown format {suffix!r}; allowed: {', '.join(OUTPUT_FORMATS)}")
    if suffix == ".parquet" and parquet_engine() is None:
        raise ConfigError("output=*.parquet needs the pyarrow or fastparquet package (pip install pyarrow); "
                          "or write .csv or .npz")
    check_new(output, overwrite)
    return suffix


def target_names(model) -> list[str]:
    """``mean_<name>`` for an MDN's target dimensions: the CSV columns the run named, else indices."""
    dim = int(model.module.inputs.get("target_dim") or 1)
    targets = model.config.data.get("targets") if "data" in model.config else None
    names = [targets] if isinstance(targets, str) else list(targets or [])
    if len(names) == dim and all(isinstance(n, str) for n in names):
        return [f"mean_{n}" for n in names]
    return [f"mean_{i}" for i in range(dim)]


def answers(model, x, y=None) -> dict[str, np.ndarray]:
    """The output columns for one batch of rows x (and an MDN test split's targets y)."""
    component = model.predict(x).astype(np.int64)
    proba = model.predict_proba(x)
    out = {"component": component, "probability": proba[np.arange(len(component)), component].astype(np.float64)}
    if model.conditional:
        means = model.conditional_mean(x)
        for i, name in enumerate(target_names(model)):
            out[name] = means[:, i]
        if y is not None:
            out["score"] = model.score_samples(x, y)
        return out
    out["score"] = model.score_samples(x)
    if model.anomaly_info:
        out["anomaly_score"] = -out["score"]  # TrainedModel.anomaly_score, without scoring twice
        out["is_anomaly"] = out["anomaly_score"] > model.threshold
    return out


def test_split(model):
    """(a model that takes the split's already-transformed rows, rows, labels or targets or
    None): the run's test split, rebuilt from the checkpoint's config."""
    from .data.transform import InputTransform
    from .training import instantiate_group, user_errors_in_one_line

    with user_errors_in_one_line():
        datamodule = instantiate_group(model.config, "data")
        datamodule.setup()
    x, y = datamodule.tensors("test")
    direct = copy.copy(model)  # the split is the model's input already: no second scaling
    direct.transform = InputTransform(tuple(model.transform.input_shape))
    if model.conditional:
        return direct, x.numpy(), y.numpy()
    labels = y.numpy() if y is not None and len(y) and int(y.min()) >= 0 else None
    return direct, x.numpy(), labels


class Columns:
    """Output columns gathered batch by batch (csv: written as they come)."""

    def __init__(self, suffix: str, handle):
        import csv

        self.suffix, self.handle = suffix, handle
        self.parts: dict[str, list[np.ndarray]] = {}
        self.writer = csv.writer(handle) if suffix == ".csv" else None
        self.header: list[str] | None = None

    def add(self, columns: dict[str, np.ndarray]) -> None:
        if self.writer is not None:
            if self.header is None:
                self.header = list(columns)
                self.writer.writerow(self.header)
            self.writer.writerows(zip(*(columns[k].tolist() for k in self.header)))
            return
        for key, values in columns.items():
            self.parts.setdefault(key, []).append(values)

    def finish(self) -> None:
        if self.writer is not None:
            return
        arrays = {k: np.concatenate(v) for k, v in self.parts.items()}
        if self.suffix == ".npz":
            np.savez(self.handle, **arrays)
        elif parquet_engine() == "pyarrow":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table(arrays), self.handle)
        else:
            import fastparquet
            import pandas as pd

            self.handle.flush()
            fastparquet.write(self.handle.name, pd.DataFrame(arrays))


def predict(ckpt: str, input_path: Path | None, output: Path, overwrite: bool = False,
            batch_size: int = BATCH_SIZE) -> int:
    """Writes ``output`` and returns the number of rows; every user mistake is a ConfigError."""
    from .cli_io import Progress, load_model, read_input, written_whole

    suffix = check_output(output, overwrite)
    model = load_model({"ckpt_path": ckpt})
    if input_path is not None:
        rows = read_input(input_path, model)
        source, n = ((x, None) for x in rows.batches(batch_size)), len(rows)
    else:
        model, x, y = test_split(model)
        n = len(x)
        source = ((x[i:i + batch_size], None if y is None else y[i:i + batch_size]) for i in range(0, n, batch_size))
    progress = Progress("predict", n)
    try:
        with written_whole(output, binary=suffix != ".csv") as handle:
            columns = Columns(suffix, handle)
            for xb, yb in source:  # not x, y: the test split's batches are sliced from those
                out = answers(model, xb, yb if model.conditional else None)
                if input_path is None and yb is not None and not model.conditional:
                    out["label"] = np.asarray(yb, dtype=np.int64)
                columns.add(out)
                progress.update(len(xb))
            columns.finish()
    finally:
        progress.close()
    return n


def main(argv: list[str] | None = None) -> None:
    from .cli_io import bool_arg, command_main, int_arg

    def action(args: dict) -> None:
        output = Path(args["output"])
        n = predict(args["ckpt_path"], Path(args["input"]) if args.get("input") else None, output,
                    bool_arg(args, "overwrite"), int_arg(args, "batch_size", BATCH_SIZE))
        print(f"written: {output} ({n} rows)")

    command_main(argv, USAGE, ARGS, ("output",), action)


if __name__ == "__main__":
    main()
