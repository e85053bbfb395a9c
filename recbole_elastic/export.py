"""Exporting a trained sequential model for serving without PyTorch: an ONNX user tower, the item matrix, id maps.

``python run_recbole_elastic.py --export=onnx --checkpoint=saved/X.pth --output=DIR`` writes to ``DIR``:

* ``user_tower.onnx``: the model's ``forward(item_seq, item_seq_len)`` in eval mode, i.e. histories of internal
  item ids ``[B, N]`` (int64, left-aligned, padded with 0 to ``N = MAX_ITEM_LIST_LENGTH``) and their lengths
  ``[B]`` (int64, 1..N) -> user vectors ``[B, H]`` (float32). The batch axis is dynamic; N is fixed. With
  ``score_temperature`` the vectors are the outputs L2-normalised and divided by it (``score_queries``).
* ``item_embeddings.npy``: the item embedding matrix ``[n_items, H]`` (float32, row 0 is padding; with
  ``score_temperature``, its rows L2-normalised); a user's scores are ``user_vector @ items.T``.
* ``export.json``: model and dataset names, N, H, the opset, the padding id (0) and ``item_tokens`` (internal id
  -> external token; ``item_tokens.index(token)`` is the other way), plus the largest difference between
  onnxruntime's and PyTorch's user vectors on random histories, measured right after the export.

The graph is torch's own exporter's (``torch.onnx.export(dynamo=True)``, opset :data:`ONNX_OPSET`) run on the
model itself, with these export-only changes, each computing the same function:

* The causal models' eval ``forward`` sorts the batch by history length and encodes it in groups of rows, each
  cut to its longest history (a Python loop whose count and shapes depend on the lengths, which the exporter would
  fix to the example's); :class:`UserTower` calls the function each group runs, ``last_position_output``, on the
  whole batch at N: rows are independent in eval mode. The ONNX graph therefore encodes every row at N and, for
  CausalELASTIC, holds the whole batch's ``[B, N, k, H]`` interest states at once: bound its memory with the
  batch size.
* ``torch.cummax`` (CausalELASTIC's running max inside a chunk of ``causal_chunk_size`` positions) has no ONNX
  translation; it is decomposed into a max over the causal ``[chunk, chunk]`` mask (:func:`cummax_by_masked_max`),
  which gives the same values and indices.
* While tracing, three ops are written as the plain tensor ops they compute (:class:`PlainOpsWhileTracing`):
  selecting or assigning rows by a boolean mask (CausalELASTIC's real positions) as row indexing, which the
  exporter would write element by element over whole ``[B, N, k, H]`` tensors; the interest memory's
  ``EmbeddingBag`` (each interest's weighted sum of its retrieved slots) as a gather and a product, which the
  exporter would write as an ONNX loop over the bags; and BatchNorm on running statistics (ELASTIC's retrieval
  queries in eval mode, CausalELASTIC's ``memory_query_norm: running``) as its affine map, which the exporter
  cannot trace when the rows are real positions (a data-dependent count). The first two made onnxruntime 20
  times slower than PyTorch on CausalELASTIC.

Whatever the model, :func:`export_onnx` then runs the ONNX graph in onnxruntime next to PyTorch on random
histories and refuses an export whose user vectors differ by more than :data:`PARITY_TOLERANCE`.
"""

import copy
import inspect
import json
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from recbole_elastic.atomic import atomic_path, atomic_write
from recbole_elastic.errors import ConfigError, ElasticError, MissingDependencyError
from recbole_elastic.model.abstract import DotProductSequentialRecommender
from recbole_elastic.model.all_positions import AllPositionsMixin

ONNX_OPSET = 18  # the lowest opset torch's exporter targets; onnxruntime >= 1.14 runs it
USER_TOWER_FILE = "user_tower.onnx"
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"
MANIFEST_FILE = "export.json"
INPUT_NAMES = ["item_seq", "item_seq_len"]
OUTPUT_NAME = "user_vector"
PARITY_TOLERANCE = 1e-4  # an export whose user vectors differ more from PyTorch's is refused
EXTERNAL_DATA_BYTES = 2**31 - 2**27  # protobuf caps one file at 2 GiB: larger weights go into a .data file


class UserTower(nn.Module):
    """A sequential model's ``forward(item_seq, item_seq_len)`` in eval mode, as one graph the exporter can trace
    for any batch size (see the module docstring for the causal models)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        # Only the causal models' grouped forward is replaced by what it computes per group; a subclass that
        # overrides forward is exported as written.
        if type(self.model).forward is AllPositionsMixin.forward:
            output = self.model.last_position_output(item_seq, item_seq_len)
        else:
            output = self.model(item_seq, item_seq_len)
        return user_vectors(self.model, output)


def user_vectors(model: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """The user side of ``user . item`` scores for outputs ``[B, H]``: a plugin model's ``score_queries``, a
    RecBole model's output itself."""
    return model.score_queries(output) if isinstance(model, DotProductSequentialRecommender) else output


def item_matrix(model: nn.Module) -> torch.Tensor:
    """The item side ``[n_items, H]`` of the scores: a plugin model's ``item_vectors``, a RecBole model's item
    embedding."""
    return model.item_vectors() if isinstance(model, DotProductSequentialRecommender) else model.item_embedding.weight


def cummax_by_masked_max(values: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.cummax(values, dim)`` from ops ONNX has: position t takes the max over positions <= t of a
    ``[.., n, n]`` causal mask; the index is the last position holding it, as ``torch.cummax`` returns."""
    length = values.size(dim)
    moved = values.movedim(dim, -1)
    causal = torch.ones(length, length, dtype=torch.bool, device=values.device).tril()  # [t, s]: s <= t
    prefix = torch.where(causal, moved.unsqueeze(-2), float("-inf"))  # [.., t, s]
    maxima = prefix.max(-1).values
    positions = torch.arange(length, device=values.device)
    at_max = causal & (prefix == maxima.unsqueeze(-1))
    indices = torch.where(at_max, positions, -1).max(-1).values
    return maxima.movedim(-1, dim), indices.movedim(-1, dim)


class PlainOpsWhileTracing(TorchFunctionMode):
    """While tracing, three kinds of op as the plain tensor ops they compute, for graphs onnxruntime runs well:

    * ``tensor[mask]`` and ``tensor[mask] = value`` with a boolean mask over leading dimensions (CausalELASTIC's
      real positions) as row indexing: the exporter writes them element by element (a ``NonZero`` and a
      ``GatherND`` or ``ScatterND`` over every number of a ``[B, N, k, H]`` tensor), here one index per row;
    * ``F.embedding_bag`` summing fixed-size bags (the interest memory's retrieval) as a gather and a weighted
      sum: torch's exporter writes it as an ONNX ``Loop`` over the bags, one iteration per (user, interest), and
      per position in CausalELASTIC (20 times slower than PyTorch in onnxruntime at N = 50);
    * ``F.batch_norm`` on running statistics (eval mode) as ``(x - mean) / sqrt(var + eps) * weight + bias``:
      torch's op checks whether its input is empty, which the tracer cannot decide for CausalELASTIC's queries
      (one per real position: a data-dependent count).
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows_of_masks: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def masked_rows(self, mask: torch.Tensor) -> torch.Tensor:
        """The positions of ``mask``'s True entries, flattened: the rows ``tensor[mask]`` selects. One index tensor
        per mask object, so that the tracer knows every selection by that mask has the same number of rows."""
        for known, rows in self.rows_of_masks:
            if known is mask:
                return rows
        rows = mask.reshape(-1).nonzero().squeeze(1)
        self.rows_of_masks.append((mask, rows))
        return rows

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__getitem__ and is_leading_mask(*args[:2]):
            tensor, mask = args
            return tensor.reshape(-1, *tensor.shape[mask.dim() :])[self.masked_rows(mask)]
        if func is torch.Tensor.__setitem__ and is_leading_mask(*args[:2]) and args[0].is_contiguous():
            tensor, mask, value = args
            tensor.view(-1, *tensor.shape[mask.dim() :])[self.masked_rows(mask)] = value
            return None
        if func is F.batch_norm or func is F.embedding_bag:
            arguments = inspect.signature(func).bind(*args, **kwargs)
            arguments.apply_defaults()
            arguments = arguments.arguments
            if func is F.batch_norm and not arguments["training"] and arguments["running_mean"] is not None:
                return eval_batch_norm(**{key: arguments[key] for key in EVAL_BATCH_NORM_ARGUMENTS})
            if func is F.embedding_bag and is_fixed_size_sum(arguments):
                return weighted_bag_sum(arguments["input"], arguments["weight"], arguments["per_sample_weights"])
        return func(*args, **kwargs)


def is_leading_mask(tensor: Any, index: Any) -> bool:
    """Whether ``tensor[index]`` selects rows by a boolean mask over ``tensor``'s leading dimensions."""
    return (
        isinstance(tensor, torch.Tensor)
        and isinstance(index, torch.Tensor)
        and index.dtype == torch.bool
        and 0 < index.dim() < tensor.dim()
        and tuple(index.shape) == tuple(tensor.shape[: index.dim()])
    )


EVAL_BATCH_NORM_ARGUMENTS = ("input", "running_mean", "running_var", "weight", "bias", "eps")


def eval_batch_norm(input, running_mean, running_var, weight, bias, eps) -> torch.Tensor:
    """BatchNorm on running statistics, features on dimension 1."""
    shape = [1, -1] + [1] * (input.dim() - 2)
    output = (input - running_mean.view(shape)) * torch.rsqrt(running_var.view(shape) + eps)
    if weight is not None:
        output = output * weight.view(shape)
    if bias is not None:
        output = output + bias.view(shape)
    return output


def is_fixed_size_sum(arguments: Dict[str, Any]) -> bool:
    """An ``F.embedding_bag`` call summing bags given as the rows of a 2-D index tensor, and nothing else."""
    plain = all(arguments[key] is None for key in ("offsets", "max_norm", "padding_idx"))
    return plain and arguments["mode"] == "sum" and arguments["input"].dim() == 2


def weighted_bag_sum(indices: torch.Tensor, weight: torch.Tensor, per_sample_weights) -> torch.Tensor:
    """``[bags, size]`` indices -> ``[bags, H]``: the sum of each bag's rows of ``weight``, each row scaled by its
    ``per_sample_weights`` entry when given."""
    rows = F.embedding(indices, weight)  # [bags, size, H]
    if per_sample_weights is None:
        return rows.sum(1)
    return torch.matmul(per_sample_weights.unsqueeze(1), rows).squeeze(1)  # [bags, 1, size] @ [bags, size, H]


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`ConfigError` unless ``model`` is a sequential model scoring items by dot product."""
    embedding = getattr(model, "item_embedding", None)
    if not isinstance(embedding, nn.Embedding) or not hasattr(model, "max_seq_length"):
        raise ConfigError(
            f"--export supports sequential models that score items by a dot product with their item embedding "
            f"(ELASTIC, the causal models, SASRec, ...); {type(model).__name__} is not one."
        )


def example_histories(n_items: int, max_len: int, lengths: Sequence[int], seed: int = 0):
    """Histories of random item ids (1..n_items - 1) with the given lengths, padded with 0 to ``max_len``."""
    generator = torch.Generator().manual_seed(seed)
    item_seq = torch.randint(1, n_items, (len(lengths), max_len), generator=generator)
    item_seq_len = torch.tensor(list(lengths), dtype=torch.long)
    item_seq[torch.arange(max_len).unsqueeze(0) >= item_seq_len.unsqueeze(1)] = 0
    return item_seq, item_seq_len


def import_onnx_packages() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError as error:
        raise MissingDependencyError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({error.name} is missing): "
            'pip install "recbole-elastic[serve]".'
        ) from None


def export_user_tower(model: nn.Module, path: str) -> None:
    """Write ``model``'s user tower (eval mode, dynamic batch axis) to ``path`` as ONNX."""
    model.eval()
    max_len = model.max_seq_length
    # Three rows (torch.export fixes a size of 1): the shortest, a middle and the longest history.
    example = example_histories(model.item_embedding.num_embeddings, max_len, [1, (max_len + 1) // 2, max_len])
    batch = torch.export.Dim("batch")
    # Not under no_grad: there, batch_norm's trace guards on the batch size and the batch axis cannot stay dynamic.
    with PlainOpsWhileTracing():
        program = torch.export.export(UserTower(model), example, dynamic_shapes=({0: batch}, {0: batch}))
    program = program.run_decompositions({torch.ops.aten.cummax.default: cummax_by_masked_max})
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    torch.onnx.export(
        program,
        example,
        path,
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=INPUT_NAMES,
        output_names=[OUTPUT_NAME],
        external_data=parameter_bytes > EXTERNAL_DATA_BYTES,
        verbose=False,
    )


def onnx_user_vectors(session, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> np.ndarray:
    """An onnxruntime session's user vectors for ``[B, N]`` histories and ``[B]`` lengths."""
    feeds = {INPUT_NAMES[0]: item_seq.cpu().numpy(), INPUT_NAMES[1]: item_seq_len.cpu().numpy()}
    return session.run([OUTPUT_NAME], feeds)[0]


def onnx_session(path: str, threads: int = 0):
    """An onnxruntime CPU session for the user tower at ``path`` (``threads`` 0: onnxruntime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def parity_with_pytorch(model: nn.Module, path: str) -> float:
    """The largest absolute difference between onnxruntime's and PyTorch's user vectors (``model.forward``, CPU)
    on random histories of 12 lengths from 1 to N, one at a time and all in one batch (the batch axis is
    dynamic)."""
    session = onnx_session(path)
    max_len, n_items = model.max_seq_length, model.item_embedding.num_embeddings
    lengths = sorted({int(length) for length in np.linspace(1, max_len, 12).round()})
    largest = 0.0
    for seed, batch_lengths in enumerate([[length] for length in lengths] + [lengths]):
        item_seq, item_seq_len = example_histories(n_items, max_len, batch_lengths, seed=seed)
        with torch.no_grad():
            expected = user_vectors(model, model(item_seq, item_seq_len)).numpy()
        largest = max(largest, float(np.abs(onnx_user_vectors(session, item_seq, item_seq_len) - expected).max()))
    return largest


def export_onnx(
    model: nn.Module, item_tokens: List[str], output_dir: str, model_name: str = None, dataset: str = None
) -> Dict[str, Any]:
    """Write ``output_dir/{user_tower.onnx, item_embeddings.npy, export.json}`` (see the module docstring) for a
    sequential model and its item id map (``item_tokens[i]``: the external token of internal id ``i``); returns
    the manifest written to ``export.json``. Each file is replaced in one rename."""
    import_onnx_packages()
    import onnx

    check_exportable(model)
    if next(model.parameters()).device.type != "cpu":  # the graph is traced, and checked, on the CPU
        model = copy.deepcopy(model).cpu()
    model.eval()
    n_items, hidden_size = model.item_embedding.weight.shape
    if len(item_tokens) != n_items:
        raise ElasticError(f"The model has {n_items} item ids but the id map has {len(item_tokens)} tokens.")
    os.makedirs(output_dir, exist_ok=True)
    tower_path = os.path.join(output_dir, USER_TOWER_FILE)
    with atomic_path(tower_path) as temporary:
        export_user_tower(model, temporary)
        largest_difference = parity_with_pytorch(model, temporary)
        if largest_difference > PARITY_TOLERANCE:
            raise ElasticError(
                f"The exported user tower's vectors differ from PyTorch's by up to {largest_difference:.2e} "
                f"(more than {PARITY_TOLERANCE:g}); {tower_path} was not written."
            )
        opset = next(entry.version for entry in onnx.load(temporary).opset_import if entry.domain in ("", "ai.onnx"))
    with atomic_path(os.path.join(output_dir, ITEM_EMBEDDINGS_FILE)) as temporary, open(temporary, "wb") as f:
        np.save(f, item_matrix(model).detach().cpu().numpy().astype(np.float32))
    manifest = {
        "model": model_name or type(model).__name__,
        "dataset": dataset,
        "format": "onnx",
        "opset": int(opset),
        "user_tower": USER_TOWER_FILE,
        "inputs": {
            INPUT_NAMES[0]: "int64 [batch, max_seq_length]: internal item ids, left-aligned, padded with 0",
            INPUT_NAMES[1]: "int64 [batch]: history lengths, 1..max_seq_length",
        },
        "output": {OUTPUT_NAME: "float32 [batch, hidden_size]"},
        "item_embeddings": ITEM_EMBEDDINGS_FILE,
        "scores": "user_vector @ item_embeddings.T; padding id 0 is not an item",
        "max_seq_length": int(model.max_seq_length),
        "hidden_size": int(hidden_size),
        "n_items": int(n_items),
        "padding_id": 0,
        "onnx_vs_pytorch_max_abs_diff": largest_difference,
        "item_tokens": list(item_tokens),
    }
    atomic_write(os.path.join(output_dir, MANIFEST_FILE), json.dumps(manifest, indent=1))
    return manifest


def export_checkpoint(checkpoint: str, output_dir: str, export_format: str = "onnx") -> Dict[str, Any]:
    """Export the model saved in ``checkpoint`` (its dataset is read again for the item id map, no training)."""
    if export_format != "onnx":
        raise ConfigError(f"--export={export_format} is not a known format: use --export=onnx.")
    import_onnx_packages()  # before reading the dataset again, which can take minutes
    from recbole_elastic.saved_model import load_saved_model

    saved = load_saved_model(checkpoint)
    return export_onnx(saved.model, saved.item_tokens, output_dir, saved.config["model"], saved.config["dataset"])
