"""The `harvest-async` command line: argparse wiring and exit codes, nothing else."""
