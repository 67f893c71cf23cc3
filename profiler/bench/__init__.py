"""What only the benchmark suite (tests/bench) uses: the memory gate."""
