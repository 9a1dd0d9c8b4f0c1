"""edgedepot's pytest plugin: shared fixtures and the test-only helpers (fake upstreams, node
processes, the apt oracle, a real Glance server). Registered in tests/conftest.py; benchmarks
may import these helpers too, but nothing here imports benchmarks or the product's demo runner.
"""
