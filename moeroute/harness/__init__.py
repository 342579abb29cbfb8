"""The harness: workloads, metrics, evaluation, sweeps, tables, plots and the CLI."""
