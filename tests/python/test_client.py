"""An outside scheduler's view: a Python gRPC client that knows nothing of our protos.

Starts the real binary on a free loopback port, discovers the services through server
reflection (v1alpha, as grpcio-reflection asks), builds the message classes from the
descriptors it was sent, calls GetNetworkAnalytics and IngestService.Ingest, and checks
grpc.health.v1. Exits non-zero on any failure.
"""

import os
import re
import signal
import subprocess
import sys
import time

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

PKG = "depin.analytics.v1"


def start_node(binary):
    env = dict(os.environ, LOG_LEVEL="WARN", ANALYTICS_INTERVAL="1s")
    proc = subprocess.Popen(
        [binary, "serve", "--grpc-port", "127.0.0.1:0", "--metrics-port", "off", "--shards", "16"],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        m = re.match(r"listening on (\S+)", line or "")
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("node did not start")


def main():
    binary = sys.argv[1]
    proc, addr = start_node(binary)
    try:
        channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(channel).result(timeout=10)

        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", f"{PKG}.ReputationService", f"{PKG}.IngestService"]:
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, (service, resp)

        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        for s in ["ReputationService", "IngestService", "ClusterService"]:
            assert f"{PKG}.{s}" in services, services
        pool = descriptor_pool.DescriptorPool(db)
        rep = pool.FindServiceByName(f"{PKG}.ReputationService")
        names = [m.name for m in rep.methods]
        for m in ["GetProviderReputationProfile", "GetProviderRankings", "GetProviderRecommendations",
                  "GetProviderTrendAnalysis", "GetProviderForecasts", "GetNetworkAnalytics",
                  "GetProviderUtilizationPattern", "WatchAlerts"]:
            assert m in names, names

        def cls(name):
            return GetMessageClass(pool.FindMessageTypeByName(f"{PKG}.{name}"))

        # Ingest a few events through the stream, built only from reflected descriptors.
        Batch, Event = cls("IngestBatch"), cls("TelemetryEvent")
        Ack = cls("IngestAck")
        now = int(time.time()) - 60
        events = []
        for i in range(5):
            e = Event(event_id=f"py-{i}", provider_id="py-provider")
            e.timestamp.seconds = now + i
            e.heartbeat.status = 1
            events.append(e)
        bad = Event(event_id="py-bad", provider_id="py-provider")
        bad.timestamp.seconds = now
        bad.utilization.cpu = 1.5
        events.append(bad)
        ingest = channel.stream_stream(
            f"/{PKG}.IngestService/Ingest",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=Ack.FromString,
        )
        acks = list(ingest(iter([Batch(batch_id=7, events=events)]), timeout=10))
        assert len(acks) == 1 and acks[0].batch_id == 7, acks
        assert acks[0].accepted == 5 and acks[0].rejected == 1, acks[0]
        assert acks[0].rejections[0].field == "events[5].utilization.cpu", acks[0].rejections

        Req, Resp = cls("GetNetworkAnalyticsRequest"), cls("NetworkAnalytics")
        call = channel.unary_unary(
            f"/{PKG}.ReputationService/GetNetworkAnalytics",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=Resp.FromString,
        )
        deadline = time.time() + 15
        while True:
            na = call(Req(), timeout=5)
            if na.total_providers == 1 or time.time() > deadline:
                break
            time.sleep(0.5)
        assert na.total_providers == 1, na
        print(f"python client: reflection found {len(services)} services; network analytics "
              f"total_providers={na.total_providers}; health SERVING")
        print("1 passed, 0 failed")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit("node did not stop on SIGTERM")
        if code != 0:
            raise SystemExit(f"node exited with {code} after SIGTERM")


if __name__ == "__main__":
    main()
