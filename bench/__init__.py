"""The benchmark: BF16 and FP8 side by side through the product's real path (see bench/README.md). run_bench.py is
its command line; plans.py says what runs, runner.py runs it, tables.py and plots.py report it."""
