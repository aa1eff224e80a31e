"""bioplaus.stats — all measuring: operations, memory, training cost, spikes, energy, and their export.

    from bioplaus import stats
    energy = stats.preset("fp32_45nm")                   # or EnergyModel(...), or stats=<preset> in a run
    layers = stats.collect(model, x_test, energy)        # per layer, per sample, per time step
    stats.write_h5("stats.h5", layers, stats.summary(layers), attrs)
    data = stats.load("runs/.../stats.h5")              # nested dicts

- `opcount`: exact MAC / AC (synaptic op) counts of any forward or backward pass (a TorchDispatchMode).
- `memory`: bytes autograd saves for backward (`SavedTensors`) and peak memory of a run (`PeakMemory`).
- `cost`: the trainer's meter (`TrainingMeter`): time, peak memory, the first update's ops, passes and saved bytes.
- `collect`: per-layer, per-step account of a trained model's inference (spikes, SOPs, MACs, memory, energy).
- `energy`: hardware energy models as data (45 nm presets, memory access by buffer size).
- `report`: what `bioplaus-run` writes: inference statistics plus the priced training cost, built once.
- `export`: stats.h5 (HDF5), stats.json / stats.csv, and `load`.

stats.h5 schema (plain HDF5; every dataset has attrs["units"]):

    /                 attrs: rule, model, data, seed, n_samples, energy (JSON), config (YAML),
                      versions (JSON), train_cost (JSON: per training step, see below)
    /layers/<name>/   "layers.0", ..., "head": spike_counts [T], n_neurons, firing_rate,
                      neuron_updates [T], sop [T], mac [T], params, in_size, out_size, activation_bytes,
                      weight_reads, act_reads, act_writes, state_accesses,
                      energy_compute_pj, energy_memory_pj, energy_pj          (all per inference sample)
    /summary/         spikes_per_sample, mean_firing_rate, sop_per_sample, mac_per_sample, params,
                      energy_{compute,memory}_pj_per_sample, energy_pj_per_sample,
                      train_mac_per_step, train_ac_per_step, train_energy_pj_per_step

Training cost per step is measured on the rule's first update (whole batch, forward and backward,
every op the rule ran) by the trainer; its energy is compute only (MACs and ACs).
"""
from bioplaus.stats.collect import collect, summary
from bioplaus.stats.cost import TrainingMeter, UpdateCost
from bioplaus.stats.energy import EnergyModel, MemoryModel, preset, presets
from bioplaus.stats.export import load, write_flat, write_h5
from bioplaus.stats.memory import PeakMemory, SavedTensors
from bioplaus.stats.opcount import OpCounter
from bioplaus.stats.report import Report, report, training_cost

__all__ = ["collect", "summary", "EnergyModel", "MemoryModel", "OpCounter", "PeakMemory", "Report", "SavedTensors",
           "TrainingMeter", "UpdateCost", "load", "preset", "presets", "report", "training_cost", "write_flat",
           "write_h5"]
