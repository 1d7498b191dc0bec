"""The protocols: each turns its wire format into one admitted request for the core, and the core's
outcome back into its answer. HTTP (`http/`), our gRPC (`grpc/`), the Open Inference Protocol (`v2/`),
and what they share (`observe.py`: one error map, one metric-label rule, one observation wrapper)."""
