"""Concept extraction: from positive and negative texts to a direction at every layer.

One forward pass per padded batch captures the residual stream after every decoder layer and
pools each example over its real tokens (no padding, not the first token, which in most models
is an attention sink with an outsized norm). Four methods turn pooled activations into a
direction per layer:

    mean_diff  difference of the class means (CAA), the default
    lda        difference of the class means divided by each dimension's variance (diagonal
               LDA): a few dimensions of the residual stream carry huge values that vary a lot
               between any two texts, and in a plain difference of means they can hold most of
               the direction's length (70-80 % for some concepts on Qwen 0.5B); this shrinks them
               (docs/quality.md: not the default, it did worse on the held-out concepts)
    pca        first principal direction of the paired differences positive[i] - negative[i]
               (uncentered, so their shared shift dominates), signed toward the positive set
    probe      logistic regression per layer; its held-out accuracy ranks layers (Bo et al.)

Per-layer statistics rank layers and size the normalized strength unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from app.progress import Progress
from app.steering.choices import METHODS, Method
from app.steering.engine import SteeringEngine
from app.steering.vectors import SteeringVector


@dataclass
class Activations:
    """Pooled activations of a set of texts: ``pooled`` is ``[n_texts, n_layers, d_model]``."""

    pooled: torch.Tensor
    token_norms: torch.Tensor  # [n_layers] median norm of a real token's residual, per layer
    n_tokens: int  # real tokens processed (padding excluded)


@torch.inference_mode()
def capture(
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> Activations:
    """Run ``texts`` through the model once and pool every layer's output per text."""
    if not texts:
        raise ValueError("no texts to run")
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    n_layers, hidden = engine.n_layers, engine.hidden_size
    device = engine.device
    pooled = torch.zeros(len(texts), n_layers, hidden)
    norms: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    state: dict[str, torch.Tensor] = {}

    def read(layer: int, output: torch.Tensor) -> None:
        hidden_states = output.float()  # [batch, pos, d_model]
        weights = state["weights"]  # [batch, pos, 1]
        state[f"pool{layer}"] = (hidden_states * weights).sum(1) / weights.sum(1)
        norms[layer].append(hidden_states.norm(dim=-1)[weights[..., 0] > 0].cpu())

    n_tokens = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        rows = [encoded[i] for i in batch]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        weights = torch.zeros((len(rows), width, 1))
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
            skip = 1 if len(row) > 1 else 0  # the first token is an attention sink
            weights[r, width - len(row) + skip :, 0] = 1.0
        n_tokens += int(mask.sum())
        state["weights"] = weights.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # The model is held for one forward pass at a time, so a waiting user gets in between batches.
        with engine.read_layers(read):
            engine.base_model(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)
            )
        for layer in range(n_layers):
            pooled[batch, layer] = state[f"pool{layer}"].cpu()
        if progress is not None:
            done = min(start + batch_size, len(order))
            progress(done / len(order), f"read {done}/{len(order)} examples")
    token_norms = torch.stack([torch.cat(layer_norms).median() for layer_norms in norms])
    return Activations(pooled=pooled, token_norms=token_norms, n_tokens=n_tokens)


@dataclass
class LayerStats:
    """Per-layer quality of a concept direction."""

    accuracy: list[float]  # held-out accuracy of classifying pos vs neg along the direction
    separation: list[float]  # d' of the projections: (mean+ - mean-) / pooled std
    residual_norm: list[float]  # typical residual-stream norm
    vector_norm: list[float]  # raw direction norm

    def as_dict(self) -> dict[str, list[float]]:
        return {
            "accuracy": self.accuracy,
            "separation": self.separation,
            "residual_norm": self.residual_norm,
            "vector_norm": self.vector_norm,
        }


def directions(positive: torch.Tensor, negative: torch.Tensor, method: Method) -> torch.Tensor:
    """Directions per layer from pooled activations ``[n, n_layers, d]`` -> ``[n_layers, d]``."""
    if method == "mean_diff":
        return positive.mean(0) - negative.mean(0)
    if method == "lda":
        return _variance_scaled(positive, negative)
    if method == "pca":
        n = min(len(positive), len(negative))
        diffs = (positive[:n] - negative[:n]).transpose(0, 1)  # [n_layers, n, d]
        _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
        first = vh[:, 0, :]  # [n_layers, d] unit
        mean_diff = positive.mean(0) - negative.mean(0)
        scale = (mean_diff * first).sum(-1, keepdim=True)  # signed length of the mean shift along it
        return first * scale  # points toward the positive set, sized like the class gap
    if method == "probe":
        return _probe_directions(positive, negative)[0]
    raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")


def _variance_scaled(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The difference of means with each dimension divided by its variance over all the examples
    (shrunk toward the layer's median variance, so a dimension that barely varies is not blown
    up), sized like the difference of means: only its direction differs."""
    mean_diff = positive.mean(0) - negative.mean(0)  # [n_layers, d]
    variance = torch.cat([positive, negative]).var(0)  # [n_layers, d]
    scaled = mean_diff / (variance + variance.median(dim=-1, keepdim=True).values)
    length = mean_diff.norm(dim=-1, keepdim=True) / scaled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return scaled * length


PROBE_C = 0.1  # inverse L2 strength of the probe (scikit-learn's C), on standardized features


def _probe_directions(positive: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Logistic regression per layer; returns directions and held-out accuracies.

    The same model as scikit-learn's ``LogisticRegression(C=0.1)`` scored by ``cross_val_score``
    (stratified k-fold), but every layer is fitted at once by :func:`_fit_logistic`: fitting 30
    layers x 6 fits one by one with L-BFGS took half of a library build on CPU.
    """
    from sklearn.model_selection import StratifiedKFold

    x = torch.cat([positive, negative]).transpose(0, 1).double()  # [n_layers, n, d]
    y = torch.tensor([1.0] * len(positive) + [0.0] * len(negative), dtype=torch.float64)
    folds = max(2, min(5, len(positive), len(negative)))
    mean_diff = positive.mean(0) - negative.mean(0)
    scale = x.std(1, unbiased=False, keepdim=True) + 1e-6
    z = (x - x.mean(1, keepdim=True)) / scale
    fold_accuracy = []
    for train, test in StratifiedKFold(folds).split(np.zeros(len(y)), y.numpy()):
        w, b = _fit_logistic(z[:, train], y[train])
        scores = (z[:, test] @ w[..., None]).squeeze(-1) + b[:, None]  # [n_layers, n_test]
        fold_accuracy.append(((scores > 0).double() == y[test]).sum(-1).double() / len(test))
    accuracies = np.mean(torch.stack(fold_accuracy).numpy(), axis=0).tolist()
    w = (_fit_logistic(z, y)[0] / scale.squeeze(1)).float()
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return w * (mean_diff * w).sum(-1, keepdim=True), accuracies  # unit direction, sized by the class gap


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, c: float = PROBE_C) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularized logistic regression (intercept not penalized) for many problems at once.

    Minimizes ``sum softplus(-(2y-1)(x.w + b)) + |w|^2 / 2c`` for each ``x[p]`` ``[n, d]`` with
    damped Newton steps. The optimal ``w`` lies in the span of the ``n < d`` examples, so the fit
    runs in an orthonormal basis of that span (``n + 1`` unknowns instead of ``d + 1``).

    Returns:
        ``w`` ``[problems, d]`` and ``b`` ``[problems]``, float64.
    """
    problems, n, _ = x.shape
    eigenvalues, u = torch.linalg.eigh(x @ x.transpose(1, 2))  # Gram matrix [P, n, n]
    keep = eigenvalues > eigenvalues[:, -1:] * 1e-12
    root = eigenvalues.clamp_min(0).sqrt() * keep
    basis = (x.transpose(1, 2) @ u) / torch.where(keep, root, 1.0)[:, None, :] * keep[:, None, :]  # [P, d, n]
    features = torch.cat([u * root[:, None, :], torch.ones(problems, n, 1, dtype=x.dtype)], dim=-1)  # x @ basis, 1
    penalty = torch.full((n + 1,), 1.0 / c, dtype=x.dtype)
    penalty[-1] = 0.0
    signs = 2 * y - 1

    def objective(theta: torch.Tensor) -> torch.Tensor:
        margins = (features @ theta[..., None]).squeeze(-1)
        return torch.nn.functional.softplus(-signs * margins).sum(-1) + 0.5 * (penalty * theta * theta).sum(-1)

    theta = torch.zeros(problems, n + 1, dtype=x.dtype)
    value = objective(theta)
    for _ in range(100):
        p = torch.sigmoid((features @ theta[..., None]).squeeze(-1))
        grad = (features.transpose(1, 2) @ (p - y)[..., None]).squeeze(-1) + penalty * theta
        hessian = features.transpose(1, 2) @ (features * (p * (1 - p))[..., None]) + torch.diag(penalty)
        step = torch.linalg.solve(hessian, grad)
        decrement = (grad * step).sum(-1)
        if float(decrement.max()) < 1e-12:  # Newton converges quadratically: this is machine precision
            break
        t = torch.ones(problems, dtype=x.dtype)
        for _ in range(30):  # backtracking line search, per problem
            short = objective(theta - t[:, None] * step) > value - 0.25 * t * decrement
            if not bool(short.any()):
                break
            t = torch.where(short, t / 2, t)
        theta = theta - t[:, None] * step
        value = objective(theta)
    return (basis @ theta[:, :-1, None]).squeeze(-1), theta[:, -1]


def layer_stats(
    positive: torch.Tensor, negative: torch.Tensor, vectors: torch.Tensor, token_norms: torch.Tensor
) -> LayerStats:
    """Held-out separability along each layer's direction (k-fold, difference of means)."""
    n_layers = vectors.shape[0]
    folds = max(2, min(5, len(positive), len(negative)))
    correct = torch.zeros(n_layers)
    for fold in range(folds):
        pos_test, neg_test = positive[fold::folds], negative[fold::folds]
        pos_train = positive[[i for i in range(len(positive)) if i % folds != fold]]
        neg_train = negative[[i for i in range(len(negative)) if i % folds != fold]]
        direction = pos_train.mean(0) - neg_train.mean(0)  # [n_layers, d]
        midpoint = ((pos_train.mean(0) + neg_train.mean(0)) / 2 * direction).sum(-1)
        pos_score = (pos_test * direction).sum(-1) - midpoint  # [n, n_layers]
        neg_score = (neg_test * direction).sum(-1) - midpoint
        correct += (pos_score > 0).sum(0) + (neg_score <= 0).sum(0)
    accuracy = correct / (len(positive) + len(negative))
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    pos_proj, neg_proj = (positive * unit).sum(-1), (negative * unit).sum(-1)  # [n, n_layers]
    pooled_std = ((pos_proj.var(0) + neg_proj.var(0)) / 2).sqrt().clamp_min(1e-6)
    separation = (pos_proj.mean(0) - neg_proj.mean(0)) / pooled_std
    return LayerStats(
        accuracy=accuracy.tolist(),
        separation=separation.tolist(),
        residual_norm=token_norms.tolist(),
        vector_norm=vectors.norm(dim=-1).tolist(),
    )


def recommend_layers(stats: LayerStats, k: int = 1, ranking: list[float] | None = None) -> list[int]:
    """The ``k`` best layers to steer.

    Steering works best in the early-middle of the network (lesson 07): the concept is
    already represented there and later layers still have room to act on it. So candidates are the
    layers from 20% to 65% of the depth, ranked by held-out accuracy (or ``ranking``), ties broken
    by separation.
    """
    n = len(stats.accuracy)
    low, high = int(round(0.2 * (n - 1))), max(int(round(0.65 * (n - 1))), 0)
    candidates = list(range(low, high + 1)) or list(range(n))
    score = ranking or stats.accuracy
    ordered = sorted(candidates, key=lambda i: (round(score[i], 3), stats.separation[i]), reverse=True)
    return sorted(ordered[:k])


@dataclass
class Extraction:
    vector: SteeringVector
    stats: LayerStats
    probe_accuracy: list[float] | None


def extract(
    engine: SteeringEngine,
    tokenizer: PreTrainedTokenizerBase,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    name: str,
    model_id: str,
    model_fingerprint: str,
    method: Method = "mean_diff",
    top_k_layers: int = 1,
    batch_size: int = 16,
    progress: Progress | None = None,
    metadata: dict | None = None,
) -> Extraction:
    """Extract a concept's vector at every layer, with statistics and recommended layers."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if len(positive) < 2 or len(negative) < 2:
        raise ValueError(
            f"need at least 2 examples on each side (got {len(positive)} positive, {len(negative)} negative)"
        )
    acts = capture(engine, tokenizer, [*positive, *negative], batch_size=batch_size, progress=progress)
    pos, neg = acts.pooled[: len(positive)], acts.pooled[len(positive) :]
    probe_accuracy = None
    if method == "probe":
        vectors, probe_accuracy = _probe_directions(pos, neg)
    else:
        vectors = directions(pos, neg, method)
    stats = layer_stats(pos, neg, vectors, acts.token_norms)
    recommended = recommend_layers(stats, k=top_k_layers, ranking=probe_accuracy)
    info = {
        "recommended_layers": recommended,
        "stats": stats.as_dict(),
        "n_positive": len(positive),
        "n_negative": len(negative),
        "n_tokens": acts.n_tokens,
        **(metadata or {}),
    }
    if probe_accuracy is not None:
        info["probe_accuracy"] = probe_accuracy
    vector = SteeringVector(
        name=name,
        model_id=model_id,
        model_fingerprint=model_fingerprint,
        hidden_size=engine.hidden_size,
        layers={layer: vectors[layer].clone() for layer in range(engine.n_layers)},
        norms={layer: float(acts.token_norms[layer]) for layer in range(engine.n_layers)},
        method=method,
        metadata=info,
    )
    return Extraction(vector=vector, stats=stats, probe_accuracy=probe_accuracy)
