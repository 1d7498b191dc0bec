"""API-key authentication on every protocol (health and metrics stay open) and gRPC over TLS / mTLS
with certificates made in the test (openssl CLI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc
from service._generated.inference import grpc_service_pb2 as v2pb
from service._generated.inference import grpc_service_pb2_grpc as v2pb_grpc
from service.api.grpc.server import create_grpc_server
from service.settings import Settings
from tests.robustness import corpus
from tests.robustness.conftest import InProcess, LiveServer, ServerFactory, free_port

KEY = "s3cret-key"
WRONG = (("authorization", "Bearer wrong"),)
RIGHT = (("authorization", f"Bearer {KEY}"),)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 and its key (PEM paths)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    return {"server": self_signed(folder, "server"), "client": self_signed(folder, "client")}


@pytest.fixture(scope="module")
def server(
    server_factory: ServerFactory, model_repository: Path, certificates: dict[str, tuple[Path, Path]]
) -> LiveServer:
    cert, key = certificates["server"]
    env = {"EFFNET_API_KEY": KEY, "EFFNET_GRPC_TLS_CERT": str(cert), "EFFNET_GRPC_TLS_KEY": str(key)}
    return server_factory(model_repository, "--models", "lite0", env=env)


def _tls_channel(server: LiveServer, cert: Path) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    return grpc.aio.secure_channel(server.grpc_address, credentials)


@pytest.mark.slow
@needs_openssl
def test_http_api_key(server: LiveServer) -> None:
    body = corpus.jpeg()
    classify = f"{server.http_url}/classify?variant=lite0"
    v2 = f"{server.http_url}/v2/models/lite0"
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": KEY},
        {"authorization": "Basic x"},
    ):
        response = httpx.post(classify, content=body, headers=headers, timeout=30)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthenticated"
        assert httpx.get(f"{server.http_url}/v1/models", headers=headers).status_code == 401
        assert httpx.get(v2, headers=headers).status_code == 401
        assert httpx.post(f"{v2}/infer", content=b"{}", headers=headers).status_code == 401
    good = {"authorization": f"Bearer {KEY}"}
    assert httpx.post(classify, content=body, headers=good, timeout=30).status_code == 200
    assert httpx.get(v2, headers=good).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(f"{server.http_url}{path}").status_code == 200, path


@pytest.mark.slow
@needs_openssl
async def test_grpc_api_key_over_tls(server: LiveServer, certificates: dict[str, tuple[Path, Path]]) -> None:
    request = pb.ClassifyRequest(model="lite0", images=[corpus.jpeg()])
    v2_request = v2pb.ModelMetadataRequest(name="lite0")
    async with _tls_channel(server, certificates["server"][0]) as channel:
        stub, v2 = pb_grpc.ClassifierStub(channel), v2pb_grpc.GRPCInferenceServiceStub(channel)
        for metadata in ((), WRONG):
            for call in (
                stub.Classify(request, metadata=metadata),
                v2.ModelMetadata(v2_request, metadata=metadata),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len((await stub.Classify(request, metadata=RIGHT, timeout=30)).results) == 1
        assert (await v2.ModelMetadata(v2_request, metadata=RIGHT)).name == "lite0"
        # Health (ours and V2's) stays open.
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert (await v2.ServerLive(v2pb.ServerLiveRequest())).live
    # Plaintext against the TLS port fails; so does TLS that does not trust the server's certificate.
    async with grpc.aio.insecure_channel(server.grpc_address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ClassifierStub(plain).Classify(request, metadata=RIGHT, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with _tls_channel(server, certificates["client"][0]) as untrusted:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ClassifierStub(untrusted).Classify(request, metadata=RIGHT, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@needs_openssl
async def test_mutual_tls(inprocess: InProcess, certificates: dict[str, tuple[Path, Path]]) -> None:
    (server_cert, server_key), (client_cert, client_key) = certificates["server"], certificates["client"]
    settings = inprocess.settings.model_copy(
        update={
            "grpc_port": free_port(),
            "grpc_tls_cert": server_cert,
            "grpc_tls_key": server_key,
            "grpc_tls_client_ca": client_cert,
        }
    )
    server = create_grpc_server(inprocess.engine, settings, inprocess.metrics)
    await server.start()
    address = f"127.0.0.1:{settings.grpc_port}"
    check = health_pb2.HealthCheckRequest()
    try:
        with_client_cert = grpc.ssl_channel_credentials(
            server_cert.read_bytes(), client_key.read_bytes(), client_cert.read_bytes()
        )
        async with grpc.aio.secure_channel(address, with_client_cert) as channel:
            response = await health_pb2_grpc.HealthStub(channel).Check(check, timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        without = grpc.ssl_channel_credentials(server_cert.read_bytes())
        async with grpc.aio.secure_channel(address, without) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(channel).Check(check, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


def test_tls_settings_come_in_pairs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="together"):
        Settings(grpc_tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="needs grpc_tls_cert"):
        Settings(grpc_tls_client_ca=tmp_path / "ca.pem")
    assert Settings().grpc_tls_cert is None
