"""edgedepot: syncer."""
