"""Benchmarks: engine_apply.py (the engine alone) and the load benchmark (`python -m bench.run`)."""
