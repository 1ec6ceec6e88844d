"""Benchmarks of the token service, run by `make bench` (`python -m bench [NAME ...]`)."""
