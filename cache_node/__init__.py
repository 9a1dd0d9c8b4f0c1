"""edgedepot: cache_node."""
