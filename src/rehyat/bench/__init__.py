"""``rehyat bench`` targets (GPU benchmarks) and the helpers they share."""
