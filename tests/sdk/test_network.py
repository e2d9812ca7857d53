"""The SDK on real networks: `logging`, proxies (environment and explicit) and TLS with a private CA.

- Logging: the `maidian.sdk` logger says one line per refused batch, per
  credentials refusal and per new drop report, never a property value or an
  identity; with logging unconfigured a process prints nothing.
- Proxies: a real proxy on 127.0.0.1 (forward_proxy.py) sees the SDK's
  requests: absolute-form for an http endpoint, a CONNECT tunnel for https,
  with `Proxy-Authorization` from the URL's credentials; `HTTPS_PROXY` /
  `HTTP_PROXY` / `NO_PROXY` are read as urllib reads them, `proxy=` wins and
  `proxy=""` means none.
- TLS: a CA, a server certificate and a client certificate made here with the
  `openssl` command: the system's trust refuses the server, `ca_bundle` trusts
  it, and a server that requires client certificates gets one from
  `client_cert`/`client_key`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maidian.sdk import AsyncClient, Client, ConfigError, QueueLimits
from tests.sdk.conftest import ORDER
from tests.sdk.forward_proxy import ForwardProxy
from tests.sdk.sink import Fault, Sink

MOBILE = "13812345678"


def _deliver(kind: str, url: str, flush_s: float = 10.0, **kwargs: Any) -> Any:
    """Track one order with a client of `kind`, flush and close; the client."""
    kwargs.setdefault("write_key", "wk_test")
    if kind == "thread":
        client = Client(url, **kwargs)
        client.track("stock_order_submit", ORDER)
        client.flush(flush_s)
        client.close(0.2)
        return client

    async def run() -> AsyncClient:
        aclient = AsyncClient(url, **kwargs)
        aclient.track("stock_order_submit", ORDER)
        await aclient.flush(flush_s)
        await aclient.aclose(0.2)
        return aclient

    return asyncio.run(run())


# -- logging -----------------------------------------------------------------------------


def test_the_logger_says_one_line_per_refusal_and_never_a_value(sink: Sink, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="maidian.sdk")
    sink.script(Fault(status=400), Fault(status=401))
    client = Client(sink.url, write_key="wk_test", queue=QueueLimits(max_events=2))
    for _ in range(5):  # three overflow drops
        client.track("stock_order_submit", {**ORDER, "mobile": MOBILE}, identities={"login_id": MOBILE})
    client.flush(2)  # the batch is refused (400)
    for _ in range(2):
        client.track("stock_order_submit", {**ORDER, "mobile": MOBILE})
    assert client.flush(0.5) is False  # held: the credentials were refused (401)
    client.close(0.2)
    records = [r for r in caplog.records if r.name == "maidian.sdk"]
    text = [r.getMessage() for r in records]
    assert sum("refused a whole batch" in t for t in text) == 1
    assert sum("refused the credentials" in t for t in text) == 1
    assert any("overflow=3" in t for t in text)
    assert all(MOBILE not in t and "600519" not in t for t in text)


def test_an_unconfigured_process_prints_nothing() -> None:
    code = (
        "from maidian.sdk import Client, QueueLimits\n"
        "c = Client('http://127.0.0.1:9', write_key='k', queue=QueueLimits(max_events=1))\n"
        "for _ in range(3): c.track('stock_order_submit', {'quantity': 100})\n"
        "c.close(0.2)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert done.stderr == ""
    assert done.stdout == ""


# -- proxies --------------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


@pytest.mark.parametrize("kind", ["thread", "asyncio"])
def test_an_explicit_proxy_with_credentials_forwards_http(sink: Sink, kind: str) -> None:
    with ForwardProxy(require_auth=("ops", "p@ss")) as proxy:
        host = proxy.url.removeprefix("http://")
        _deliver(kind, sink.url, proxy=f"http://ops:p%40ss@{host}", env={})
    assert len(sink.stored) == 1
    assert proxy.seen
    assert all(s.method == "POST" and s.target.startswith(sink.url) for s in proxy.seen)


def test_https_proxy_from_the_environment_and_no_proxy(sink: Sink, proxy: ForwardProxy) -> None:
    _deliver("thread", sink.url, env={"HTTP_PROXY": proxy.url})
    assert len(proxy.seen) >= 1
    before = len(proxy.seen)
    _deliver("thread", sink.url, env={"http_proxy": proxy.url, "NO_PROXY": "127.0.0.1"})
    _deliver("thread", sink.url, env={"HTTP_PROXY": proxy.url}, proxy="")
    assert len(proxy.seen) == before, "NO_PROXY and proxy='' must bypass the proxy"
    assert len(sink.stored) == 3


def test_a_proxy_url_that_is_not_http_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="forward proxy"):
        Client("http://127.0.0.1:9", write_key="k", proxy="socks5://127.0.0.1:1080")


# -- TLS -----------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA, a server certificate for localhost and a client certificate, all made now."""
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests make their certificates with the openssl command, which is not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=maidian test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn, ext in (("server", "localhost", ["-extfile", "server.ext"]), ("client", "app-1", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.pem", *ext, cwd=d)  # fmt: skip
    return d


def _tls_sink(pki: Path, *, client_certs: bool) -> Sink:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    if client_certs:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki / "ca.pem")
    return Sink(ssl_context=context)


@pytest.mark.parametrize("kind", ["thread", "asyncio"])
def test_a_private_ca_is_trusted_only_when_given(pki: Path, kind: str) -> None:
    with _tls_sink(pki, client_certs=False) as sink:
        refused = _deliver(kind, sink.url, flush_s=1.0, env={})
        assert len(sink.stored) == 0, "the system's trust must refuse a private CA"
        assert refused.stats.dropped == {"unsent": 1}  # kept and retried until close, then counted
        _deliver(kind, sink.url, ca_bundle=pki / "ca.pem", env={})
        assert len(sink.stored) == 1


@pytest.mark.parametrize("kind", ["thread", "asyncio"])
def test_mutual_tls_presents_the_client_certificate(pki: Path, kind: str) -> None:
    with _tls_sink(pki, client_certs=True) as sink:
        _deliver(kind, sink.url, flush_s=1.0, ca_bundle=pki / "ca.pem", env={})
        assert len(sink.stored) == 0, "the server requires a client certificate"
        _deliver(kind, sink.url, ca_bundle=pki / "ca.pem", client_cert=pki / "client.pem",
                 client_key=pki / "client.key", env={})  # fmt: skip
        assert len(sink.stored) == 1


def test_https_through_a_connect_tunnel(pki: Path, proxy: ForwardProxy) -> None:
    with _tls_sink(pki, client_certs=False) as sink:
        _deliver("thread", sink.url, ca_bundle=pki / "ca.pem", env={"HTTPS_PROXY": proxy.url})
        _deliver("asyncio", sink.url, ca_bundle=pki / "ca.pem", env={"https_proxy": proxy.url})
        assert len(sink.stored) == 2
    port = sink.url.rsplit(":", 1)[1]
    assert [s.method for s in proxy.seen] == ["CONNECT", "CONNECT"]
    assert all(s.target == f"localhost:{port}" for s in proxy.seen)


def test_a_missing_certificate_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ca_bundle"):
        Client("https://localhost:9", write_key="k", ca_bundle=tmp_path / "nope.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS"):
        Client("https://localhost:9", write_key="k", client_cert=tmp_path / "junk.pem")
