"""bioplaus.export — models and statistics in other tools' formats.

    from bioplaus.export import to_nir, from_nir
    graph = to_nir(model, dt=1e-4)          # a trained spiking MLP / ConvNet as a NIR graph (nir.write it)
    model = from_nir("model.nir")           # a NIR graph (bioplaus's, snnTorch's, ...) as a bioplaus model

- `nir_export`: `to_nir`, the mapping and the discretisation (neurons are NIR ODEs stepped with Euler at dt).
- `nir_import`: `from_nir` and the modules an imported graph runs on (`NIRModel`, `NIRNeuron`, `NIRCubaLIF`).
- `neurobench_metrics`: NeuroBench's footprint, connection and activation sparsity and synaptic operations on a
  trained run, beside bioplaus's own statistics (`python -m bioplaus.export.neurobench_metrics RUN_DIR`).

The `nir` package is needed for NIR (`pip install nir nirtorch`; nirtorch for snnTorch's importer), the
`neurobench` package for the NeuroBench metrics (`pip install --no-deps neurobench==2.3.0`).
"""
from bioplaus.export.nir_export import to_nir
from bioplaus.export.nir_import import NIRModel, from_nir

__all__ = ["NIRModel", "from_nir", "to_nir"]
