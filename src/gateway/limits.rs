//! Per-client and per-node caps of the public services: events a second per client (token
//! bucket), concurrent Ingest streams, WatchAlerts subscribers. Answers RESOURCE_EXHAUSTED
//! with a `RetryInfo` saying when to come back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::gateway::Limits;
use crate::security::Principal;

/// Whom a rate limit applies to: the token's fingerprint when the call was authenticated,
/// else the peer's IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Token(String),
    Peer(IpAddr),
    Unknown,
}

impl ClientKey {
    pub fn of<T>(req: &tonic::Request<T>) -> ClientKey {
        if let Some(p) = req.extensions().get::<Principal>() {
            return ClientKey::Token(p.0.clone());
        }
        match req.remote_addr() {
            Some(a) => ClientKey::Peer(a.ip()),
            None => ClientKey::Unknown,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets, one a client: `rate` events a second, at most `burst` saved up.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

/// Buckets kept before full (idle) ones are dropped.
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` events from the client's bucket, or says how long until they would be there.
    pub fn take(&self, key: &ClientKey, n: u64, now: Instant) -> Result<(), Duration> {
        let n = n as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if n > self.burst {
            // Never fits: the batch is larger than the bucket (the batch cap prevents this
            // with the defaults); wait for a full bucket and let it overdraw.
            if b.tokens < self.burst {
                return Err(Duration::from_secs_f64((self.burst - b.tokens) / self.rate));
            }
            b.tokens -= n;
            return Ok(());
        }
        if b.tokens >= n {
            b.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - b.tokens) / self.rate))
        }
    }
}

/// RESOURCE_EXHAUSTED with a RetryInfo.
pub fn exhausted(message: impl Into<String>, retry_after: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after.max(Duration::from_millis(10)))),
    )
}

/// The shared state behind the limits of one node.
#[derive(Debug)]
pub struct Guards {
    pub rate: Option<RateLimiter>,
    pub ingest_streams: Arc<Semaphore>,
    pub alert_subscribers: Arc<Semaphore>,
    pub max_ingest_streams: usize,
    pub max_alert_subscribers: usize,
}

impl Guards {
    pub fn new(l: &Limits) -> Guards {
        let rate = (l.ingest_events_per_second > 0).then(|| {
            let burst = if l.ingest_burst_events > 0 {
                l.ingest_burst_events
            } else {
                l.ingest_events_per_second.max(l.max_batch_events as u64)
            };
            RateLimiter::new(l.ingest_events_per_second as f64, burst as f64)
        });
        Guards {
            rate,
            ingest_streams: Arc::new(Semaphore::new(l.max_ingest_streams)),
            alert_subscribers: Arc::new(Semaphore::new(l.max_alert_subscribers)),
            max_ingest_streams: l.max_ingest_streams,
            max_alert_subscribers: l.max_alert_subscribers,
        }
    }

    /// One more Ingest stream, or RESOURCE_EXHAUSTED.
    pub fn ingest_stream(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.ingest_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                metrics::counter!("depin_limit_exceeded_total", "limit" => "ingest_streams")
                    .increment(1);
                exhausted(
                    format!(
                        "this node serves at most {} Ingest streams at once",
                        self.max_ingest_streams
                    ),
                    Duration::from_secs(1),
                )
            })
    }

    /// One more WatchAlerts subscriber, or RESOURCE_EXHAUSTED.
    pub fn alert_subscriber(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.alert_subscribers
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                metrics::counter!("depin_limit_exceeded_total", "limit" => "alert_subscribers")
                    .increment(1);
                exhausted(
                    format!(
                        "this node serves at most {} WatchAlerts subscribers",
                        self.max_alert_subscribers
                    ),
                    Duration::from_secs(5),
                )
            })
    }

    /// Charges a batch of `n` events to the client, or RESOURCE_EXHAUSTED.
    pub fn charge(&self, key: &ClientKey, n: usize) -> Result<(), Status> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        rate.take(key, n as u64, Instant::now()).map_err(|wait| {
            metrics::counter!("depin_limit_exceeded_total", "limit" => "ingest_rate").increment(1);
            exhausted(
                format!(
                    "over this client's ingest rate of {} events a second",
                    rate.rate
                ),
                wait,
            )
        })
    }
}

/// The `serve` flags of the limits (flattened into `ServeArgs`); defaults are [`Limits`]'s.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest gRPC message a client may send, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = Limits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Events in one ingest batch.
    #[arg(long, env = "MAX_BATCH_EVENTS", default_value_t = Limits::default().max_batch_events)]
    pub max_batch_events: usize,
    /// Largest page of a list (rankings).
    #[arg(long, env = "MAX_PAGE_SIZE", default_value_t = Limits::default().max_page_size)]
    pub max_page_size: u32,
    /// Events a second one client (token, else peer address) may ingest; 0: no limit.
    #[arg(long, env = "INGEST_RATE", default_value_t = Limits::default().ingest_events_per_second)]
    pub ingest_rate: u64,
    /// Events a client may save up for a burst; 0: one second's worth (at least a batch).
    #[arg(long, env = "INGEST_BURST", default_value_t = Limits::default().ingest_burst_events)]
    pub ingest_burst: u64,
    /// HTTP/2 streams (calls) one connection may have open at once.
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = Limits::default().max_concurrent_streams)]
    pub max_concurrent_streams: u32,
    /// Ingest streams open on this node at once.
    #[arg(long, env = "MAX_INGEST_STREAMS", default_value_t = Limits::default().max_ingest_streams)]
    pub max_ingest_streams: usize,
    /// WatchAlerts subscribers on this node at once.
    #[arg(long, env = "MAX_ALERT_SUBSCRIBERS", default_value_t = Limits::default().max_alert_subscribers)]
    pub max_alert_subscribers: usize,
    /// Candidates from which a node scans a recommendation on two threads (two halves of
    /// its shards at once, merged exactly); 0: whenever it serves two shards or more.
    #[arg(long, env = "PARALLEL_SCAN_MIN", default_value_t = Limits::default().parallel_scan_min)]
    pub parallel_scan_min: usize,
    /// How far ahead of this node's clock an event's timestamp may be.
    #[arg(long, env = "MAX_FUTURE_SKEW", value_parser = humantime::parse_duration, default_value = "5m")]
    pub max_future_skew: Duration,
}

impl LimitArgs {
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let positive = |name: &str, v: u64| {
            if v == 0 {
                anyhow::bail!("--{name} must be at least 1");
            }
            Ok(())
        };
        positive("max-message-bytes", self.max_message_bytes as u64)?;
        positive("max-batch-events", self.max_batch_events as u64)?;
        positive("max-page-size", u64::from(self.max_page_size))?;
        positive(
            "max-concurrent-streams",
            u64::from(self.max_concurrent_streams),
        )?;
        positive("max-ingest-streams", self.max_ingest_streams as u64)?;
        positive("max-alert-subscribers", self.max_alert_subscribers as u64)?;
        Ok(Limits {
            max_message_bytes: self.max_message_bytes,
            max_batch_events: self.max_batch_events,
            max_page_size: self.max_page_size,
            ingest_events_per_second: self.ingest_rate,
            ingest_burst_events: self.ingest_burst,
            max_concurrent_streams: self.max_concurrent_streams,
            max_ingest_streams: self.max_ingest_streams,
            max_alert_subscribers: self.max_alert_subscribers,
            parallel_scan_min: self.parallel_scan_min,
            max_future_skew_seconds: self.max_future_skew.as_secs() as i64,
            ..Limits::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_refills_at_the_rate() {
        let r = RateLimiter::new(100.0, 100.0);
        let k = ClientKey::Unknown;
        let t0 = Instant::now();
        assert!(r.take(&k, 100, t0).is_ok());
        let wait = r.take(&k, 50, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(r.take(&k, 50, t0 + Duration::from_millis(500)).is_ok());
        // Another client has its own bucket.
        assert!(r.take(&ClientKey::Token("x".into()), 100, t0).is_ok());
    }

    #[test]
    fn a_batch_larger_than_the_bucket_waits_for_a_full_one() {
        let r = RateLimiter::new(10.0, 10.0);
        let k = ClientKey::Unknown;
        let t0 = Instant::now();
        assert!(r.take(&k, 25, t0).is_ok());
        assert!(r.take(&k, 1, t0 + Duration::from_secs(1)).is_err());
        assert!(r.take(&k, 1, t0 + Duration::from_secs(3)).is_ok());
    }
}
