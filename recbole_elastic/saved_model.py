"""A trained model read back for serving: the model in eval mode and its item id map.

RecBole's checkpoint holds the Config and the weights, not the id maps: external item tokens get their internal
ids when the dataset is read. So the dataset is read again, as the run read it
(:func:`recbole_elastic.quick_start.load_data_and_model`, no training), and the map is taken from it.
"""

from dataclasses import dataclass
from typing import Any, List

from torch import nn

from recbole_elastic.evaluate import read_checkpoint_config
from recbole_elastic.quick_start import load_data_and_model


@dataclass
class SavedModel:
    """A checkpoint's model (eval mode, CPU unless a GPU is visible), its Config and its item id map."""

    config: Any
    model: nn.Module
    item_tokens: List[str]  # internal item id -> external token; RecBole's padding token '[PAD]' at id 0


def load_saved_model(path: str) -> SavedModel:
    """The model saved in ``path`` (a RecBole checkpoint) with the item id map of the dataset it was trained on.

    Raises :class:`~recbole_elastic.errors.ConfigError` when the file is missing or not a checkpoint, and the
    dataset errors of :func:`~recbole_elastic.data.prepare_data` when its dataset is no longer readable.
    """
    read_checkpoint_config(path)
    config, model, dataset, _, _, _ = load_data_and_model(path)
    item_tokens = [str(token) for token in dataset.field2id_token[config["ITEM_ID_FIELD"]]]
    return SavedModel(config=config, model=model.eval(), item_tokens=item_tokens)
