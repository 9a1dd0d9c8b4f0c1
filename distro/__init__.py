"""edgedepot: distro."""
