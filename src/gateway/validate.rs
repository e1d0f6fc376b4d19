//! Validation of incoming events at the proto edge: a bad event is rejected with the field
//! it got wrong, and nothing of it is stored.

use crate::model::{
    EventPayload, GpuSpec, Heartbeat, HeartbeatStatus, JobOutcome, JobStatus, ProviderId,
    ProviderSpec, ResponseTimeSample, TelemetryEvent, UtilizationSample,
};
use crate::proto::v1 as pb;

/// Longest provider or event id accepted.
pub const MAX_ID_LEN: usize = 128;

/// One bad field of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Path of the field inside the event, e.g. `utilization.cpu`.
    pub field: String,
    /// Machine-readable reason (`required`, `out_of_range`, `invalid_characters`, …).
    pub reason: &'static str,
    pub description: String,
}

fn violation(field: &str, reason: &'static str, description: impl Into<String>) -> Violation {
    Violation {
        field: field.to_string(),
        reason,
        description: description.into(),
    }
}

/// Checks an id: non-empty, at most [`MAX_ID_LEN`] bytes, ASCII letters, digits and `._:-`.
pub fn check_id(field: &str, id: &str) -> Result<(), Violation> {
    if id.is_empty() {
        return Err(violation(field, "required", format!("{field} is required")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(violation(
            field,
            "too_long",
            format!("{field} is {} bytes, at most {MAX_ID_LEN}", id.len()),
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(violation(
            field,
            "invalid_characters",
            format!("{field} may hold only letters, digits and . _ : -"),
        ));
    }
    Ok(())
}

fn finite_non_negative(field: &str, v: f64) -> Result<f64, Violation> {
    if !v.is_finite() {
        return Err(violation(
            field,
            "not_finite",
            format!("{field} must be a finite number, got {v}"),
        ));
    }
    if v < 0.0 {
        return Err(violation(
            field,
            "out_of_range",
            format!("{field} must not be negative, got {v}"),
        ));
    }
    Ok(v)
}

fn fraction(field: &str, v: f64) -> Result<f64, Violation> {
    let v = finite_non_negative(field, v)?;
    if v > 1.0 {
        return Err(violation(
            field,
            "out_of_range",
            format!("{field} must be in [0, 1], got {v}"),
        ));
    }
    Ok(v)
}

/// Converts and validates one proto event. `wall_now` bounds how far in the future an event
/// may claim to be (`max_future_skew` seconds); the window check happens in the provider state.
pub fn event(
    ev: pb::TelemetryEvent,
    wall_now: i64,
    max_future_skew: i64,
) -> Result<TelemetryEvent, Violation> {
    check_id("event_id", &ev.event_id)?;
    check_id("provider_id", &ev.provider_id)?;
    let ts = ev
        .timestamp
        .ok_or_else(|| violation("timestamp", "required", "timestamp is required"))?;
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(violation(
            "timestamp.nanos",
            "out_of_range",
            "timestamp.nanos must be in [0, 1e9)",
        ));
    }
    if ts.seconds > wall_now + max_future_skew {
        return Err(violation(
            "timestamp",
            "in_future",
            format!(
                "timestamp {} is more than {max_future_skew}s ahead of this node's clock",
                ts.seconds
            ),
        ));
    }
    if ts.seconds < 0 {
        return Err(violation(
            "timestamp",
            "out_of_range",
            "timestamp must be after 1970",
        ));
    }
    use pb::telemetry_event::Payload;
    let payload = match ev.payload.ok_or_else(|| {
        violation(
            "payload",
            "required",
            "one of job_outcome, heartbeat, response_time, utilization, spec is required",
        )
    })? {
        Payload::JobOutcome(j) => EventPayload::JobOutcome(JobOutcome {
            status: match pb::JobStatus::try_from(j.status) {
                Ok(pb::JobStatus::Completed) => JobStatus::Completed,
                Ok(pb::JobStatus::Failed) => JobStatus::Failed,
                Ok(pb::JobStatus::TimedOut) => JobStatus::TimedOut,
                Ok(pb::JobStatus::Cancelled) => JobStatus::Cancelled,
                _ => {
                    return Err(violation(
                        "job_outcome.status",
                        "invalid_enum",
                        format!(
                            "job_outcome.status must be COMPLETED, FAILED, TIMED_OUT or CANCELLED, got {}",
                            j.status
                        ),
                    ));
                }
            },
            duration_seconds: finite_non_negative(
                "job_outcome.duration_seconds",
                j.duration_seconds,
            )?,
            sla_met: j.sla_met,
            error_code: j.error_code,
            cost: finite_non_negative("job_outcome.cost", j.cost)?,
        }),
        Payload::Heartbeat(h) => EventPayload::Heartbeat(Heartbeat {
            status: match pb::HeartbeatStatus::try_from(h.status) {
                Ok(pb::HeartbeatStatus::Online) => HeartbeatStatus::Online,
                Ok(pb::HeartbeatStatus::Offline) => HeartbeatStatus::Offline,
                _ => {
                    return Err(violation(
                        "heartbeat.status",
                        "invalid_enum",
                        format!(
                            "heartbeat.status must be ONLINE or OFFLINE, got {}",
                            h.status
                        ),
                    ));
                }
            },
        }),
        Payload::ResponseTime(r) => {
            let ms = finite_non_negative("response_time.response_time_ms", r.response_time_ms)?;
            if ms > 3_600_000.0 {
                return Err(violation(
                    "response_time.response_time_ms",
                    "out_of_range",
                    format!("response_time.response_time_ms must be at most one hour, got {ms}"),
                ));
            }
            EventPayload::ResponseTime(ResponseTimeSample {
                response_time_ms: ms,
                is_error: r.is_error,
            })
        }
        Payload::Utilization(u) => EventPayload::Utilization(UtilizationSample {
            cpu: fraction("utilization.cpu", u.cpu)?,
            gpu: fraction("utilization.gpu", u.gpu)?,
            memory: fraction("utilization.memory", u.memory)?,
        }),
        Payload::Spec(s) => EventPayload::Spec(spec("spec", s)?),
    };
    Ok(TelemetryEvent {
        event_id: ev.event_id,
        provider_id: ProviderId::new(&ev.provider_id),
        timestamp: ts.seconds,
        payload,
    })
}

/// Validates a provider spec (also used for job requirements' shape checks).
pub fn spec(prefix: &str, s: pb::ProviderSpec) -> Result<ProviderSpec, Violation> {
    let f = |name: &str| format!("{prefix}.{name}");
    if s.region.len() > 64 {
        return Err(violation(
            &f("region"),
            "too_long",
            "region is at most 64 bytes",
        ));
    }
    if s.gpus.len() > 16 {
        return Err(violation(&f("gpus"), "too_many", "at most 16 GPU groups"));
    }
    let mut gpus = Vec::with_capacity(s.gpus.len());
    for (i, g) in s.gpus.into_iter().enumerate() {
        let name = f(&format!("gpus[{i}]"));
        if g.model.is_empty() || g.model.len() > 64 {
            return Err(violation(
                &format!("{name}.model"),
                "required",
                "gpu model is required, at most 64 bytes",
            ));
        }
        if g.count == 0 {
            return Err(violation(
                &format!("{name}.count"),
                "out_of_range",
                "gpu count must be at least 1",
            ));
        }
        gpus.push(GpuSpec {
            model: g.model,
            count: g.count,
            vram_gb: finite_non_negative(&format!("{name}.vram_gb"), g.vram_gb)?,
        });
    }
    Ok(ProviderSpec {
        region: s.region,
        cpu_cores: s.cpu_cores,
        memory_gb: finite_non_negative(&f("memory_gb"), s.memory_gb)?,
        gpus,
        storage_gb: finite_non_negative(&f("storage_gb"), s.storage_gb)?,
        price_per_hour: finite_non_negative(&f("price_per_hour"), s.price_per_hour)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> pb::TelemetryEvent {
        pb::TelemetryEvent {
            event_id: "e1".into(),
            provider_id: "prov-1".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_000,
                nanos: 0,
            }),
            payload: Some(pb::telemetry_event::Payload::Utilization(
                pb::UtilizationSample {
                    cpu: 0.5,
                    gpu: 0.5,
                    memory: 0.5,
                },
            )),
        }
    }

    #[test]
    fn names_the_bad_field() {
        assert!(event(base(), 1_000, 300).is_ok());
        let mut e = base();
        e.payload = Some(pb::telemetry_event::Payload::Utilization(
            pb::UtilizationSample {
                cpu: 1.5,
                gpu: 0.5,
                memory: f64::NAN,
            },
        ));
        assert_eq!(event(e, 1_000, 300).unwrap_err().field, "utilization.cpu");
        let mut e = base();
        e.provider_id = "bad id!".into();
        assert_eq!(
            event(e, 1_000, 300).unwrap_err().reason,
            "invalid_characters"
        );
        let mut e = base();
        e.timestamp = None;
        assert_eq!(event(e, 1_000, 300).unwrap_err().field, "timestamp");
        let e = base();
        assert_eq!(event(e, 500, 300).unwrap_err().reason, "in_future");
        let mut e = base();
        e.payload = Some(pb::telemetry_event::Payload::JobOutcome(pb::JobOutcome {
            status: 0,
            ..Default::default()
        }));
        assert_eq!(
            event(e, 1_000, 300).unwrap_err().field,
            "job_outcome.status"
        );
    }
}
