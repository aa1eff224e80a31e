"""bioplaus.data — every dataset from local files or generated (nothing downloads at run time).

- `base`: the `Dataset` type (in-memory tensors; `model_kwargs()` tells the model what to be built with),
  the seeded batch iterator, tasks ("classify", "lm") and IGNORE_INDEX.
- `images`: sklearn digits, Fashion-MNIST and MNIST from local IDX files.
- `spikes`: data that already are spike trains (the generated spike-timing task).
- `sequences`: character text (pydoc topics), multi-query associative recall, images as patch sequences.
- `graphs`: node classification on one graph (SBM, karate club, PyG / Planetoid files).
- benchmark sets from their publishers' files in data.root, decoded once into a memory-mapped cache (`cache`:
  MappedArray, which the trainer indexes like a tensor): `cifar` (CIFAR-10/100 python batches, with `augment`'s
  random crop and flip), `heidelberg` (SHD / SSC HDF5, binned), `events` (N-MNIST, DVS128 Gesture through
  tonic, the `events` extra); `formats` writes each of these file formats (tests, benchmarks, your own data).

Configs name a loader by its full path (`_target_: bioplaus.data.images.fashion`); the common ones are
re-exported here.
"""
from bioplaus.data.augment import Augment
from bioplaus.data.base import IGNORE_INDEX, TASKS, Dataset, batches, subset, unigram_loss
from bioplaus.data.cache import MappedArray
from bioplaus.data.images import FASHION_ROOT, IDX_FILES, digits, fashion, idx_dataset, mnist, read_idx
from bioplaus.data.spikes import cue_accumulation, spike_timing

__all__ = ["Augment", "FASHION_ROOT", "IDX_FILES", "IGNORE_INDEX", "MappedArray", "TASKS", "Dataset", "batches",
           "cue_accumulation", "digits", "fashion", "idx_dataset", "mnist", "read_idx", "spike_timing", "subset",
           "unigram_loss"]
