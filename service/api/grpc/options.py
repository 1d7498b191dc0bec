"""gRPC server channel options: message sizes, keepalive enforcement, caps on concurrent streams and
on connection age, all from settings (documented in docs/limits.md)."""

from __future__ import annotations

from service.settings import Settings

# A ClassifyRequest carries up to max_body_bytes of images plus a little framing.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
MAX_SEND_MESSAGE_BYTES = 64 * 1024 * 1024
# Pings from a client more often than allowed are "strikes"; after this many, GOAWAY too_many_pings.
MAX_PING_STRIKES = 2


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def server_options(settings: Settings, reuse_port: bool = False) -> list[tuple[str, int]]:
    """`reuse_port`: split mode's fronts all listen on the one port (the kernel spreads connections)."""
    options = [
        ("grpc.max_receive_message_length", settings.max_body_bytes + MESSAGE_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        # Our own pings find dead peers (a vanished client, a proxy that dropped the connection).
        ("grpc.keepalive_time_ms", _ms(settings.grpc_keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", _ms(settings.grpc_keepalive_timeout_s)),
        # Enforcement: a client may ping no more often than this, also between calls.
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(settings.grpc_min_client_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.grpc_max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", _ms(settings.grpc_max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _ms(settings.grpc_max_connection_age_grace_s)),
        ]
    return options
