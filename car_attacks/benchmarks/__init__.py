"""Benchmarks of the library's numerical kernels (run via ``scripts/`` or ``car-attacks bench``)."""
