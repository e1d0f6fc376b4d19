//! Validation of incoming events at the proto edge: a bad event is rejected with the field
//! it got wrong, and nothing of it is stored.

use crate::model::{
    EventPayload, GpuSpec, Heartbeat, HeartbeatStatus, JobOutcome, JobStatus, ProviderId,
    ProviderSpec, ResponseTimeSample, TelemetryEvent, UtilizationSample,
};
use crate::proto::v1 as pb;

/// Longest provider or event id accepted.
pub const MAX_ID_LEN: usize = 128;
/// Longest region or GPU model name accepted.
pub const MAX_LABEL_LEN: usize = 64;
/// Entries a list filter (regions, provider ids) may hold.
pub const MAX_FILTER_ENTRIES: usize = 256;
/// Longest job a job outcome may report (a year).
pub const MAX_JOB_SECONDS: f64 = 366.0 * 86_400.0;
/// Upper bounds of a spec's numbers: far beyond any one machine, low enough that no sum over
/// a fleet overflows into nonsense.
pub const MAX_CPU_CORES: u32 = 1 << 20;
pub const MAX_GPU_COUNT: u32 = 4096;
pub const MAX_GB: f64 = 1e9;
/// Largest money amount (a job's cost, an hourly price, a budget).
pub const MAX_MONEY: f64 = 1e12;

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

fn at_most(field: &str, v: f64, max: f64) -> Result<f64, Violation> {
    let v = finite_non_negative(field, v)?;
    if v > max {
        return Err(violation(
            field,
            "out_of_range",
            format!("{field} must be at most {max}, got {v}"),
        ));
    }
    Ok(v)
}

/// Checks a region or GPU model name: 1 to [`MAX_LABEL_LEN`] bytes of ASCII letters,
/// digits, space and `._:/+-` (no control characters, nothing a log or a label could trip on).
pub fn check_label(field: &str, s: &str) -> Result<(), Violation> {
    if s.is_empty() {
        return Err(violation(
            field,
            "required",
            format!("{field} must not be empty"),
        ));
    }
    if s.len() > MAX_LABEL_LEN {
        return Err(violation(
            field,
            "too_long",
            format!("{field} is {} bytes, at most {MAX_LABEL_LEN}", s.len()),
        ));
    }
    if !s.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b' ' | b'.' | b'_' | b':' | b'/' | b'+' | b'-')
    }) {
        return Err(violation(
            field,
            "invalid_characters",
            format!("{field} may hold only letters, digits, space and . _ : / + -"),
        ));
    }
    Ok(())
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
/// `previous` is the provider id of the batch's event before (collectors send a provider's
/// events together): when it is the same, its id is shared instead of allocated again.
pub fn event(
    ev: pb::TelemetryEvent,
    wall_now: i64,
    max_future_skew: i64,
    previous: Option<&ProviderId>,
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
    if ts.seconds > wall_now.saturating_add(max_future_skew) {
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
            duration_seconds: at_most(
                "job_outcome.duration_seconds",
                j.duration_seconds,
                MAX_JOB_SECONDS,
            )?,
            sla_met: j.sla_met,
            error_code: j.error_code,
            cost: at_most("job_outcome.cost", j.cost, MAX_MONEY)?,
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
        Payload::Spec(s) => EventPayload::Spec(Box::new(spec("spec", s)?)),
    };
    Ok(TelemetryEvent {
        event_id: ev.event_id,
        provider_id: match previous {
            Some(p) if p.as_str() == ev.provider_id => p.clone(),
            _ => ProviderId::new(&ev.provider_id),
        },
        timestamp: ts.seconds,
        payload,
    })
}

/// Rejects an event older than the analytics window behind `reference` (the newest event
/// time the node has accepted; `i64::MIN` before the first). The provider state checks the
/// same; checking here too means a too-old event of an unknown provider creates nothing.
pub fn in_window(
    ev: TelemetryEvent,
    reference: i64,
    window_hours: u32,
) -> Result<TelemetryEvent, Violation> {
    if reference == i64::MIN {
        return Ok(ev);
    }
    let newest_hour = reference.div_euclid(3600);
    if ev.timestamp.div_euclid(3600) <= newest_hour - i64::from(window_hours) {
        return Err(violation(
            "timestamp",
            "too_old",
            format!(
                "timestamp {} is older than the {window_hours}h window (newest hour starts at {})",
                ev.timestamp,
                newest_hour * 3600
            ),
        ));
    }
    Ok(ev)
}

/// Validates a provider spec (also used for job requirements' shape checks).
pub fn spec(prefix: &str, s: pb::ProviderSpec) -> Result<ProviderSpec, Violation> {
    let f = |name: &str| format!("{prefix}.{name}");
    if !s.region.is_empty() {
        check_label(&f("region"), &s.region)?;
    }
    if s.cpu_cores > MAX_CPU_CORES {
        return Err(violation(
            &f("cpu_cores"),
            "out_of_range",
            format!(
                "cpu_cores must be at most {MAX_CPU_CORES}, got {}",
                s.cpu_cores
            ),
        ));
    }
    if s.gpus.len() > 16 {
        return Err(violation(&f("gpus"), "too_many", "at most 16 GPU groups"));
    }
    let mut gpus = Vec::with_capacity(s.gpus.len());
    for (i, g) in s.gpus.into_iter().enumerate() {
        let name = f(&format!("gpus[{i}]"));
        check_label(&format!("{name}.model"), &g.model)?;
        if g.count == 0 || g.count > MAX_GPU_COUNT {
            return Err(violation(
                &format!("{name}.count"),
                "out_of_range",
                format!(
                    "gpu count must be between 1 and {MAX_GPU_COUNT}, got {}",
                    g.count
                ),
            ));
        }
        gpus.push(GpuSpec {
            model: g.model,
            count: g.count,
            vram_gb: at_most(&format!("{name}.vram_gb"), g.vram_gb, MAX_GB)?,
        });
    }
    Ok(ProviderSpec {
        region: s.region,
        cpu_cores: s.cpu_cores,
        memory_gb: at_most(&f("memory_gb"), s.memory_gb, MAX_GB)?,
        gpus,
        storage_gb: at_most(&f("storage_gb"), s.storage_gb, MAX_GB)?,
        price_per_hour: at_most(&f("price_per_hour"), s.price_per_hour, MAX_MONEY)?,
    })
}

// ------------------------------------------------------------------ query requests
//
// Every field of a query request that the handlers do not check themselves (they check the
// enums, page sizes, metric names and provider ids); all bad fields are reported at once.

/// INVALID_ARGUMENT with one BadRequest field violation per bad field.
pub fn bad_request(violations: Vec<Violation>) -> tonic::Status {
    let mut d = tonic_types::ErrorDetails::new();
    for v in &violations {
        d.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    let msg = violations
        .iter()
        .map(|v| v.description.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    <tonic::Status as tonic_types::StatusExt>::with_error_details(
        tonic::Code::InvalidArgument,
        msg,
        d,
    )
}

fn finish(v: Vec<Violation>) -> Result<(), tonic::Status> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(bad_request(v))
    }
}

fn list<T>(
    out: &mut Vec<Violation>,
    field: &str,
    items: &[T],
    check: impl Fn(&str, &T) -> Result<(), Violation>,
) {
    if items.len() > MAX_FILTER_ENTRIES {
        out.push(violation(
            field,
            "too_many",
            format!(
                "{field} holds at most {MAX_FILTER_ENTRIES} entries, got {}",
                items.len()
            ),
        ));
        return;
    }
    for (i, item) in items.iter().enumerate() {
        if let Err(v) = check(&format!("{field}[{i}]"), item) {
            out.push(v);
        }
    }
}

/// GetProviderRankings: filters' strings and the page token.
pub fn rankings_request(r: &pb::GetProviderRankingsRequest) -> Result<(), tonic::Status> {
    let mut out = Vec::new();
    if !r.region.is_empty()
        && let Err(v) = check_label("region", &r.region)
    {
        out.push(v);
    }
    if !r.gpu_model.is_empty()
        && let Err(v) = check_label("gpu_model", &r.gpu_model)
    {
        out.push(v);
    }
    if pb::RankingCategory::try_from(r.category).is_err() {
        out.push(violation(
            "category",
            "invalid_enum",
            format!("unknown ranking category {}", r.category),
        ));
    }
    if pb::Tier::try_from(r.min_tier).is_err() {
        out.push(violation(
            "min_tier",
            "invalid_enum",
            format!("unknown tier {}", r.min_tier),
        ));
    }
    if let Some(p) = &r.page
        && (p.page_token.len() > 20 || !p.page_token.bytes().all(|b| b.is_ascii_digit()))
    {
        out.push(violation(
            "page.page_token",
            "invalid_token",
            "not a token from a previous response",
        ));
    }
    finish(out)
}

/// GetProviderRecommendations: the job's strings and numbers.
pub fn recommendations_request(
    r: &pb::GetProviderRecommendationsRequest,
) -> Result<(), tonic::Status> {
    let mut out = Vec::new();
    if let Some(j) = &r.requirements {
        let f = |n: &str| format!("requirements.{n}");
        if !j.gpu_model.is_empty()
            && let Err(v) = check_label(&f("gpu_model"), &j.gpu_model)
        {
            out.push(v);
        }
        list(&mut out, &f("regions"), &j.regions, |field, s| {
            check_label(field, s)
        });
        if j.cpu_cores > MAX_CPU_CORES {
            out.push(violation(
                &f("cpu_cores"),
                "out_of_range",
                format!("at most {MAX_CPU_CORES}, got {}", j.cpu_cores),
            ));
        }
        if j.gpu_count > MAX_GPU_COUNT {
            out.push(violation(
                &f("gpu_count"),
                "out_of_range",
                format!("at most {MAX_GPU_COUNT}, got {}", j.gpu_count),
            ));
        }
        let numbers = [
            ("memory_gb", j.memory_gb, MAX_GB),
            ("min_vram_gb", j.min_vram_gb, MAX_GB),
            (
                "expected_duration_hours",
                j.expected_duration_hours,
                366.0 * 24.0,
            ),
            ("max_budget", j.max_budget, MAX_MONEY),
            ("min_uptime", j.min_uptime, 1.0),
            ("max_response_time_ms", j.max_response_time_ms, 3_600_000.0),
        ];
        for (name, v, max) in numbers {
            if let Err(v) = at_most(&f(name), v, max) {
                out.push(v);
            }
        }
        if pb::Tier::try_from(j.min_tier).is_err() {
            out.push(violation(
                &f("min_tier"),
                "invalid_enum",
                format!("unknown tier {}", j.min_tier),
            ));
        }
    }
    finish(out)
}

/// WatchAlerts: the filters (kinds are checked by the handler).
pub fn watch_alerts_request(r: &pb::WatchAlertsRequest) -> Result<(), tonic::Status> {
    let mut out = Vec::new();
    list(&mut out, "provider_ids", &r.provider_ids, |field, s| {
        check_id(field, s)
    });
    list(&mut out, "regions", &r.regions, |field, s| {
        check_label(field, s)
    });
    if r.kinds.len() > MAX_FILTER_ENTRIES {
        out.push(violation(
            "kinds",
            "too_many",
            format!("kinds holds at most {MAX_FILTER_ENTRIES} entries"),
        ));
    }
    finish(out)
}

/// A provider-keyed request's id (the handler checks it too; this names the field).
pub fn provider_request(provider_id: &str) -> Result<(), tonic::Status> {
    finish(
        check_id("provider_id", provider_id)
            .err()
            .into_iter()
            .collect(),
    )
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
    fn shares_the_previous_events_provider_id_when_it_is_the_same() {
        let first = event(base(), 1_000, 300, None).unwrap().provider_id;
        let same = event(base(), 1_000, 300, Some(&first)).unwrap().provider_id;
        assert_eq!(same, first);
        assert!(std::ptr::eq(same.as_str(), first.as_str()), "not shared");
        let mut other = base();
        other.provider_id = "another".into();
        let other = event(other, 1_000, 300, Some(&first)).unwrap().provider_id;
        assert_eq!(other.as_str(), "another");
    }

    #[test]
    fn names_the_bad_field() {
        assert!(event(base(), 1_000, 300, None).is_ok());
        let mut e = base();
        e.payload = Some(pb::telemetry_event::Payload::Utilization(
            pb::UtilizationSample {
                cpu: 1.5,
                gpu: 0.5,
                memory: f64::NAN,
            },
        ));
        assert_eq!(
            event(e, 1_000, 300, None).unwrap_err().field,
            "utilization.cpu"
        );
        let mut e = base();
        e.provider_id = "bad id!".into();
        assert_eq!(
            event(e, 1_000, 300, None).unwrap_err().reason,
            "invalid_characters"
        );
        let mut e = base();
        e.timestamp = None;
        assert_eq!(event(e, 1_000, 300, None).unwrap_err().field, "timestamp");
        let e = base();
        assert_eq!(event(e, 500, 300, None).unwrap_err().reason, "in_future");
        let mut e = base();
        e.payload = Some(pb::telemetry_event::Payload::JobOutcome(pb::JobOutcome {
            status: 0,
            ..Default::default()
        }));
        assert_eq!(
            event(e, 1_000, 300, None).unwrap_err().field,
            "job_outcome.status"
        );
    }
}
