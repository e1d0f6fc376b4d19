//! Scores the forecaster on M4-style data (one series a row, the id first).
//!
//! `cargo run --release --example m4_eval -- <train.csv> <test.csv> [max_history] [--log]
//! [--holdout N] [--origins N]`
//!
//! Uses the forecaster's default parameters (those the product ships) with the horizon set
//! to the test length; `max_history` keeps only the newest points (default all) and
//! `--log` adds the log-scale candidates. `--holdout N` fixes the holdout the forecaster chooses models on,
//! `--origins N` the number of rolling forecast origins it scores them at.
//!
//! Prints sMAPE, MASE (scale: in-sample mean |y_t − y_{t−24}|), OWA against Naive2
//! computed in the same run (M4's seasonally adjusted naive: classical multiplicative
//! decomposition when the 90 % autocorrelation test at lag 24 says seasonal) and the
//! coverage of the 95 % intervals, beside the seasonal naive forecast (the last 24 values
//! repeated) as the line not to lose to; the last line is a JSON object. Also times one 24-step
//! forecast from a 168-point history, the product's configuration.

use std::time::Instant;

use depin_analytics::analytics::forecast::{ForecastParams, forecast_series};

const SEASON: usize = 24;

fn read_rows(path: &str) -> Result<Vec<(String, Vec<f64>)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut cells = line.split(',').map(|c| c.trim().trim_matches('"'));
        let Some(id) = cells.next() else { continue };
        let vals: Result<Vec<f64>, _> = cells
            .filter(|c| !c.is_empty())
            .map(str::parse::<f64>)
            .collect();
        match vals {
            Ok(v) if !v.is_empty() => rows.push((id.to_string(), v)),
            // The header row ("V1","V2",…) does not parse as numbers.
            Err(_) if i == 0 => {}
            Ok(_) => {}
            Err(e) => return Err(format!("{path}:{}: {e}", i + 1)),
        }
    }
    Ok(rows)
}

/// M4's seasonality test: |acf(m)| above the 90 % limit of Bartlett's formula.
fn seasonal_test(y: &[f64], m: usize) -> bool {
    let n = y.len();
    if n < 3 * m {
        return false;
    }
    let mean = y.iter().sum::<f64>() / n as f64;
    let denom: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
    let acf = |k: usize| {
        (k..n)
            .map(|t| (y[t] - mean) * (y[t - k] - mean))
            .sum::<f64>()
            / denom
    };
    let sum_sq: f64 = (1..m).map(|k| acf(k).powi(2)).sum();
    let limit = 1.645 / (n as f64).sqrt() * (1.0 + 2.0 * sum_sq).sqrt();
    acf(m).abs() > limit
}

/// Multiplicative seasonal indices of R's `decompose` (2×m centred moving average).
fn multiplicative_indices(y: &[f64], m: usize) -> Vec<f64> {
    let n = y.len();
    let mut sum = vec![0.0; m];
    let mut cnt = vec![0usize; m];
    for t in m / 2..n - m / 2 {
        let mut ma = 0.5 * (y[t - m / 2] + y[t + m / 2]);
        ma += y[t - m / 2 + 1..t + m / 2].iter().sum::<f64>();
        ma /= m as f64;
        sum[t % m] += y[t] / ma;
        cnt[t % m] += 1;
    }
    let idx: Vec<f64> = sum.iter().zip(&cnt).map(|(s, &c)| s / c as f64).collect();
    let mean = idx.iter().sum::<f64>() / m as f64;
    idx.iter().map(|v| v / mean).collect()
}

fn naive2(y: &[f64], h: usize) -> Vec<f64> {
    let n = y.len();
    if seasonal_test(y, SEASON) {
        let idx = multiplicative_indices(y, SEASON);
        let last = y[n - 1] / idx[(n - 1) % SEASON];
        (0..h).map(|i| last * idx[(n + i) % SEASON]).collect()
    } else {
        vec![y[n - 1]; h]
    }
}

/// The value one season (24 steps) earlier, the benchmark the forecaster must not lose to.
fn seasonal_naive(y: &[f64], h: usize) -> Vec<f64> {
    let n = y.len();
    (0..h).map(|i| y[n - SEASON + i % SEASON]).collect()
}

fn smape(a: &[f64], f: &[f64]) -> f64 {
    a.iter()
        .zip(f)
        .map(|(a, f)| 200.0 * (a - f).abs() / (a.abs() + f.abs()))
        .sum::<f64>()
        / a.len() as f64
}

fn mase(y: &[f64], a: &[f64], f: &[f64]) -> f64 {
    let scale = (SEASON..y.len())
        .map(|t| (y[t] - y[t - SEASON]).abs())
        .sum::<f64>()
        / (y.len() - SEASON) as f64;
    a.iter().zip(f).map(|(a, f)| (a - f).abs()).sum::<f64>() / a.len() as f64 / scale
}

#[derive(Default, Clone)]
struct Totals {
    smape: f64,
    mase: f64,
    n2_smape: f64,
    n2_mase: f64,
    sn_smape: f64,
    sn_mase: f64,
    covered: usize,
    points: usize,
    series: usize,
    models: std::collections::BTreeMap<String, usize>,
}

fn evaluate(pairs: &[(&[f64], &[f64])], params: &ForecastParams) -> Totals {
    let mut t = Totals::default();
    for (train, test) in pairs {
        let h = test.len();
        let p = ForecastParams {
            horizon: h,
            ..params.clone()
        };
        let fc = forecast_series(train, 0, 3600, &p).expect("forecast");
        let f: Vec<f64> = fc.points.iter().map(|p| p.value).collect();
        t.smape += smape(test, &f);
        t.mase += mase(train, test, &f);
        let n2 = naive2(train, h);
        t.n2_smape += smape(test, &n2);
        t.n2_mase += mase(train, test, &n2);
        let sn = seasonal_naive(train, h);
        t.sn_smape += smape(test, &sn);
        t.sn_mase += mase(train, test, &sn);
        t.covered += fc
            .points
            .iter()
            .zip(test.iter())
            .filter(|(p, a)| p.lower <= **a && **a <= p.upper)
            .count();
        t.points += h;
        t.series += 1;
        *t.models.entry(fc.members[0].kind_name()).or_default() += 1;
    }
    t
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for depin_analytics::analytics::forecast::ModelChoice {
    fn kind_name(&self) -> String {
        format!("{:?}/{}", self.kind, self.period)
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err(
            "usage: m4_eval <train.csv> <test.csv> [max_history] [--log] [--holdout N] [--origins N]"
                .into(),
        );
    }
    let train = read_rows(&args[1])?;
    let test = read_rows(&args[2])?;
    let tests: std::collections::HashMap<&str, &[f64]> = test
        .iter()
        .map(|(id, v)| (id.as_str(), v.as_slice()))
        .collect();
    let pairs: Vec<(&[f64], &[f64])> = train
        .iter()
        .filter_map(|(id, y)| tests.get(id.as_str()).map(|t| (y.as_slice(), *t)))
        .collect();
    if pairs.is_empty() {
        return Err("no series with both train and test rows".into());
    }
    let log_candidates = args.iter().any(|a| a == "--log");
    // `--holdout N` and `--origins N` override the forecaster's defaults.
    let flag = |name: &str| -> Result<Option<usize>, String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|s| s.parse::<usize>().map_err(|e| e.to_string()))
            .transpose()
    };
    let holdout = flag("--holdout")?.unwrap_or(0);
    let origins = flag("--origins")?.unwrap_or(ForecastParams::default().origins);
    let max_history = args[3..]
        .iter()
        .enumerate()
        .find(|(i, a)| {
            !a.starts_with("--") && !["--holdout", "--origins"].contains(&args[i + 2].as_str())
        })
        .map(|(_, a)| a)
        .map(|s| s.parse::<usize>().map_err(|e| e.to_string()))
        .transpose()?
        .unwrap_or(0);
    // The product's defaults; only the horizon (the test length) and the options differ.
    let params = ForecastParams {
        max_history,
        log_candidates,
        holdout,
        origins,
        ..ForecastParams::default()
    };

    let started = Instant::now();
    let halves: Vec<Vec<(&[f64], &[f64])>> = (0..2)
        .map(|k| pairs.iter().skip(k).step_by(2).copied().collect())
        .collect();
    let t = std::thread::scope(|s| {
        let handles: Vec<_> = halves
            .iter()
            .map(|part| s.spawn(|| evaluate(part, &params)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).fold(
            Totals::default(),
            |mut a, b| {
                a.smape += b.smape;
                a.mase += b.mase;
                a.n2_smape += b.n2_smape;
                a.n2_mase += b.n2_mase;
                a.sn_smape += b.sn_smape;
                a.sn_mase += b.sn_mase;
                a.covered += b.covered;
                a.points += b.points;
                a.series += b.series;
                for (k, v) in b.models {
                    *a.models.entry(k).or_default() += v;
                }
                a
            },
        )
    });
    let elapsed = started.elapsed();
    let n = t.series as f64;
    let (s, m, s2, m2) = (t.smape / n, t.mase / n, t.n2_smape / n, t.n2_mase / n);
    let owa = 0.5 * (s / s2 + m / m2);
    let (ss, sm) = (t.sn_smape / n, t.sn_mase / n);
    let sn_owa = 0.5 * (ss / s2 + sm / m2);
    let coverage = t.covered as f64 / t.points as f64;

    // Product configuration: 168-point history, 24 steps.
    let mut times: Vec<f64> = Vec::new();
    let bench = ForecastParams {
        log_candidates,
        origins,
        ..ForecastParams::default()
    };
    for _ in 0..3 {
        for (y, _) in &pairs {
            let tail = &y[y.len() - 168..];
            let t0 = Instant::now();
            let f = forecast_series(tail, 0, 3600, &bench).expect("forecast");
            times.push(t0.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(f);
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];

    println!(
        "series {}  horizon {}  max_history {}  holdout {}  origins {}  log candidates {}  ({:.1}s on 2 threads)",
        t.series,
        pairs[0].1.len(),
        max_history,
        if holdout > 0 {
            holdout.to_string()
        } else {
            "auto".into()
        },
        origins,
        log_candidates,
        elapsed.as_secs_f64()
    );
    println!("{:<12} {:>8} {:>8}", "", "sMAPE", "MASE");
    println!("{:<12} {:>8.3} {:>8.3}", "forecaster", s, m);
    println!("{:<12} {:>8.3} {:>8.3}", "naive2", s2, m2);
    println!(
        "{:<12} {:>8.3} {:>8.3}   (OWA {sn_owa:.3})",
        "snaive 24", ss, sm
    );
    println!(
        "OWA {owa:.3}   coverage of 95 % intervals {:.1} %",
        coverage * 100.0
    );
    println!("first-ranked member: {:?}", t.models);
    println!(
        "one 24-step forecast from 168 points: p50 {:.1} µs  p99 {:.1} µs  max {:.1} µs",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "{{\"smape\":{s:.4}, \"mase\":{m:.4}, \"owa\":{owa:.4}, \"coverage_95\":{coverage:.4}}}"
    );
    Ok(())
}
