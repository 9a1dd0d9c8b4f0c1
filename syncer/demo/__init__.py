"""The demonstration behind `distro-sync demo` / `make demo`, and the sample data it is built on.

Everything here exists to show or exercise the product, not to run it: sample `.deb` archives
and wheels, throwaway signing keys, a launcher for `cache-node serve` processes and private apt
roots for sites. Tests and benchmarks reuse these builders; no other product module imports
this package (an import-linter contract says so).
"""
