"""The scaling lab: sweeps of runs, power-law fits, the sweep report."""
