"""A trained model outside its run: ``dgmm_lab.load(path)`` and one vocabulary for both models.

The checkpoint is self-contained: it carries the run's resolved config, the input transform
fitted on the training split (pixel scaling, standardisation or min-max; a PCA backbone's
fit is in the weights), the image shape, the target dimension and, for anomaly runs, the
flagging threshold.  New inputs get exactly that preprocessing, never a refit.  Checkpoints
load with ``torch.load(weights_only=True)``: tensors and plain containers, no pickled code.

Inputs X are raw rows (N, ...) as numpy arrays or tensors: the file's feature columns for
``data=array`` (in its units), grey levels 0-255 for MNIST (any shape with 784 values per
image; top halves with 392 for ``data=mnist_halves``).  Outputs are numpy arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from .config import ConfigError
from .data.transform import InputTransform

BATCH = 4096


def load(path, which: str = "best", device: str = "cpu") -> "TrainedModel":
    """The model of a checkpoint, or of a run directory's best (``which="last"``: final)
    checkpoint, on ``device``."""
    from .lifecycle import check_checkpoint
    from .training import build_model

    ckpt = checkpoint_of(Path(path), which)
    content = check_checkpoint(ckpt, "path")
    if not content.get("dgmm_lab_config") or "dgmm_lab_inputs" not in content:
        raise ConfigError(f"path: checkpoint {ckpt} is of an older layout (no input description); "
                          "retrain it with this version (dgmm_lab.evaluate still scores it on its test split)")
    cfg = OmegaConf.create(content["dgmm_lab_config"])
    module = build_model(cfg, content["dgmm_lab_inputs"])
    try:
        module.load_state_dict(content["state_dict"])
    except RuntimeError as err:
        raise ConfigError(f"path: checkpoint {ckpt} does not match the model its config describes "
                          f"({str(err).splitlines()[0]})") from None
    module.anomaly = content.get("dgmm_lab_anomaly")
    return TrainedModel(module.eval().to(device), cfg, ckpt)


def checkpoint_of(path: Path, which: str, key: str = "path") -> Path:
    if which not in ("best", "last"):
        raise ConfigError(f"which={which!r} is not allowed; allowed: best, last")
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist")
    if path.is_file():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = sorted(folder.glob("best-*.ckpt")) if which == "best" else [folder / "last.ckpt"]
    found = [p for p in found if p.is_file()] or ([folder / "last.ckpt"] if (folder / "last.ckpt").is_file() else [])
    if not found:
        raise ConfigError(f"{key}: {path} holds no checkpoint (checkpoints/best-*.ckpt or last.ckpt)")
    return found[-1]


class TrainedModel:
    """What a trained EM-GMM or deep GMM offers; an operation that does not apply raises a
    ValueError saying so.  ``score_samples`` is the model's score of an input, higher = more
    normal: log p(x) (EM, nll), the ELBO (VaDE), -energy (DAGMM)."""

    def __init__(self, module, cfg, checkpoint: Path):
        self.module, self.config, self.checkpoint = module, cfg, checkpoint
        self.transform = InputTransform.from_state(module.inputs["transform"])
        self.objective = getattr(module, "objective", None)
        self.conditional = bool(self.objective is not None and self.objective.conditional)

    @property
    def kind(self) -> str:
        return "em_gmm" if self.objective is None else f"deep_gmm objective={self.objective.name}"

    @property
    def device(self) -> torch.device:
        return self.module.device

    def _offers(self, capability: str) -> None:
        if self.objective is not None:
            self.objective.check_offers(capability)

    def _not_conditional(self, what: str) -> None:
        if self.conditional:
            raise ValueError(f"{what} scores x itself; objective=mdn models y given x: use sample(X, n), "
                             "conditional_mean(X), quantiles(X, q) or score_samples(X, y)")

    @torch.no_grad()
    def _batches(self, X, fn) -> np.ndarray:
        x = self.transform(X)
        return torch.cat([fn(b.to(self.device)).cpu() for b in torch.split(x, BATCH)]).numpy()

    def predict(self, X) -> np.ndarray:
        """(N,) the most probable component of each row."""
        self._offers("cluster")
        return self._batches(X, self.module.objective.cluster if self.objective is not None
                             else lambda b: self.module.evaluate_batch(b)[1])

    def predict_proba(self, X) -> np.ndarray:
        """(N, K) the responsibilities p(component | x) (of y's mixture given x for an MDN)."""
        self._offers("cluster")
        if self.conditional:
            return self._batches(X, lambda b: self.objective.conditional_mixture(b)[0].exp())
        mixture = self.module.display_mixture()
        return self._batches(X, lambda b: mixture.responsibilities(self.module.embed(b).to(mixture.means.dtype)))

    def score_samples(self, X, y=None) -> np.ndarray:
        """(N,) the model's score, higher = more normal (see the class docstring); an MDN
        scores log p(y | x) of the targets y (N, target_dim)."""
        self._offers("density")
        if self.conditional:
            if y is None:
                raise ValueError("objective=mdn scores targets y given x: score_samples(X, y)")
            yt = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(len(y), -1)
            x = self.transform(X)
            with torch.no_grad():
                return torch.cat([self.objective.log_prob(a.to(self.device), b.to(self.device)).cpu()
                                  for a, b in zip(torch.split(x, BATCH), torch.split(yt, BATCH))]).double().numpy()
        return self._batches(X, lambda b: self.module.evaluate_batch(b)[0].double())

    def anomaly_score(self, X) -> np.ndarray:
        """(N,) -score_samples: -log p(x), or DAGMM's energy; higher = more anomalous."""
        self._not_conditional("anomaly_score")
        return -self.score_samples(X)

    @property
    def threshold(self) -> float:
        """The anomaly score above which ``is_anomaly`` flags: the (1 - rate) quantile of the
        validation normals' scores at training time, rate = data.contamination or the data's
        anomaly rate (``anomaly_info`` says which)."""
        if not self.module.anomaly:
            raise ValueError("is_anomaly needs a run trained under the anomaly protocol (data=array with "
                             "data.normal_label set): this checkpoint has no threshold; use anomaly_score")
        return float(self.module.anomaly["threshold"])

    @property
    def anomaly_info(self) -> dict | None:
        return self.module.anomaly

    def is_anomaly(self, X) -> np.ndarray:
        """(N,) bool: anomaly_score > threshold."""
        threshold = self.threshold
        return self.anomaly_score(X) > threshold

    def embed(self, X) -> np.ndarray:
        """(N, D) the features the mixture models (an MDN: its backbone's code of x)."""
        self._offers("embed")
        return self._batches(X, self.module.embed)

    def sample(self, n_or_X, n: int | None = None, seed: int = 0) -> np.ndarray:
        """``sample(n, seed=)``: (n, *raw shape) draws in data space (decoded and mapped back
        to the raw units); an MDN: ``sample(X, n, seed=)`` -> (N, n, target_dim) draws of y."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        if self.conditional:
            if n is None:
                raise ValueError("objective=mdn samples y given x: sample(X, n)")
            x = self.transform(n_or_X).to(self.device)
            return self.objective.sample(x, n, generator).cpu().double().numpy()
        self._offers("sample")
        if not isinstance(n_or_X, (int, np.integer)) or n_or_X < 1:
            raise ValueError(f"sample(n): n={n_or_X!r} must be an integer >= 1")
        with torch.no_grad():
            drawn = self.module.sample(int(n_or_X), generator)
        shape = self.transform.input_shape
        if tuple(drawn.shape[1:]) != tuple(shape) and drawn[0].numel() == self.transform.n_features:
            drawn = drawn.reshape(len(drawn), *shape)
        if tuple(drawn.shape[1:]) != tuple(shape):
            raise ValueError(f"{self.kind} samples features of shape {tuple(drawn.shape[1:])} that its backbone "
                             "cannot map back to inputs")
        return self.transform.invert(drawn.cpu()).numpy()

    def conditional_mean(self, X) -> np.ndarray:
        """(N, target_dim) E[y | x] of an MDN."""
        self._conditional_only("conditional_mean")
        return self._batches(X, self.objective.conditional_mean).astype(np.float64)

    def quantiles(self, X, q) -> np.ndarray:
        """(N, len(q), target_dim) per-coordinate quantiles of y given x: each coordinate's
        marginal is a one-dimensional mixture, inverted by bisection on its exact CDF."""
        self._conditional_only("quantiles")
        q = torch.as_tensor(np.atleast_1d(np.asarray(q, dtype=np.float64)))
        if ((q <= 0) | (q >= 1)).any():
            raise ValueError(f"quantiles: q={q.tolist()} must lie in (0, 1)")
        return self._batches(X, lambda b: mixture_quantiles(*self._marginals(b), q.to(self.device)))

    def _marginals(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        from .mixture.density import covariance_from_precision_cholesky

        log_w, means, prec_chol = (t.double() for t in self.objective.conditional_mixture(x))
        kind = self.objective.covariance_type
        if kind in ("full", "tied"):
            cov = covariance_from_precision_cholesky(prec_chol, kind)
            var = torch.diagonal(cov, dim1=-2, dim2=-1).expand_as(means)
        else:  # diag (N, K, D) or spherical (N, K) precision factors
            var = (prec_chol.pow(-2) if kind == "diag" else prec_chol.pow(-2).unsqueeze(-1)).expand_as(means)
        return log_w.exp(), means, var.sqrt()

    def complete(self, top_halves, n: int, seed: int = 0) -> np.ndarray:
        """(N, n, 28, 28) grey-level images: each top half with n sampled bottom halves
        (runs on data=mnist_halves)."""
        code = self.module.inputs.get("target_code")
        if not self.conditional or code is None:
            raise ValueError("complete needs an objective=mdn run on data=mnist_halves")
        samples = torch.as_tensor(self.sample(top_halves, n, seed))                        # (N, n, code)
        flat = (samples * code["scale"]) @ code["basis"] + code["mean"]
        bottom = flat.reshape(*samples.shape[:2], code["rows"], 28) * 255.0
        top = torch.as_tensor(np.asarray(top_halves, dtype=np.float64)).reshape(len(samples), 1, code["rows"], 28)
        return torch.cat([top.expand(-1, n, -1, -1), bottom.clamp(0, 255)], dim=2).numpy()

    def to_estimator(self):
        """The EM model as a fitted ``dgmm_lab.GaussianMixture`` over its features: its
        ``predict``/``score_samples`` of ``embed(X)`` equal this model's of X."""
        if self.objective is not None:
            raise ValueError(f"to_estimator is for model=em_gmm; this is {self.kind}")
        from .mixture.estimator import GaussianMixture

        m, settings = self.module, self.config.model
        return GaussianMixture.from_mixture(
            m.mixture.to("cpu"), n_iter=int(m.n_iter), lower_bound=float(m.lower_bound), tol=settings.tol,
            reg_covar=settings.reg_covar, max_iter=settings.max_iter, init_params=settings.init_params,
            random_state=settings.seed)

    def _conditional_only(self, what: str) -> None:
        if not self.conditional:
            raise ValueError(f"{what} is for objective=mdn (a density of y given x); this is {self.kind}")


def mixture_quantiles(weights: Tensor, means: Tensor, stds: Tensor, q: Tensor, steps: int = 60) -> Tensor:
    """Quantiles of one-dimensional mixtures: weights (N, K), means and stds (N, K, D), q (Q,)
    -> (N, Q, D), by bisection on the CDF between the extreme components' +-10 std."""
    lo = (means - 10 * stds).amin(1, keepdim=True).expand(-1, len(q), -1).clone()    # (N, Q, D)
    hi = (means + 10 * stds).amax(1, keepdim=True).expand(-1, len(q), -1).clone()
    target = q.view(1, -1, 1)
    for _ in range(steps):
        mid = (lo + hi) / 2
        z = (mid.unsqueeze(2) - means.unsqueeze(1)) / stds.unsqueeze(1)                 # (N, Q, K, D)
        cdf = (weights.view(len(weights), 1, -1, 1) * torch.special.ndtr(z)).sum(2)
        below = cdf < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2
