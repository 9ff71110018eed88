"""The parts of the GPU check, one module each (see benchmarks/gpu/__init__.py)."""
