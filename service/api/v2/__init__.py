"""The Open Inference Protocol (KServe V2): one data plane shared by its HTTP and gRPC transports."""
