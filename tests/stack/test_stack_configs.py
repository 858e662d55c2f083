"""The compose file and the configurations of the services that cannot run on this machine
(Loki, Elasticsearch, Tempo, the OpenTelemetry Collector, Grafana) agree with each other and
with their documented schemas, as far as can be checked without running them."""

from __future__ import annotations

import importlib.metadata
import logging
import re
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from stack_tools import (
    COMPOSE_FILE,
    DASHBOARD_PROVIDERS_FILE,
    DATASOURCES_FILE,
    LOKI_LABELS,
    PROMETHEUS_CONFIG,
    REPO_ROOT,
    STACK_DIR,
    compose_model,
    load_dashboards,
    load_yaml,
    read_env_file,
)

MODEL = compose_model()
SERVICES: dict[str, dict[str, Any]] = MODEL["services"]
ENV = read_env_file()
DATASOURCES = {ds["uid"]: ds for ds in load_yaml(DATASOURCES_FILE)["datasources"]}
LOKI = load_yaml(STACK_DIR / "loki" / "loki.yml")
TEMPO = load_yaml(STACK_DIR / "tempo" / "tempo.yml")
COLLECTOR = load_yaml(STACK_DIR / "otel-collector" / "config.yml")

EXPECTED_SERVICES = {
    "loki",
    "elasticsearch",
    "prometheus",
    "alertmanager",
    "tempo",
    "otel-collector",
    "grafana",
}


def _mount(service: str, target_prefix: str) -> Path:
    """Host path bind-mounted at (or above) ``target_prefix`` in ``service``."""
    for volume in SERVICES[service]["volumes"]:
        target = PurePosixPath(volume["target"])
        wanted = PurePosixPath(target_prefix)
        if volume["type"] == "bind" and wanted.is_relative_to(target):
            return Path(volume["source"]) / wanted.relative_to(target)
    pytest.fail(f"{service} mounts nothing at {target_prefix}")


def _host_port(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url if "//" in url else f"//{url}")
    assert parsed.hostname, url
    assert parsed.port, url
    return parsed.hostname, parsed.port


# -- compose -----------------------------------------------------------------------------------


def test_compose_has_a_name_and_every_service() -> None:
    """The stack has a top-level name and the seven services of the issue."""
    assert MODEL["name"] == "agent-runtime-stack"
    assert set(SERVICES) == EXPECTED_SERVICES


@pytest.mark.parametrize("service", sorted(EXPECTED_SERVICES))
def test_service_is_pinned_healthchecked_limited_and_rotated(service: str) -> None:
    """Image pinned from .env, a healthcheck, a memory limit, rotated logs, a restart policy."""
    config = SERVICES[service]
    image = config["image"]
    assert ":" in image.rsplit("/", 1)[-1], f"{service}: {image} has no tag"
    tag = image.rsplit(":", 1)[1]
    assert tag not in ("latest", "main", ""), image
    assert re.search(r"\d+\.\d+", tag), image
    assert tag in ENV.values(), f"{service}: tag {tag} does not come from stack/.env"
    assert config["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert int(config["deploy"]["resources"]["limits"]["memory"]) > 0
    assert config["logging"]["driver"] == "json-file"
    assert {"max-size", "max-file"} <= set(config["logging"]["options"])
    assert config["restart"] == "unless-stopped"


@pytest.mark.parametrize("service", sorted(EXPECTED_SERVICES))
def test_service_waits_for_healthy_dependencies(service: str) -> None:
    """Every depends_on entry waits for service_healthy of a service with a healthcheck."""
    for dependency, condition in SERVICES[service].get("depends_on", {}).items():
        assert condition["condition"] == "service_healthy", (service, dependency)
        assert "healthcheck" in SERVICES[dependency]


def test_state_lives_in_named_volumes() -> None:
    """Every stateful service keeps its data in a named volume declared at the top level."""
    data_dirs = {
        "loki": "/loki",
        "elasticsearch": "/usr/share/elasticsearch/data",
        "prometheus": "/prometheus",
        "alertmanager": "/alertmanager",
        "tempo": "/var/tempo",
        "grafana": "/var/lib/grafana",
    }
    for service, target in data_dirs.items():
        volumes = {v["target"]: v for v in SERVICES[service]["volumes"]}
        assert volumes[target]["type"] == "volume", service
        assert volumes[target]["source"] in MODEL["volumes"]


def test_bind_mounts_exist_in_the_repository_and_are_read_only() -> None:
    """Every bind mount is a path of this repository, mounted read-only."""
    for service, config in SERVICES.items():
        for volume in config.get("volumes", []):
            if volume["type"] != "bind":
                continue
            source = Path(volume["source"])
            assert source.exists(), f"{service}: {source} does not exist"
            assert source.is_relative_to(REPO_ROOT), f"{service}: {source} outside the repo"
            assert volume.get("read_only") is True, f"{service}: {source} is writable"


def test_ports_are_published_on_loopback_only() -> None:
    """No port of the stack is reachable from outside the machine."""
    for service, config in SERVICES.items():
        for port in config.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (service, port)


def test_env_file_pins_every_image_and_defines_every_variable() -> None:
    """Each ${VAR} of the compose file is in stack/.env and each *_VERSION there is used."""
    raw = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{(\w+)\}", raw))
    assert used <= set(ENV), f"undefined in stack/.env: {sorted(used - set(ENV))}"
    versions = {key for key in ENV if key.endswith("_VERSION")}
    assert versions <= used, f"unused versions: {sorted(versions - used)}"
    images = re.findall(r"^\s*image:\s*(\S+)", raw, re.M)
    assert len(images) == len(EXPECTED_SERVICES)
    for image in images:
        assert re.search(r":\$\{\w+_VERSION\}$", image), f"{image} is not pinned via stack/.env"


def test_elasticsearch_image_matches_the_python_client_major_version() -> None:
    """The pinned Elasticsearch has the major version of the `elasticsearch` client installed
    (the 9.x client refuses 8.x servers and the other way round)."""
    client = importlib.metadata.version("elasticsearch")
    assert ENV["ELASTICSEARCH_VERSION"].split(".")[0] == client.split(".")[0]


def test_elasticsearch_is_a_memory_capped_single_node_without_security() -> None:
    """Single node, heap below the container limit, security off (local use, loopback only)."""
    environment = SERVICES["elasticsearch"]["environment"]
    assert environment["discovery.type"] == "single-node"
    assert environment["xpack.security.enabled"] == "false"
    heap = re.fullmatch(r"-Xms(\d+)m -Xmx(\d+)m", environment["ES_JAVA_OPTS"])
    assert heap
    assert heap.group(1) == heap.group(2)
    limit = int(SERVICES["elasticsearch"]["deploy"]["resources"]["limits"]["memory"])
    assert int(heap.group(1)) * 2**20 * 2 <= limit, "leave room for off-heap memory"


def test_prometheus_scrapes_the_host_and_keeps_exemplars() -> None:
    """Prometheus reaches host.docker.internal, keeps exemplars and has a retention."""
    prometheus = SERVICES["prometheus"]
    assert "host.docker.internal=host-gateway" in prometheus["extra_hosts"]
    flags = prometheus["command"]
    assert "--enable-feature=exemplar-storage" in flags
    assert any(f.startswith("--storage.tsdb.retention.time=") for f in flags)
    config_flag = next(f for f in flags if f.startswith("--config.file="))
    container_path = config_flag.split("=", 1)[1]
    assert _mount("prometheus", container_path) == PROMETHEUS_CONFIG
    config = load_yaml(PROMETHEUS_CONFIG)
    runtime = next(j for j in config["scrape_configs"] if j["job_name"] == "agent-runtime")
    assert runtime["static_configs"][0]["targets"] == ["host.docker.internal:8787"]
    assert runtime["static_configs"][0]["labels"]["service"]
    assert config["storage"]["exemplars"]["max_exemplars"] > 0


def _normalize(path: PurePosixPath) -> PurePosixPath:
    """Resolve ``..`` lexically, as Prometheus does for a relative rule_files entry."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            parts.pop()
        else:
            parts.append(part)
    return PurePosixPath(*parts)


def test_prometheus_rule_files_resolve_to_alerts_rules_in_the_container() -> None:
    """The relative rule_files glob lands on the mounted alerts/rules directory."""
    config = load_yaml(PROMETHEUS_CONFIG)
    flags = SERVICES["prometheus"]["command"]
    config_flag = next(f for f in flags if f.startswith("--config.file="))
    container_config = PurePosixPath(config_flag.split("=", 1)[1])
    for pattern in config["rule_files"]:
        resolved = _normalize(container_config.parent / pattern)
        host_dir = _mount("prometheus", str(resolved.parent))
        assert host_dir == REPO_ROOT / "alerts" / "rules", pattern
        assert list(host_dir.glob(resolved.name)), f"{pattern} matches no file"


def test_alertmanager_and_prometheus_agree_on_addresses() -> None:
    """Prometheus sends alerts to the alertmanager service on the port it listens on."""
    config = load_yaml(PROMETHEUS_CONFIG)
    target = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    host, port = _host_port(target)
    assert host == "alertmanager"
    assert any(p["target"] == port for p in SERVICES["alertmanager"]["ports"])
    assert (
        SERVICES["alertmanager"]["environment"]["ALERTMANAGER_WEBHOOK_URL"]
        == (ENV["ALERTMANAGER_WEBHOOK_URL"])
    )
    assert "host.docker.internal=host-gateway" in SERVICES["alertmanager"]["extra_hosts"]


# -- Loki --------------------------------------------------------------------------------------


def test_loki_keeps_structured_metadata_with_tsdb_v13_and_retention() -> None:
    """Structured metadata on (needs tsdb + v13), retention enforced by the compactor."""
    schema = LOKI["schema_config"]["configs"][-1]
    assert (schema["store"], schema["schema"], schema["index"]["period"]) == ("tsdb", "v13", "24h")
    limits = LOKI["limits_config"]
    assert limits["allow_structured_metadata"] is True
    assert re.fullmatch(r"\d+h", limits["retention_period"])
    compactor = LOKI["compactor"]
    assert compactor["retention_enabled"] is True
    # Loki 3 refuses to start with retention on and no delete-request store.
    assert compactor["delete_request_store"] == schema["object_store"]
    assert LOKI["auth_enabled"] is False


def test_loki_config_file_is_the_one_the_container_loads() -> None:
    """The -config.file path is the mounted stack/loki/loki.yml; the port is published."""
    flag = next(a for a in SERVICES["loki"]["command"] if a.startswith("-config.file="))
    assert _mount("loki", flag.split("=", 1)[1]) == STACK_DIR / "loki" / "loki.yml"
    port = LOKI["server"]["http_listen_port"]
    assert any(p["target"] == port for p in SERVICES["loki"]["ports"])
    assert _host_port(DATASOURCES["loki"]["url"]) == ("loki", port)


# -- Tempo and the collector -------------------------------------------------------------------


def test_tempo_is_a_tempo3_monolith_with_local_storage_and_retention() -> None:
    """No Tempo 2 ingester/compactor blocks, local backend, retention set, OTLP on 0.0.0.0."""
    assert ENV["TEMPO_VERSION"].startswith("3.")
    assert not {"ingester", "compactor", "ingester_client"} & set(TEMPO)
    assert TEMPO["storage"]["trace"]["backend"] == "local"
    assert re.fullmatch(r"\d+h", TEMPO["overrides"]["defaults"]["compaction"]["block_retention"])
    endpoint = TEMPO["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert endpoint.startswith("0.0.0.0:")
    flags = SERVICES["tempo"]["command"]
    config_flag = next(f for f in flags if f.startswith("-config.file="))
    assert _mount("tempo", config_flag.split("=", 1)[1]) == STACK_DIR / "tempo" / "tempo.yml"
    assert "-target=all" in flags


def test_collector_sends_traces_to_tempo_grpc_receiver() -> None:
    """The collector's trace exporter targets the tempo service on Tempo's OTLP gRPC port."""
    pipeline = COLLECTOR["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    exporters = [COLLECTOR["exporters"][name] for name in pipeline["exporters"]]
    tempo_port = _host_port(
        TEMPO["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    )[1]
    assert any(_host_port(e["endpoint"]) == ("tempo", tempo_port) for e in exporters)
    assert all(e["tls"]["insecure"] is True for e in exporters)
    # Since collector 0.144 the gRPC exporter is `otlp_grpc` (`otlp` is a deprecated alias).
    assert all(name.split("/")[0] == "otlp_grpc" for name in pipeline["exporters"])
    assert "otel-collector" in SERVICES
    assert "tempo" in SERVICES["otel-collector"]["depends_on"]


def test_collector_pipeline_references_only_defined_components() -> None:
    """Every component a pipeline names is defined, and every defined one is used."""
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline in COLLECTOR["service"]["pipelines"].values():
        for kind in used:
            used[kind] |= set(pipeline.get(kind, []))
    for kind, names in used.items():
        assert names == set(COLLECTOR.get(kind, {})), kind
    assert set(COLLECTOR["service"].get("extensions", [])) == set(COLLECTOR.get("extensions", {}))


def test_collector_receives_otlp_on_the_published_standard_ports() -> None:
    """OTLP gRPC 4317 and HTTP 4318 listen on all interfaces and are published on loopback."""
    protocols = COLLECTOR["receivers"]["otlp"]["protocols"]
    assert _host_port(protocols["grpc"]["endpoint"]) == ("0.0.0.0", 4317)
    assert _host_port(protocols["http"]["endpoint"]) == ("0.0.0.0", 4318)
    published = {p["target"] for p in SERVICES["otel-collector"]["ports"]}
    assert {4317, 4318} <= published
    flag = SERVICES["otel-collector"]["command"][0]
    assert _mount("otel-collector", flag.split("=", 1)[1]) == (
        STACK_DIR / "otel-collector" / "config.yml"
    )
    # The healthcheck validates the very file the collector runs with.
    assert flag in SERVICES["otel-collector"]["healthcheck"]["test"]


def test_collector_self_metrics_are_scraped() -> None:
    """The collector exposes its own metrics where Prometheus scrapes them."""
    reader = COLLECTOR["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]
    port = reader["prometheus"]["port"]
    config = load_yaml(PROMETHEUS_CONFIG)
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "otel-collector")
    assert job["static_configs"][0]["targets"] == [f"otel-collector:{port}"]


# -- Grafana -----------------------------------------------------------------------------------


def test_datasources_have_fixed_unique_uids_and_compose_urls() -> None:
    """Each provisioned data source has a fixed uid and points at a compose service port."""
    raw = load_yaml(DATASOURCES_FILE)["datasources"]
    assert len({ds["uid"] for ds in raw}) == len(raw)
    assert set(DATASOURCES) == {
        "prometheus",
        "alertmanager",
        "loki",
        "elasticsearch",
        "tempo",
    }
    for uid, datasource in DATASOURCES.items():
        host, port = _host_port(datasource["url"])
        assert host in SERVICES, uid
        assert any(p["target"] == port for p in SERVICES[host].get("ports", [])), uid
        assert datasource["access"] == "proxy"


def test_datasource_links_point_at_provisioned_uids() -> None:
    """Exemplars, derived fields, data links and traces-to-logs target provisioned uids."""
    prometheus = DATASOURCES["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert prometheus == [
        {"name": "trace_id", "datasourceUid": "tempo", "urlDisplayLabel": "Open trace in Tempo"}
    ]
    derived = DATASOURCES["loki"]["jsonData"]["derivedFields"][0]
    assert derived["datasourceUid"] == "tempo"
    assert derived["url"] == "$${__value.raw}"
    link = DATASOURCES["elasticsearch"]["jsonData"]["dataLinks"][0]
    assert (link["field"], link["datasourceUid"]) == ("trace.id", "tempo")
    assert link["url"] == "$${__value.raw}"
    to_logs = DATASOURCES["tempo"]["jsonData"]["tracesToLogsV2"]
    assert to_logs["datasourceUid"] == "loki"
    assert {tag["value"] for tag in to_logs["tags"]} <= LOKI_LABELS
    assert "trace_id=" in to_logs["query"]
    assert "$${__trace.traceId}" in to_logs["query"]


def test_elasticsearch_datasource_reads_the_sink_data_stream() -> None:
    """The Elasticsearch data source searches logs-agent_runtime-default on ECS fields."""
    data = DATASOURCES["elasticsearch"]["jsonData"]
    assert data["index"] == "logs-agent_runtime-default"
    assert (data["timeField"], data["logMessageField"], data["logLevelField"]) == (
        "@timestamp",
        "message",
        "log.level",
    )


def test_loki_derived_field_finds_the_trace_id_of_a_real_log_record() -> None:
    """The derived-field regex extracts trace_id from a line built by observability.records."""
    from opentelemetry.sdk.trace import TracerProvider

    from observability.records import build_entry

    tracer = TracerProvider().get_tracer("stack-test")
    record = logging.LogRecord("agent", logging.INFO, __file__, 1, "step done", None, None)
    with tracer.start_as_current_span("run") as span:
        entry = build_entry(record, "agent-runtime")
        trace_id = format(span.get_span_context().trace_id, "032x")
    pattern = DATASOURCES["loki"]["jsonData"]["derivedFields"][0]["matcherRegex"]
    match = re.search(pattern, entry.json())
    assert match is not None, f"{pattern!r} does not match {entry.json()}"
    assert match.group(1) == trace_id
    outside = build_entry(record, "agent-runtime")  # no span: no trace id, no link
    assert re.search(pattern, outside.json()) is None


def test_dashboard_provider_reads_the_mounted_dashboards_into_a_folder() -> None:
    """The provider path is where compose mounts dashboards/, in an agent-runtime folder."""
    provider = load_yaml(DASHBOARD_PROVIDERS_FILE)["providers"][0]
    assert provider["folder"] == "agent-runtime"
    assert provider["type"] == "file"
    assert _mount("grafana", provider["options"]["path"]) == REPO_ROOT / "dashboards"
    assert load_dashboards()
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _mount("grafana", home).is_file()
    provisioning = _mount("grafana", "/etc/grafana/provisioning")
    assert provisioning == STACK_DIR / "grafana" / "provisioning"


def test_grafana_admin_password_is_not_the_default() -> None:
    """Grafana does not start with admin/admin; anonymous visitors are read-only."""
    environment = SERVICES["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] not in ("", "admin")
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_stack_files_mention_no_machine_path() -> None:
    """No file under stack/, alerts/ or dashboards/ names a path of this machine."""
    pattern = re.compile(r"/work/|/tmp/|/root/|/home/")
    for directory in ("stack", "alerts", "dashboards"):
        for path in (REPO_ROOT / directory).rglob("*"):
            if path.is_file():
                assert not pattern.search(path.read_text()), path
