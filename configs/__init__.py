"""bioplaus.configs — the Hydra config groups (rule/ model/ data/ trainer/ stats/ experiment/ arm/),
shipped inside the package so `pip install .` gives a working `bioplaus-run`."""
