"""RecBole's trainer as the plugin's run path uses it: plain subclasses, chosen by one :func:`get_trainer`.

* :class:`ElasticTrainer` is RecBole's ``Trainer`` that also times each training epoch, keeps the validation score
  of each evaluation, and writes checkpoints atomically (RecBole writes in place, so a crash mid-write would leave
  half a checkpoint where the last good one was). Checkpoints are named ``<model>-<dataset>-<time>.pth`` (``-1``,
  ``-2``, ... after the time when a run in the same second has one), a name claimed by creating the file when
  training starts (RecBole only checks a name when the trainer is built, so two runs started in the same second
  would share one file), and a resumed run writes its own file (RecBole would keep saving into, and so replace,
  the file it resumed from). Each checkpoint also keeps the random state training goes on from, so a resumed
  run trains the epochs an uninterrupted run would have (:mod:`recbole_elastic.random_state`).
* :class:`DistributedElasticTrainer` is that trainer for distributed configs (``single_spec`` False). RecBole
  1.2.1 assumes CUDA and a shared clock; this trainer

  - builds DDP without ``device_ids`` on CPU (a CPU module rejects them), and converts BatchNorm layers to
    SyncBatchNorm only on CUDA (it only runs on GPUs);
  - gives every rank the checkpoint file name rank 0 claimed (RecBole derives it from each process's local time);
  - before loading the best model, waits for every rank (barrier); then rank 0 reads the checkpoint it wrote and
    broadcasts the weights, so the other ranks, even on other machines, never read a file they may not have;
  - after training, compares digests of the ranks' parameters (logged if they differ: gradients were not
    synchronised) and reports them as ``rank_parameter_digests``.

  The training loop is RecBole's, gradient synchronisation included (``set_reduce_hook`` + ``sync_grad_loss``).

* Both build the optimizer with :func:`recbole_elastic.optim.build_optimizer`: RecBole's optimizer, except for
  row-sparse gradient tables (ELASTIC's interest memory with ``memory_sparse_updates``), which get a lazy Adam that
  updates only the rows a batch touched (:class:`SparseOptimizerMixin`). ``register()`` makes
  :class:`SparseAwareTrainer` RecBole's ``ELASTICTrainer``, so RecBole's own ``run_recbole`` trains it too.
* Both follow the learning-rate warmup and decay of ``warmup_steps`` and ``lr_schedule`` when set
  (:class:`LearningRateScheduleMixin`, :mod:`recbole_elastic.schedule`); by default RecBole's constant rate.
* Both leave each user's input items out of full-ranking evaluation when ``eval_exclude_history`` is set
  (:class:`HistoryExclusionMixin`); by default they rank every item, as RecBole does for sequential models.

Models whose RecBole trainer is not ``Trainer`` itself (S3Rec's pre-training trainer, knowledge-aware models'
trainers) get the same behaviour through the same mixins on top of their own trainer class.
"""

import functools
import math
import os
import time
from logging import getLogger
from typing import Any, Dict, List, Optional, Tuple, Type

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recbole.trainer import Trainer
from recbole.utils import ModelType, get_local_time, set_color
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_elastic.atomic import atomic_path, claim_new_file
from recbole_elastic.compat import load_checkpoint
from recbole_elastic.errors import ConfigError
from recbole_elastic.memory_guard import check_output_memory
from recbole_elastic.optim import build_optimizer, prepare_sparse_gradients_for_ddp
from recbole_elastic.optim import sync_grad_loss as sparse_aware_sync_grad_loss
from recbole_elastic.process_group import broadcast_object, gather_object, parameter_digest
from recbole_elastic.random_state import capture_random_state, restore_random_state
from recbole_elastic.schedule import attach_schedule, learning_rate_schedule

# One line per epoch on a quiet console (see quick_start.start_logging); RecBole's own lines go to the log file.
EPOCH_LOGGER = getLogger("recbole_elastic.epochs")


class SparseOptimizerMixin:
    """Row-sparse gradient tables on top of any RecBole trainer: LazyAdam for them, RecBole's optimizer for the
    rest; in a distributed run, sparse gradients kept on gloo (made dense elsewhere) and a gradient-sync term that
    leaves them sparse. See :mod:`recbole_elastic.optim`. Models without such tables train exactly as in RecBole."""

    def __init__(self, config, model) -> None:
        if dist.is_available() and dist.is_initialized():  # before the optimizer is built and DDP wraps the model
            prepare_sparse_gradients_for_ddp(model, dist.get_backend())
        super().__init__(config, model)

    def _build_optimizer(self, **kwargs):
        return build_optimizer(self.config, self.model, build_dense=super()._build_optimizer, **kwargs)

    def sync_grad_loss(self):
        return sparse_aware_sync_grad_loss(self.model)


class OutputMemoryGuardMixin:
    """Before training starts, stop with a clear message when the output layer's logits cannot fit in memory
    (:func:`recbole_elastic.memory_guard.check_output_memory`)."""

    def fit(self, *args, **kwargs):
        n_items = getattr(self.model, "n_items", None)
        if n_items is not None:
            check_output_memory(self.config, n_items)
        return super().fit(*args, **kwargs)


class LearningRateScheduleMixin:
    """Learning-rate warmup and decay (``warmup_steps``, ``lr_schedule``) on top of any RecBole trainer, stepped
    once per optimizer step; see :mod:`recbole_elastic.schedule`. By default (no warmup, constant) nothing is
    attached: RecBole's constant learning rate."""

    def __init__(self, config, model) -> None:
        self.lr_schedule = learning_rate_schedule(config)  # a bad value stops the run before the trainer is built
        super().__init__(config, model)

    def fit(self, train_data, *args, **kwargs):
        if self.lr_schedule.is_constant:
            return super().fit(train_data, *args, **kwargs)
        steps_per_epoch = len(train_data)  # this rank's batches under DDP: one optimizer step each
        handles = attach_schedule(
            self.optimizer,
            self.lr_schedule,
            total_steps=self.epochs * steps_per_epoch,
            first_step=self.start_epoch * steps_per_epoch,  # a resumed run continues where its checkpoint ended
        )
        try:
            return super().fit(train_data, *args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()


class HistoryExclusionMixin:
    """``eval_exclude_history``: full-ranking evaluation leaves out the items of each sample's input sequence.

    RecBole excludes a general model's training items from its ranking but ranks every item for a sequential model.
    Published sequential results often exclude the history (generative-recommenders masks the items of the
    model's input, its last ``MAX_ITEM_LIST_LENGTH`` items; SASRec's paper samples negatives among unseen items),
    so their figures are comparable only under the same rule. A held-out item that also occurs in its input
    sequence is excluded too, and so counts as a miss, as in those evaluations.
    """

    def __init__(self, config, model) -> None:
        self.exclude_history = bool(config["eval_exclude_history"]) if "eval_exclude_history" in config else False
        if self.exclude_history and config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
            raise ConfigError(
                f"eval_exclude_history is for sequential models; {config['model']} is not one (RecBole already "
                "leaves a general model's training items out of its ranking). Remove eval_exclude_history."
            )
        super().__init__(config, model)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.exclude_history:
            self._exclude_input_items(interaction, scores)
        return interaction, scores, positive_u, positive_i

    def _exclude_input_items(self, interaction, scores: torch.Tensor) -> None:
        history = interaction[self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"]]  # [B, N], 0 pads
        scores.scatter_(1, history.to(scores.device), -math.inf)  # padding, item 0, is excluded already

    @torch.no_grad()
    def held_out_ranks(self, test_data) -> Dict[str, Tuple[int, Optional[int]]]:
        """Each test user's 0-based rank of their held-out item, under both rules: ``(rank, rank without the
        input items)``, the second None for a model that is not sequential. Keys are user tokens (the ids of the
        dataset's files).

        ``rank`` is RecBole's full ranking (padding excluded, and a general model's training items); the second
        leaves out the input sequence's items as ``eval_exclude_history`` does, whatever this trainer's setting.
        Items tied with the target count as ranked below it; an excluded target is a miss, ranked after every item.
        One pass over ``test_data`` with the model as it is (after ``evaluate``, the best one). Leave-one-out
        only: each user has one held-out item. Metrics follow, e.g. NDCG@10 = 1 / log2(rank + 2) if rank < 10.
        """
        self.model.eval()
        self.tot_item_num = test_data._dataset.item_num
        sequential = self.config["MODEL_TYPE"] == ModelType.SEQUENTIAL
        user_field = self.config["USER_ID_FIELD"]
        ranks: Dict[str, Tuple[int, Optional[int]]] = {}
        for batch in test_data:
            interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batch)  # RecBole's rule
            every_item = _target_ranks(scores, positive_u, positive_i)
            if sequential:
                self._exclude_input_items(interaction, scores)
                without_inputs = _target_ranks(scores, positive_u, positive_i)
            else:
                without_inputs = [None] * len(every_item)
            users = test_data._dataset.id2token(user_field, interaction[user_field][positive_u].cpu().numpy())
            for user, rank, rank_without_inputs in zip(users.tolist(), every_item, without_inputs):
                if user in ranks:
                    raise ValueError(f"user {user} has more than one test item; held_out_ranks expects leave-one-out")
                ranks[user] = (rank, rank_without_inputs)
        return ranks


def _target_ranks(scores: torch.Tensor, positive_u: torch.Tensor, positive_i: torch.Tensor) -> List[int]:
    """0-based rank of each held-out item (``scores[positive_u, positive_i]``) in its row; -inf (excluded) is a
    miss, ranked after every item."""
    target_scores = scores[positive_u, positive_i].unsqueeze(1)
    ranks = (scores[positive_u] > target_scores).sum(dim=1)
    ranks[target_scores.squeeze(1) == -math.inf] = scores.shape[1]
    return ranks.tolist()


class RecordingMixin:
    """Epoch times, the validation curve and atomic checkpoint writes, on top of any RecBole trainer."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.epoch_seconds: List[float] = []  # wall time of each training epoch run
        self.valid_curve: List[float] = []  # the validation score after each evaluation
        self._epoch_line: Optional[str] = None  # the last training epoch's console line, until validation ends it
        model_and_data = f"{config['model']}-{config['dataset']}"
        self.checkpoint_stem = os.path.join(self.checkpoint_dir, f"{model_and_data}-{self.checkpoint_time()}")
        self.saved_model_file = f"{self.checkpoint_stem}.pth"  # the name wanted; claimed when training starts
        self._claimed_file: Optional[str] = None  # the empty file this process created to claim its name
        self._train_data = None  # the loader fit() trains on, whose random state each checkpoint keeps
        self._resumed_random_state: Optional[Dict[str, Any]] = None  # the resumed checkpoint's, until fit() starts

    def checkpoint_time(self) -> str:
        """The time in this run's checkpoint name: RecBole's, to the second."""
        return get_local_time()

    def claim_checkpoint_file(self) -> None:
        """Claim this run's checkpoint name by creating it: ``<stem>.pth``, else ``<stem>-1.pth``, ... (runs started
        in the same second, even side by side in other processes, get distinct files). Called when training starts
        or resumes, so a trainer that only evaluates creates nothing; a claim already made is kept."""
        if self._claimed_file is None:
            self._claimed_file = claim_new_file(self.checkpoint_stem, ".pth")
        self.saved_model_file = self._claimed_file

    def _release_unwritten_checkpoint(self) -> None:
        """Remove the claimed file if no checkpoint was written into it (``saved=False``, or a failure first)."""
        claimed = self._claimed_file
        if claimed and os.path.isfile(claimed) and os.path.getsize(claimed) == 0:  # a checkpoint is never empty
            os.unlink(claimed)
            self._claimed_file = None

    def resume_checkpoint(self, resume_file: str) -> None:
        """RecBole's resume (weights, optimiser, best score, next epoch), saving into this run's own file.

        The resumed state is written to that file at once, so it holds the best model so far even if training
        never improves on it; the file resumed from is never written.
        """
        super().resume_checkpoint(resume_file)
        self._resumed_random_state = load_checkpoint(resume_file, map_location="cpu").get("random_state")
        try:
            self.claim_checkpoint_file()  # RecBole points saved_model_file at the file resumed from: this run's own
            self._save_checkpoint(self.start_epoch - 1, verbose=False)
        except BaseException:
            self._release_unwritten_checkpoint()
            raise
        self._resumed = True

    def fit(self, train_data, valid_data=None, *args, **kwargs):
        try:
            # Inside the try: under DDP the claim ends in a collective, where a kill or a lost rank raises.
            self.claim_checkpoint_file()
            self._train_data = train_data
            self._measure_restored_best(valid_data)
            self._restore_random_state(train_data)
            result = super().fit(train_data, valid_data, *args, **kwargs)
        finally:
            self._release_unwritten_checkpoint()
        self._log_epoch()  # the last epoch, when no validation followed it
        self._log_early_stop()
        return result

    def _measure_restored_best(self, valid_data) -> None:
        """A resumed run's best validation metrics so far, measured before training on the restored model.

        RecBole's checkpoint keeps the best score but not its metrics, so a resumed run whose epochs never beat it
        would return none (``best valid: None``).
        """
        if getattr(self, "_resumed", False) and valid_data and self.eval_step > 0:
            self.best_valid_result = self.evaluate(valid_data, load_best_model=False, show_progress=False)
            self.logger.info(set_color("restored best valid", "blue") + f": {self.best_valid_result}")

    def _restore_random_state(self, train_data) -> None:
        """A resumed run's random streams, as the checkpoint left them, so that its epochs repeat those an
        uninterrupted run would have trained (:mod:`recbole_elastic.random_state`)."""
        if not getattr(self, "_resumed", False):
            return
        if self._resumed_random_state is None:
            self.logger.info(
                "The checkpoint keeps no random state (written by an older recbole-elastic): the resumed epochs draw "
                "their batch order and dropout from the seed again, so they differ from an uninterrupted run's."
            )
            return
        restore_random_state(self._resumed_random_state, train_data, process_wide=self.config["single_spec"])

    def _log_early_stop(self) -> None:
        """Say on the console that early stopping ended training (RecBole writes it to the log file only)."""
        if self.cur_step <= self.stopping_step:  # RecBole stops as soon as cur_step passes stopping_step
            return
        last = self.start_epoch + len(self.epoch_seconds) - 1
        best = last - self.cur_step * self.eval_step
        EPOCH_LOGGER.info(
            f"stopped early after epoch {last}: valid {self.valid_metric} did not improve on epoch {best}'s "
            f"{self.best_valid_score:.4f} in {self.cur_step} validation{'s' if self.cur_step > 1 else ''} "
            f"(stopping_step {self.stopping_step})"
        )

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        self._log_epoch()  # the previous epoch, when no validation followed it
        start = time.perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self.epoch_seconds.append(time.perf_counter() - start)
        losses = loss if isinstance(loss, tuple) else (loss,)
        train = ", ".join(f"{part:.4f}" for part in losses)
        self._epoch_line = f"epoch {epoch_idx}: train loss {train} ({self.epoch_seconds[-1]:.1f} s)"
        return loss

    def _valid_epoch(self, *args, **kwargs):
        start = time.perf_counter()
        score, result = super()._valid_epoch(*args, **kwargs)
        self.valid_curve.append(float(score))
        self._log_epoch(f", valid {self.valid_metric} {score:.4f} ({time.perf_counter() - start:.1f} s)")
        return score, result

    def _log_epoch(self, validation: str = "") -> None:
        """Log the pending epoch's one console line (training, then validation if any)."""
        if self._epoch_line:
            EPOCH_LOGGER.info(self._epoch_line + validation)
        self._epoch_line = None

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint plus the random state training goes on from, written atomically."""
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return  # rank 0 writes, as in RecBole
        final = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {  # the keys of RecBole's Trainer._save_checkpoint, which its resume_checkpoint reads
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        if self._train_data is not None:
            state["random_state"] = capture_random_state(self._train_data)
        elif self._resumed_random_state is not None:  # a resume writes its restored state before fit() has a loader
            state["random_state"] = self._resumed_random_state
        with atomic_path(final) as temporary:
            torch.save(state, temporary, pickle_protocol=4)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {final}")

    def run_record(self) -> Dict[str, Any]:
        """What the run returns about training: epochs run, seconds per epoch, validation curve."""
        return {
            "epochs": len(self.epoch_seconds),
            "first_epoch": self.start_epoch,  # 0, or the epoch after a resumed checkpoint's
            "epoch_seconds": self.epoch_seconds,
            "valid_curve": self.valid_curve,
        }


class DistributedMixin:
    """A RecBole trainer's distributed behaviour on CPU (gloo) and CUDA (NCCL); see the module docstring."""

    def __init__(self, config, model) -> None:
        on_cuda = config["device"].type == "cuda"
        if on_cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # RecBole's AbstractTrainer builds DDP with device_ids=[local_rank], which a CPU module rejects: let it
        # build the single-process trainer, then wrap the model here.
        config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = False
        self.distributed_model = DistributedDataParallel(
            self.model, device_ids=[config["local_rank"]] if on_cuda else None
        )
        self.rank_parameter_digests: List[str] = []

    def claim_checkpoint_file(self) -> None:
        """Rank 0 claims the checkpoint name; every rank gets it (fit and resume run on all ranks)."""
        if dist.get_rank() == 0:
            super().claim_checkpoint_file()
        self.saved_model_file = broadcast_object(self.saved_model_file)

    def fit(self, *args, **kwargs):
        result = super().fit(*args, **kwargs)
        self.rank_parameter_digests = gather_object(parameter_digest(self.model))
        if len(set(self.rank_parameter_digests)) > 1:
            self.logger.warning(
                f"The ranks' parameters differ after training (digests {self.rank_parameter_digests}): gradients "
                "were not synchronised. A custom _train_epoch must call set_reduce_hook() and add sync_grad_loss()."
            )
        return result

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            self._load_from_rank_zero(model_file or self.saved_model_file)
        return super().evaluate(eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress)

    def _load_from_rank_zero(self, checkpoint_file: str) -> None:
        dist.barrier()  # every rank has finished training, and rank 0 has written the checkpoint
        other_parameter = None
        if dist.get_rank() == 0:
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            other_parameter = checkpoint.get("other_parameter")
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        for tensor in self.model.state_dict().values():  # share storage with the parameters and buffers
            dist.broadcast(tensor, src=0)
        self.model.load_other_parameter(broadcast_object(other_parameter))

    def run_record(self) -> Dict[str, Any]:
        return {
            **super().run_record(),
            "rank_parameter_digests": self.rank_parameter_digests,
            "world_size": dist.get_world_size(),
        }


class SparseAwareTrainer(
    HistoryExclusionMixin, LearningRateScheduleMixin, OutputMemoryGuardMixin, SparseOptimizerMixin, Trainer
):
    """RecBole's ``Trainer`` for models with row-sparse gradient tables, with the output-memory check, the
    learning-rate schedule and ``eval_exclude_history`` (RecBole's ``<Model>Trainer`` for the plugin's models after
    ``register()``)."""


class ElasticTrainer(RecordingMixin, SparseAwareTrainer):
    """RecBole's ``Trainer`` with epoch times, the validation curve, atomic checkpoint writes and sparse updates."""


class DistributedElasticTrainer(DistributedMixin, ElasticTrainer):
    """:class:`ElasticTrainer` for a distributed run, on CPU (gloo) or CUDA (NCCL)."""


def get_trainer(config) -> Type:
    """The trainer class for ``config``'s model: RecBole's choice for that model, with the plugin's behaviour,
    in its distributed form when the config is distributed (``single_spec`` False)."""
    return _trainer_class(recbole_get_trainer(config["MODEL_TYPE"], config["model"]), not config["single_spec"])


@functools.lru_cache(maxsize=None)
def _trainer_class(base: Type, distributed: bool) -> Type:
    if base in (Trainer, SparseAwareTrainer):
        return DistributedElasticTrainer if distributed else ElasticTrainer
    mixins = (
        RecordingMixin,
        HistoryExclusionMixin,
        LearningRateScheduleMixin,
        OutputMemoryGuardMixin,
        SparseOptimizerMixin,
    )
    mixins = (DistributedMixin, *mixins) if distributed else mixins
    prefix = "DistributedRecording" if distributed else "Recording"
    return type(f"{prefix}{base.__name__}", (*mixins, base), {})
