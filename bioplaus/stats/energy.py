"""Hardware energy models as data: compute cost per MAC/AC and a memory-access cost by buffer size.

A preset is a YAML file in configs/stats/ (fp32_45nm, fp16_45nm, int8_45nm ship; add your own beside
them in a directory on `hydra.searchpath`, or override fields: `stats.energy.mac_pj=3.7`):

    energy:
      name: fp32_45nm
      bits: 32               # word width of weights, activations and membrane state
      mac_pj: 4.6            # one multiply-accumulate (dense input)
      ac_pj: 0.9             # one accumulate (spike-driven synaptic op)
      neuron_update: {macs: 1, acs: 1}   # one membrane update: decay*v + x (MAC) and the threshold test (AC)
      memory:                # null = compute only
        sram_pj_per_64b: [[8192, 10.0], [32768, 20.0], [1048576, 100.0]]   # [buffer bytes, pJ per 64-bit access]
        dram_pj_per_64b: 1300.0          # buffers larger than the largest SRAM point live in DRAM

Constants: Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm (the presets SpikingJelly's
`estimate_compute_energy` uses: fp32 4.6/0.9, fp16 1.5/0.4, int8 0.23/0.03 pJ; SRAM 64-bit reads
10/20/100 pJ at 8 KiB/32 KiB/1 MiB; DRAM 1.3-2.6 nJ per 64 bits).

One access of a `bits`-wide word from a buffer of B bytes costs
e(B) * bits / 64 pJ, with e(B) linear in B between the SRAM points, the first point's cost below it,
and the DRAM cost above the last.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from bioplaus.errors import ConfigError

DEFAULT_SRAM = ((8192, 10.0), (32768, 20.0), (1048576, 100.0))


def _number(value, key: str) -> float:
    """A preset field as a number, or a ConfigError naming stats.energy.<key>."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"stats.energy.{key} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class MemoryModel:
    sram_pj_per_64b: tuple[tuple[float, float], ...] = DEFAULT_SRAM
    dram_pj_per_64b: float = 1300.0

    def __post_init__(self):
        try:
            pts = tuple((_number(b, "memory.sram_pj_per_64b"), _number(e, "memory.sram_pj_per_64b"))
                        for b, e in self.sram_pj_per_64b)
        except (TypeError, ValueError):
            pts = ()
        if not pts or any(b <= 0 or e < 0 for b, e in pts) or list(pts) != sorted(pts):
            raise ConfigError("stats.energy.memory.sram_pj_per_64b must be [[bytes, pJ], ...] with positive, "
                              f"increasing sizes and non-negative costs, got {self.sram_pj_per_64b}")
        if _number(self.dram_pj_per_64b, "memory.dram_pj_per_64b") < 0:
            raise ConfigError(f"stats.energy.memory.dram_pj_per_64b must be >= 0, got {self.dram_pj_per_64b}")
        object.__setattr__(self, "sram_pj_per_64b", pts)

    def access_pj(self, buffer_bytes: float, bits: int) -> float:
        """Energy of one `bits`-wide access to a buffer of `buffer_bytes` bytes, in pJ."""
        pts = self.sram_pj_per_64b
        if buffer_bytes > pts[-1][0]:
            e64 = self.dram_pj_per_64b
        elif buffer_bytes <= pts[0][0]:
            e64 = pts[0][1]
        else:
            for (b0, e0), (b1, e1) in zip(pts, pts[1:]):
                if buffer_bytes <= b1:
                    e64 = e0 + (e1 - e0) * (buffer_bytes - b0) / (b1 - b0)
                    break
        return e64 * bits / 64


@dataclass(frozen=True)
class EnergyModel:
    name: str
    bits: int
    mac_pj: float
    ac_pj: float
    neuron_update: dict = field(default_factory=lambda: {"macs": 1.0, "acs": 1.0})
    memory: MemoryModel | None = field(default_factory=MemoryModel)

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise ConfigError(f"stats.energy.name must be a string, got {self.name!r}")
        if _number(self.bits, "bits") not in (1, 2, 4, 8, 16, 32, 64):
            raise ConfigError(f"stats.energy.bits must be a power of two up to 64, got {self.bits}")
        for k in ("mac_pj", "ac_pj"):
            if _number(getattr(self, k), k) < 0:
                raise ConfigError(f"stats.energy.{k} must be >= 0, got {getattr(self, k)}")
        nu = self.neuron_update
        if not isinstance(nu, dict) or set(nu) - {"macs", "acs"} or any(_number(v, f"neuron_update.{k}") < 0
                                                                         for k, v in nu.items()):
            raise ConfigError("stats.energy.neuron_update must be {macs: N, acs: N} with N >= 0, got "
                              f"{self.neuron_update!r}")
        if isinstance(self.memory, dict):
            try:
                object.__setattr__(self, "memory", MemoryModel(**self.memory))
            except TypeError as e:
                raise ConfigError(f"bad stats.energy.memory settings: {e}") from None
        elif self.memory is not None and not isinstance(self.memory, MemoryModel):
            raise ConfigError(f"stats.energy.memory must be a mapping or null, got {self.memory!r}")

    @property
    def update_pj(self) -> float:
        """Energy of one membrane update."""
        nu = self.neuron_update
        return float(nu.get("macs", 0)) * self.mac_pj + float(nu.get("acs", 0)) * self.ac_pj

    def compute_pj(self, macs: float, acs: float, neuron_updates: float = 0.0) -> float:
        return macs * self.mac_pj + acs * self.ac_pj + neuron_updates * self.update_pj

    def access_pj(self, buffer_bytes: float) -> float:
        return 0.0 if self.memory is None else self.memory.access_pj(buffer_bytes, self.bits)

    @classmethod
    def from_config(cls, cfg) -> EnergyModel:
        """Build from a mapping (the `energy:` node of a stats preset); unknown keys are a ConfigError."""
        from omegaconf import DictConfig, OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad stats.energy settings: {e}") from None

    def as_dict(self) -> dict:
        mem = None if self.memory is None else {"sram_pj_per_64b": [list(p) for p in self.memory.sram_pj_per_64b],
                                                 "dram_pj_per_64b": self.memory.dram_pj_per_64b}
        return {"name": self.name, "bits": self.bits, "mac_pj": self.mac_pj, "ac_pj": self.ac_pj,
                "neuron_update": dict(self.neuron_update), "memory": mem}


def presets() -> list[str]:
    root = resources.files("bioplaus.configs") / "stats"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset(name: str) -> EnergyModel:
    """A shipped preset by name (configs/stats/<name>.yaml); an unknown name lists the known ones."""
    from omegaconf import OmegaConf

    if name not in presets():
        raise ConfigError(f"unknown energy preset '{name}': choose one of {', '.join(presets())} "
                          "(configs/stats/*.yaml), or write your own")
    text = (resources.files("bioplaus.configs") / "stats" / f"{name}.yaml").read_text()
    node = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    return EnergyModel.from_config(node["energy"])
