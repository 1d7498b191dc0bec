"""`python -m service classify`: the bulk client, its report, and the gRPC retry policy."""
