"""The documented surface matches the app: OpenAPI routes, the metrics text, the configuration."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from maidian.collector.config import resolve_config
from maidian.collector.errors import ConfigError
from maidian.collector.http.app import ROUTES
from maidian.collector.settings import hash_key
from tests.collector.helpers import body_of, headers_for, order
from tests.conftest import MINI_PLAN, ROOT

OPENAPI = ROOT / "docs" / "openapi.json"


def test_openapi_is_valid_and_lists_every_route(client: Any) -> None:
    doc = json.loads(OPENAPI.read_text())
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == set(ROUTES)
    served = {(r.method, r.resource.canonical) for r in client.server.app.router.routes() if r.method != "HEAD"}
    assert served == set(ROUTES)
    # Every schema in it is a valid JSON Schema (2020-12, which OpenAPI 3.1 uses).
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    assert "docs/openapi.json" in (ROOT / "docs" / "protocol.md").read_text()


async def test_responses_match_the_openapi_schemas(client: Any) -> None:
    doc = json.loads(OPENAPI.read_text())
    registry_doc = {"components": doc["components"]}

    def check(value: Any, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", **registry_doc}
        jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)

    resp = await client.post("/v1/batch", data=body_of([order(1), order(2, side="x")]), headers=headers_for())
    check(await resp.json(), "Results")
    resp = await client.post("/v1/debug", data=body_of([order(3)]), headers=headers_for())
    check(await resp.json(), "Results")
    resp = await client.post("/v1/batch", data=b"junk", headers=headers_for())
    check(await resp.json(), "Error")


_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+|\+Inf|-Inf|NaN)$'
)


async def test_metrics_text_parses(client: Any) -> None:
    await client.post("/v1/batch", data=body_of([order(1), order(1), order(2, side="x")]), headers=headers_for())
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    families: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = kind
        elif line.startswith("# HELP ") or not line:
            continue
        else:
            m = _SAMPLE.match(line)
            assert m, line
            samples[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    assert families["maidian_request_duration_seconds"] == "histogram"
    assert samples['maidian_events_total{outcome="accepted"}'] == 1
    assert samples['maidian_events_total{outcome="duplicate"}'] == 1
    assert samples['maidian_events_total{outcome="quarantined"}'] == 1
    assert samples['maidian_requests_total{path="/v1/batch",status="200"}'] == 1
    assert samples['maidian_request_duration_seconds_bucket{le="+Inf"}'] >= 1
    for name in ("maidian_queue_depth_events", "maidian_fsync_seconds_total", "maidian_catalog_lag_bytes"):
        assert name in families
    assert samples['maidian_request_bytes_total{stage="wire"}'] > 0


def test_configuration_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "maidian.toml"
    toml.write_text(
        f'plan = "{MINI_PLAN}"\n'
        '[server]\nport = 9000\nhost = "0.0.0.0"\n'
        '[storage]\ndurability = "write"\nsync_interval_ms = 100\n'
        "[limits]\nmax_events = 500\n"
        f'[[write_keys]]\nname = "ios"\nsha256 = "{hash_key("k1")}"\n'
        '[[sources]]\nname = "orders"\nsecret_env = "ORDERS_SECRET"\n'
    )
    env = {"MAIDIAN_PORT": "9100", "ORDERS_SECRET": "s" * 32, "MAIDIAN_WRITE_KEYS": "k2,k3"}
    config = resolve_config(file=toml, env=env, flags={"host": "127.0.0.1", "port": None}, write_keys=("k4",))
    assert config.server.port == 9100  # environment over file
    assert config.server.host == "127.0.0.1"  # flag over file
    assert config.storage.durability == "write"
    assert config.limits.max_events == 500
    assert [k.name for k in config.auth.write_keys] == ["ios", "key1", "key2", "key3"]
    assert {k.sha256 for k in config.auth.write_keys} == {hash_key(k) for k in ("k1", "k2", "k3", "k4")}
    assert config.auth.sources[0].secret == b"s" * 32
    assert config.server.event_loop == "auto"
    assert resolve_config(file=toml, env={**env, "MAIDIAN_EVENT_LOOP": "asyncio"}).server.event_loop == "asyncio"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[write_keys]]\nkey = "plain"\n', "sha256"),
        ("[server]\nprot = 1\n", "unknown setting 'prot'"),
        ("[dedup]\nwindow_s = 3600\n", "shorter than"),
        ('[storage]\ndurability = "sometimes"\n', "'fsync' or 'write'"),
        ('[server]\nevent_loop = "trio"\n', "server.event_loop: expected one of auto, asyncio, uvloop"),
        ('[server]\nport = "x"\n', "integer"),
        ('[[sources]]\nname = "x"\nsecret = "short"\n', "16 characters"),
        ("plan = [\n", "not valid TOML"),
    ],
)
def test_configuration_errors_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config(file=toml, env={}, flags={"plan": str(MINI_PLAN)}, write_keys=("k",))


def test_a_collector_needs_a_plan_and_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no tracking plan"):
        resolve_config(env={}, write_keys=("k",))
    with pytest.raises(ConfigError, match="no write key"):
        resolve_config(env={}, flags={"plan": str(MINI_PLAN)})
