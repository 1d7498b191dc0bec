"""The gRPC service config we publish for clients: retry UNAVAILABLE (and a server's CANCELLED) on
the idempotent calls.

Behind a load balancer, a call in flight on a replica that dies fails at the proxy with UNAVAILABLE,
and so does a call that reaches a replica that is starting or draining. `Classify`, `ListModels`,
the V2 calls (`ModelInfer` is a pure function of its inputs for our models) and health checks are
idempotent, so the client may safely send them again; the next attempt lands on a live replica.
`ClassifyStream` is not retried (a stream's messages cannot be replayed transparently).

Use `channel_options()` with any grpcio channel, e.g. `grpc.insecure_channel(target,
options=channel_options())`, or `tritonclient.grpc.InferenceServerClient(url,
channel_args=channel_options())`. `SERVICE_CONFIG_JSON` is the same policy as text.
"""

from __future__ import annotations

import json
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A call can be retried only while the client still holds its whole request: grpc buffers at most
# 256 KiB per call by default, less than one photo, so raise it to the largest message.
RETRY_BUFFER_BYTES = MAX_MESSAGE_BYTES

RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 5,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    # CANCELLED too: a replica stopping gracefully cancels the calls that reach it in the moment
    # its gRPC server shuts down (grpc core does; measured in `make chaos`), before they ran.
    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
}

SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [
                {"service": "effnet.v1.Classifier", "method": "Classify"},
                {"service": "effnet.v1.Classifier", "method": "ListModels"},
                {"service": "inference.GRPCInferenceService"},
                {"service": "grpc.health.v1.Health", "method": "Check"},
            ],
            "retryPolicy": RETRY_POLICY,
        },
        # The streams are not retried (as ClassifyStream, left out above): a method's own entry
        # overrides its service's, and this one has no retry policy.
        {"name": [{"service": "inference.GRPCInferenceService", "method": "ModelStreamInfer"}]},
    ]
}

SERVICE_CONFIG_JSON = json.dumps(SERVICE_CONFIG)


def channel_options() -> list[tuple[str, str | int]]:
    """grpcio channel options that turn the retry policy on (and allow messages of our size)."""
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG_JSON),
        ("grpc.service_config_disable_resolution", 1),  # ours, not a DNS TXT record's
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
        ("grpc.retry_buffer_size", 4 * RETRY_BUFFER_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
