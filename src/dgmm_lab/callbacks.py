"""TensorBoard pictures and histograms of a mixture model, every few validation epochs and at the end."""

from __future__ import annotations

import logging
import time

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from . import viz
from .lifecycle import stop_point
from .models.deep_gmm import DeepGMM

log = logging.getLogger(__name__)


class SignalStops(pl.Callback):
    """A Ctrl-C stops the run at the next batch (``lifecycle.SignalGuard`` says why not at once)."""

    def on_train_batch_start(self, *args) -> None:
        stop_point()

    on_validation_batch_start = on_test_batch_start = on_predict_batch_start = on_train_batch_start


class MixturePictures(pl.Callback):
    """Images: component means and model samples (decoded, as images where the data are
    images), reconstructions beside inputs, and for 2-D data a scatter plot with covariance
    ellipses.  Histograms: mixture weights, covariance eigenvalues.  Projector: latent codes
    with labels for deep models (at most ``n_embed`` points), at the end of training.
    Drawn after every ``every_n_epochs``-th validation epoch and after the last."""

    def __init__(self, every_n_epochs: int = 5, n_samples: int = 64, n_embed: int = 500):
        self.every_n_epochs, self.n_samples, self.n_embed = every_n_epochs, n_samples, n_embed

    @staticmethod
    def _writer(trainer: pl.Trainer):
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                return lg.experiment
        return None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        capped = trainer.max_epochs is not None and trainer.max_epochs >= 0  # EM's -1: no cap
        last = (capped and trainer.current_epoch + 1 >= trainer.max_epochs) or trainer.should_stop
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        # after epochs n-1, 2n-1, ... (Lightning's count for check_val_every_n_epoch) and the
        # last: a short run draws once, at its end, not also after its first epoch (0.15 s a
        # draw of the default job's two figures, a tenth of its start-up; issue 21)
        if (trainer.current_epoch + 1) % self.every_n_epochs and not last:
            return
        writer = self._writer(trainer)
        if writer is not None:
            with torch.no_grad():
                self.draw(writer, trainer, pl_module, trainer.current_epoch)

    def on_train_end(self, trainer, pl_module) -> None:
        writer = self._writer(trainer)
        if writer is None or not trainer.is_global_zero or not isinstance(pl_module, DeepGMM):
            return
        dm = trainer.datamodule
        x, y = dm.tensors("val")
        # class labels where the data has them (MNIST halves keep them beside the targets)
        labels = dm.labels("val") if hasattr(dm, "labels") else y
        x, labels = x[: self.n_embed].to(pl_module.device), labels[: self.n_embed]
        with torch.no_grad():
            codes = pl_module.embed(x).float().cpu()
        metadata = labels.tolist() if labels.dim() == 1 else None
        writer.add_embedding(codes, metadata=metadata, tag="latent_codes", global_step=trainer.current_epoch)

    def draw(self, writer, trainer, model, step: int) -> None:
        if isinstance(model, DeepGMM) and model.conditional:
            self.draw_conditional(writer, trainer, model, step)
            return
        mixture = model.display_mixture()
        image_shape = getattr(trainer.datamodule, "image_shape", None)
        x, y = trainer.datamodule.tensors("val")
        x_dev = x[:512].to(model.device)

        writer.add_histogram("mixture/weights", mixture.weights.detach().float().cpu(), step)
        writer.add_histogram("mixture/covariance_eigenvalues",
                             mixture.covariance_eigenvalues().detach().flatten().float().cpu(), step)

        means = mixture.means.detach().float()
        decoded_means = model.decode(means)
        # own generator: drawing pictures must not change the training's random stream
        g = torch.Generator(device=model.device).manual_seed(step)
        samples = model.sample(self.n_samples, g)
        if image_shape is not None and decoded_means is not None:
            writer.add_image("images/component_means", viz.image_grid(decoded_means.reshape(-1, *image_shape)), step)
            writer.add_image("images/samples", viz.image_grid(samples.reshape(-1, *image_shape)), step)
            recon = model.reconstruct(x_dev[:10])
            if recon is not None:
                writer.add_image("images/reconstructions",
                                 viz.side_by_side(x_dev[:10].reshape(-1, *image_shape).cpu(),
                                                  recon.reshape(-1, *image_shape).cpu()), step)
        features = model.embed(x_dev)
        if features.shape[1] == 2:
            fig = viz.scatter_with_ellipses(features, y[:512], mixture, f"epoch {step}")
            writer.add_figure("images/components", fig, step)
            plt.close(fig)
        if x.shape[1:] == (2,):
            fig = viz.scatter_with_ellipses(samples.cpu(), None, mixture if features.shape[1] == 2 else None,
                                            f"samples, epoch {step}")
            writer.add_figure("images/samples_2d", fig, step)
            plt.close(fig)

    def draw_conditional(self, writer, trainer, model, step: int) -> None:
        """For 1-D x and 1-D y: the learned p(y | x) as a heat map, the data on top.  For
        targets that decode to images (MNIST halves): inputs with sampled completions."""
        x, y = trainer.datamodule.tensors("val")
        if hasattr(trainer.datamodule, "decode_target"):
            self.draw_completions(writer, trainer.datamodule, model, x[:8], y[:8], step)
            return
        if x.shape[1:] != (1,) or y.shape[1:] != (1,):
            return
        xs = torch.linspace(float(x.min()), float(x.max()), 150)
        ys = torch.linspace(float(y.min()) - 0.1, float(y.max()) + 0.1, 150)
        gx, gy = torch.meshgrid(xs, ys, indexing="ij")
        log_p = model.objective.log_prob(gx.reshape(-1, 1).to(model.device), gy.reshape(-1, 1).to(model.device))
        fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
        ax.imshow(log_p.exp().reshape(150, 150).T.cpu(), origin="lower", aspect="auto", cmap="viridis",
                  extent=(float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1])))
        ax.scatter(x[:500, 0], y[:500, 0], s=2, c="white", alpha=0.6)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_title(f"p(y | x), epoch {step}")
        fig.tight_layout()
        writer.add_figure("images/conditional_density", fig, step)
        plt.close(fig)

    def draw_completions(self, writer, datamodule, model, x, y, step: int, n_draws: int = 7) -> None:
        g = torch.Generator(device=model.device).manual_seed(step)
        codes = model.objective.sample(x.to(model.device), n_draws, g)                   # (N, S, D)
        grid = viz.completion_grid(x, datamodule.decode_target(y), datamodule.decode_target(codes.cpu()))
        writer.add_image("images/completions", grid, step)


class EpochLines(pl.Callback):
    """One log line per epoch where no progress bar is drawn: EM (its iteration is the
    epoch, a bar over its batches says little) and output to a file or pipe."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the M-step and validation
        if not trainer.is_global_zero:
            return
        m = pl_module.exact_metrics
        if "train/log_likelihood" in m:
            change = m.get("train/log_likelihood_change", 0.0) if int(pl_module.n_iter) > 1 else None
            log.info("EM iteration %d: train log-likelihood %.6f per sample (change %s), val/nll %.6f",
                     int(pl_module.n_iter), m["train/log_likelihood"], "-" if change is None else f"{change:.3g}",
                     m.get("val/nll", float("nan")))
            return
        logged = trainer.callback_metrics
        shown = ", ".join(f"{k} {float(logged[k]):.6g}" for k in ("train/loss", "val/loss", "val/nll") if k in logged)
        last = f"/{trainer.max_epochs - 1}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        log.info("epoch %d%s: %s", trainer.current_epoch, last, shown)


class EpochClock(pl.Callback):
    """Wall seconds of the training epochs this process ran (each with its validation), for
    metrics.json's time/seconds_per_epoch: comparable across models, unlike an EM iteration's
    or a step's own timer."""

    def __init__(self):
        self.epochs, self.seconds, self._start = 0, 0.0, None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._start is not None and not trainer.sanity_checking:
            self.epochs += 1
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # an epoch without validation
        self.on_validation_end(trainer, pl_module)
