//! Conversions between the model and analytics types and the proto messages: the only
//! place that knows both.

use crate::model::{EventPayload, HeartbeatStatus, JobStatus, ProviderSpec, TelemetryEvent};
use crate::proto::v1 as pb;

pub fn timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

pub fn spec_to_proto(s: &ProviderSpec) -> pb::ProviderSpec {
    pb::ProviderSpec {
        region: s.region.clone(),
        cpu_cores: s.cpu_cores,
        memory_gb: s.memory_gb,
        gpus: s
            .gpus
            .iter()
            .map(|g| pb::GpuSpec { model: g.model.clone(), count: g.count, vram_gb: g.vram_gb })
            .collect(),
        storage_gb: s.storage_gb,
        price_per_hour: s.price_per_hour,
    }
}

/// A model event as the collector would send it.
pub fn event_to_proto(e: &TelemetryEvent) -> pb::TelemetryEvent {
    use pb::telemetry_event::Payload;
    let payload = match &e.payload {
        EventPayload::JobOutcome(j) => Payload::JobOutcome(pb::JobOutcome {
            status: match j.status {
                JobStatus::Completed => pb::JobStatus::Completed,
                JobStatus::Failed => pb::JobStatus::Failed,
                JobStatus::TimedOut => pb::JobStatus::TimedOut,
                JobStatus::Cancelled => pb::JobStatus::Cancelled,
            } as i32,
            duration_seconds: j.duration_seconds,
            sla_met: j.sla_met,
            error_code: j.error_code,
            cost: j.cost,
        }),
        EventPayload::Heartbeat(h) => Payload::Heartbeat(pb::Heartbeat {
            status: match h.status {
                HeartbeatStatus::Online => pb::HeartbeatStatus::Online,
                HeartbeatStatus::Offline => pb::HeartbeatStatus::Offline,
            } as i32,
        }),
        EventPayload::ResponseTime(r) => Payload::ResponseTime(pb::ResponseTimeSample {
            response_time_ms: r.response_time_ms,
            is_error: r.is_error,
        }),
        EventPayload::Utilization(u) => Payload::Utilization(pb::UtilizationSample { cpu: u.cpu, gpu: u.gpu, memory: u.memory }),
        EventPayload::Spec(s) => Payload::Spec(spec_to_proto(s)),
    };
    pb::TelemetryEvent {
        event_id: e.event_id.clone(),
        provider_id: e.provider_id.to_string(),
        timestamp: timestamp(e.timestamp),
        payload: Some(payload),
    }
}
