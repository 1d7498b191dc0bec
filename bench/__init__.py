"""effnet-serve benchmark suite: load generator, references, naive server, plots (`make bench`)."""
