"""The data layer: dataset registry, loaders (offline, torchvision, files, your own folder), step and
long-tailed imbalance, backbone adaptation and reproducible batch streams. See each module's docstring."""
from .batches import BatchStream, iterate_batches
from .build import DataBundle, build_data, build_source_data
from .download import download_dataset
from .glyphs import render_glyphs
from .images import FileImages, TensorImages
from .imbalance import majority_combinations
from .registry import DATASETS, PAPER_IMBALANCE, DataError, DatasetSpec
from .transforms import BACKBONE_INPUT

__all__ = [
    "BACKBONE_INPUT", "BatchStream", "DATASETS", "DataBundle", "DataError", "DatasetSpec", "FileImages",
    "PAPER_IMBALANCE", "TensorImages", "build_data", "build_source_data", "download_dataset",
    "iterate_batches", "majority_combinations", "render_glyphs",
]
