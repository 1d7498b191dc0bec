"""gRPC: one grpc.aio server with our `effnet.v1.Classifier`, the V2 service, health and reflection."""
