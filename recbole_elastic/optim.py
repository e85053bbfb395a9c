"""Optimizers for models with row-sparse gradients (ELASTIC's interest memory with ``memory_sparse_updates``).

An ``nn.Embedding`` / ``nn.EmbeddingBag`` built with ``sparse=True`` gets a sparse gradient that holds only the rows
the batch looked up. RecBole's optimizers (``torch.optim.Adam`` ...) reject sparse gradients, and a dense gradient
makes every step cost O(table size). :func:`build_optimizer` therefore splits the parameters:

* parameters with dense gradients get exactly the optimizer RecBole's ``Trainer._build_optimizer`` builds from
  ``learner``, ``learning_rate`` and ``weight_decay``;
* the sparse-gradient tables get :class:`LazyAdam`, which updates only the rows in the gradient (O(rows touched)).

:class:`SparseAwareOptimizer` steps both as one optimizer, so RecBole's Trainer (``zero_grad``, ``step``,
checkpoints via ``state_dict`` / ``load_state_dict``, ``GradScaler`` via ``param_groups``) uses it unchanged.

Why our own LazyAdam rather than ``torch.optim.SparseAdam``: SparseAdam has no weight decay (RecBole's
``weight_decay`` would be silently dropped), rejects dense gradients, and puts ``eps`` outside the bias correction
(``sqrt(v) + eps`` instead of Adam's ``sqrt(v / (1 - beta2^t)) + eps``), so even a table whose rows are all
touched every step would not follow Adam. LazyAdam applies torch's Adam (or AdamW) formula to the touched rows.

Gradient clipping: ``torch.nn.utils.clip_grad_norm_`` raises NotImplementedError on a sparse gradient (torch 2.13),
so a trainer that clips must use :func:`clip_grad_norm_` here (same result, sparse gradients accepted).

Distributed training: see :func:`prepare_sparse_gradients_for_ddp` and :func:`sync_grad_loss`.
"""

from functools import partial
from logging import getLogger
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from recbole.trainer.trainer import Trainer

from recbole_elastic.errors import ConfigError

OptimizerLike = Union[torch.optim.Optimizer, "SparseAwareOptimizer"]


def sparse_gradient_parameters(model: nn.Module) -> List[nn.Parameter]:
    """Weights of the ``nn.Embedding`` / ``nn.EmbeddingBag`` modules built with ``sparse=True`` (DDP's rule too)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]


class LazyAdam(torch.optim.Optimizer):
    """Adam for row-sparse gradients: each step updates only the rows present in the gradient (lazy Adam).

    For the rows ``r`` of a sparse COO gradient (one sparse dimension: rows of a table), the step is torch's Adam
    restricted to those rows: ``m[r]``, ``v[r]`` and ``p[r]`` change exactly as ``torch.optim.Adam`` would change
    them, bias correction included (from the parameter's global step count, as ``torch.optim.SparseAdam``). Every
    other row keeps its value and its moments. Dense Adam would instead decay an untouched row's moments and keep
    moving it by its momentum; a row that has never been touched has zero moments, so both leave it alone.

    ``weight_decay`` is Adam's L2 term (``g += wd * p``), or AdamW's decoupled decay (``p *= 1 - lr * wd``) with
    ``decoupled_weight_decay``, and reaches only the touched rows. A dense gradient gets the same update on all
    rows, i.e. exactly dense Adam.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, {**defaults, "decoupled_weight_decay": decoupled_weight_decay})

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: Dict[str, Any]) -> None:
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1

        grad, rows = param.grad, None
        if grad.is_sparse:
            if grad.sparse_dim() != 1:
                raise ValueError(f"LazyAdam needs row-sparse gradients (sparse_dim 1), not {grad.sparse_dim()}")
            grad = grad.coalesce()  # a row looked up several times appears once, with its gradients summed
            rows, grad = grad.indices()[0], grad.values()

        # Work on the touched rows (copies), then write them back; a dense gradient works on the tensors in place.
        def take(tensor: torch.Tensor) -> torch.Tensor:
            return tensor if rows is None else tensor.index_select(0, rows)

        value, exp_avg, exp_avg_sq = take(param), take(state["exp_avg"]), take(state["exp_avg_sq"])
        if weight_decay:
            if group["decoupled_weight_decay"]:
                value.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(value, alpha=weight_decay)
        # torch.optim.Adam's single-tensor update, operation for operation.
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2 = 1 - beta2 ** state["step"]
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
        value.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
        if rows is not None:
            param.index_copy_(0, rows, value)
            state["exp_avg"].index_copy_(0, rows, exp_avg)
            state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)


class SparseAwareOptimizer:
    """RecBole's optimizer for the dense-gradient parameters and :class:`LazyAdam` for the row-sparse ones, as one.

    It has what RecBole's Trainer and ``torch.amp.GradScaler`` use of an optimizer: ``zero_grad``, ``step``,
    ``state_dict``, ``load_state_dict`` and ``param_groups`` (the dense optimizer's groups, then LazyAdam's).
    It is not a ``torch.optim.Optimizer`` subclass (learning-rate schedulers, which check that, would need one
    scheduler per inner optimizer: ``.dense`` and ``.sparse``).
    """

    def __init__(self, dense: torch.optim.Optimizer, sparse: LazyAdam) -> None:
        self.dense = dense
        self.sparse = sparse

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        if closure is not None:  # evaluate it once, for both optimizers
            with torch.enable_grad():
                loss = closure()
        self.dense.step()
        self.sparse.step()
        return loss

    def state_dict(self) -> Dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if set(state_dict) != {"dense", "sparse"}:
            raise ValueError(
                "This optimizer state was not saved by a SparseAwareOptimizer (was the checkpoint trained with "
                "another memory_sparse_updates setting?)."
            )
        self.dense.load_state_dict(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])

    def __repr__(self) -> str:
        return f"SparseAwareOptimizer(dense={self.dense!r}, sparse={self.sparse!r})"


def recbole_optimizer(config, model: nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
    """The optimizer RecBole's ``Trainer._build_optimizer`` builds from ``config`` (its own code, run on ``config``).

    ``kwargs`` are that method's: ``params``, ``learner``, ``learning_rate``, ``weight_decay``.
    """
    stand_in_trainer = SimpleNamespace(
        config=config,
        model=model,
        learner=config["learner"],
        learning_rate=config["learning_rate"],
        weight_decay=config["weight_decay"],
        logger=getLogger(),
    )
    return Trainer._build_optimizer(stand_in_trainer, **kwargs)


def build_optimizer(
    config, model: nn.Module, build_dense: Optional[Callable[..., torch.optim.Optimizer]] = None, **kwargs: Any
) -> OptimizerLike:
    """The optimizer for ``model``: RecBole's, with the row-sparse tables (if any) moved to :class:`LazyAdam`.

    ``kwargs`` are RecBole's ``_build_optimizer`` keywords (``params``, default ``model.parameters()``;
    ``learner``, ``learning_rate``, ``weight_decay``, default from ``config``). ``build_dense(params=..., **kwargs)``
    builds the optimizer of the dense-gradient parameters; pass a trainer's ``super()._build_optimizer``, or leave
    it None for :func:`recbole_optimizer`. Without sparse-gradient parameters this returns that optimizer for all
    parameters, i.e. exactly what RecBole would build.
    """
    build_dense = build_dense or partial(recbole_optimizer, config, model)
    params = list(kwargs.pop("params", model.parameters()))
    sparse_ids = {id(p) for p in sparse_gradient_parameters(model)}
    sparse = [p for p in params if id(p) in sparse_ids]
    if not sparse:
        return build_dense(params=params, **kwargs)

    learner = kwargs.get("learner", config["learner"]).lower()
    if learner not in ("adam", "adamw"):
        raise ConfigError(
            f"learner = {learner!r} cannot update the interest memory sparsely (memory_sparse_updates needs learner "
            "'adam' or 'adamw'). Set memory_sparse_updates: False, or use learner adam/adamw."
        )
    lazy_adam = LazyAdam(
        sparse,
        lr=kwargs.get("learning_rate", config["learning_rate"]),
        weight_decay=kwargs.get("weight_decay", config["weight_decay"]) or 0.0,
        decoupled_weight_decay=learner == "adamw",
    )
    dense = [p for p in params if id(p) not in sparse_ids]
    if not dense:
        return lazy_adam
    return SparseAwareOptimizer(build_dense(params=dense, **kwargs), lazy_adam)


@torch.no_grad()
def clip_grad_norm_(
    parameters: Union[torch.Tensor, Iterable[torch.Tensor]],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: Optional[bool] = None,
) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also accepts sparse gradients (torch's raises NotImplementedError).

    Same arguments and result: a sparse gradient's norm is the norm of its coalesced values, i.e. of the dense
    gradient. ``foreach`` is accepted for compatibility and ignored.
    """
    parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not any(g.is_sparse for g in grads):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
    norms = [torch.linalg.vector_norm(g.coalesce().values() if g.is_sparse else g, norm_type) for g in grads]
    total_norm = torch.linalg.vector_norm(torch.stack(norms), norm_type)
    if error_if_nonfinite and not torch.isfinite(total_norm):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite, so it cannot be clipped.")
    clip_coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(clip_coef)
    return total_norm


def prepare_sparse_gradients_for_ddp(model: nn.Module, backend: str) -> bool:
    """Make ``model``'s sparse-gradient tables fit DDP on ``backend``; return whether they stay sparse.

    Call it before the model is wrapped in ``DistributedDataParallel`` (DDP reads ``module.sparse`` then) and before
    the optimizer is built (it sorts the parameters by that flag).

    * gloo all-reduces sparse gradients: DDP averages them over the ranks into one sparse gradient holding the
      union of the ranks' rows, so the tables stay sparse (checked with ``benchmarks/ddp_sparse_gradients.py``).
    * NCCL (and any other backend) has no general sparse all-reduce (pytorch/pytorch#22400), so every
      ``sparse=True`` table is switched to dense gradients: each step then all-reduces and updates the whole
      table, as with ``memory_sparse_updates: False``. Rows differ between ranks, so all-reducing only the
      touched rows would need an all-gather of (index, row) pairs first: not done here.
    """
    if backend == "gloo":
        return True
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            module.sparse = False
    return False


def sync_grad_loss(model: nn.Module) -> Union[torch.Tensor, int]:
    """RecBole's ``AbstractTrainer.sync_grad_loss`` (``sum(p) * 0`` over the parameters) without the sparse tables.

    RecBole adds that zero so every parameter gets a gradient for DDP to all-reduce. For a sparse-gradient table
    the zero is a *dense* gradient: autograd adds it to the sparse one, the result is dense, and DDP raises
    "Expected variable to have sparse gradient". The sparse tables are left out; they must be used by every batch
    (ELASTIC's interest memory is), or DDP would wait for their gradient.
    """
    sparse_ids = {id(p) for p in sparse_gradient_parameters(model)}
    return sum((p.sum() * 0 for p in model.parameters() if id(p) not in sparse_ids), 0)
