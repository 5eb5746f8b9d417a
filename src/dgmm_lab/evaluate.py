"""``python -m dgmm_lab.evaluate ckpt_path=RUN/checkpoints/last.ckpt [overrides]``

Rebuilds the model from the resolved config the checkpoint carries (or, for checkpoints
from before it did, the run's ``config.yaml`` two levels up), loads the checkpoint,
evaluates on the test split, prints a table and writes ``metrics.json`` (next to the run,
under ``eval/``, or into ``output_dir=...``).  Overrides are dotted keys of the saved config
(``data.limit_test=1000``) or a data group (``data=mnist``).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from .config import CONF_DIR, ConfigError, report_and_exit


USAGE = ("usage: python -m dgmm_lab.evaluate ckpt_path=CHECKPOINT [output_dir=DIR] [key=value ...]\n"
         "  CHECKPOINT  a .ckpt written by dgmm_lab.train (it carries its run's config), or a run dir (its best)\n"
         "  DIR         where metrics.json goes (default: RUN_DIR/eval/<time>/)\n"
         "  key=value   a dotted key of the run's config (data.limit_test=1000) or data=GROUP")


# what evaluating a trained model may change: the data it is scored on and where it runs
EVALUATE_MAY_CHANGE = ("data.", "trainer.accelerator", "num_threads")


def load_run_config(ckpt: Path, overrides: list[str], content: dict | None = None) -> DictConfig:
    saved = ckpt.resolve().parent.parent / "config.yaml"
    if content is not None and content.get("dgmm_lab_config"):
        cfg = OmegaConf.create(content["dgmm_lab_config"])
    elif saved.exists():
        cfg = OmegaConf.load(saved)
    else:
        raise ConfigError(f"ckpt_path={str(ckpt)!r} carries no config (written before checkpoints did) and has "
                          f"no config.yaml two levels up ({saved}); keep it in RUN_DIR/checkpoints/")
    if cfg.model.get("init_from"):
        cfg.model.init_from = None  # the checkpoint holds the trained values; start values are moot
    for item in overrides:
        key, value = item.split("=", 1)
        if key != "data" and not key.startswith(EVALUATE_MAY_CHANGE):
            raise ConfigError(f"{key}={value} cannot change a trained model; allowed: data=GROUP, data.* "
                              "(data.limit_test=1000, data.path=...), trainer.accelerator, num_threads")
        if key == "data":  # a whole data group, resolved against the run's paths
            group_file = CONF_DIR / "data" / f"{value}.yaml"
            if not group_file.exists():
                allowed = ", ".join(sorted(p.stem for p in group_file.parent.glob("*.yaml")))
                raise ConfigError(f"data={value!r} is not a known data config; allowed: {allowed}")
            cfg.data = OmegaConf.load(group_file)
        else:
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else value, merge=True)
    OmegaConf.resolve(cfg)
    from .config import check_ranges

    check_ranges(cfg)  # data.batch_size=0 and the like, as train checks them
    return cfg


def evaluate(ckpt: Path, overrides: list[str], output_dir: Path | None = None) -> dict[str, float]:
    import pytorch_lightning as pl
    import torch

    from .lifecycle import check_checkpoint
    from .training import build

    content = check_checkpoint(ckpt, "ckpt_path")
    cfg = load_run_config(ckpt, overrides, content)
    torch.set_num_threads(cfg.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model = build(cfg)
    trained_on = (content.get("dgmm_lab_inputs") or {}).get("transform", {}).get("input_shape")
    if trained_on is not None and tuple(trained_on) != tuple(datamodule.input_shape):
        changed = " ".join(o for o in overrides if o.startswith("data")) or "the run's data"
        raise ConfigError(f"{changed} gives samples of shape {tuple(datamodule.input_shape)}, and {ckpt} was trained "
                          f"on samples of shape {tuple(trained_on)}; allowed: data with the training's shape")
    model.load_state_dict(content["state_dict"])
    # in the run's own precision (bf16-mixed: VaDE's networks in bfloat16), so the run's test numbers come back
    trainer = pl.Trainer(accelerator=cfg.trainer.get("accelerator", "cpu"), devices=1, logger=False,
                         precision=cfg.trainer.get("precision", "32-true"),
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k: v for k, v in model.exact_metrics.items() if k.startswith("test/")}
    run_dir = ckpt.resolve().parent.parent if ckpt.resolve().parent.name == "checkpoints" else ckpt.resolve().parent
    out = output_dir or run_dir / "eval" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(dict(sorted(metrics.items())), indent=2))
    OmegaConf.save(cfg, out / "config.yaml")
    width = max(len(k) for k in metrics)
    print(f"{'metric':<{width}}  value\n{'-' * width}  {'-' * 14}")
    for key, value in sorted(metrics.items()):
        print(f"{key:<{width}}  {value:.10g}")
    print(f"written: {out / 'metrics.json'}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    from .console import quiet_lightning

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    quiet_lightning()
    try:
        args = dict(a.split("=", 1) for a in argv if a.startswith(("ckpt_path=", "output_dir=")))
        rest = [a for a in argv if not a.startswith(("ckpt_path=", "output_dir="))]
        bad = [a for a in rest if "=" not in a]
        if bad:
            raise ConfigError(f"argument {bad[0]!r} is not key=value; {USAGE.splitlines()[0]}")
        if not args.get("ckpt_path"):
            raise ConfigError(f"ckpt_path is required; {USAGE.splitlines()[0]}")
        from .trained import checkpoint_of

        ckpt = checkpoint_of(Path(args["ckpt_path"]), "best", "ckpt_path")  # a .ckpt, or a run dir's best one
        out = Path(args["output_dir"]) if args.get("output_dir") else None
        evaluate(ckpt, rest, out)
    except ConfigError as err:
        report_and_exit(err)


if __name__ == "__main__":
    main()
