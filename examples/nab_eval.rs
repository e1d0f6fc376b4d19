//! Scores the product's anomaly detector the way the Numenta Anomaly Benchmark does.
//!
//! `cargo run --release --example nab_eval -- <dir of timestamp,value csv> <windows.json> [--sweep]`
//!
//! Each file is streamed through `analytics::anomaly::AnomalyDetector` with its default
//! parameters (those the product ships; one point = one row); a row counts as a detection
//! when the detector raises an alert on it (one per episode, after cooldown). Scoring
//! follows NAB's sweeper: the first 15 % of a file (at most 750 rows) is probation; the
//! earliest detection in a window earns A_TP·σ(y)/σ(−1) with σ(y) = 2/(1+e^{5y}) − 1 and
//! y = −(right − i + 1)/width; a window without one costs −A_FN; a detection outside any
//! window costs A_FP·σ(y) with y = |i − previous right edge|/(previous width − 1), or
//! −A_FP before the first window. Profiles come from `profiles.json` next to
//! `windows.json` (NAB's standard weights if absent). Scores are normalised to
//! 100·(S − S_null)/(S_perfect − S_null) over all files. Unlike NAB, no threshold is
//! tuned per detector: the numbers are for the shipped configuration. `--sweep` also
//! prints a few documented alternative settings. The last line is a JSON object.

use std::collections::BTreeMap;
use std::path::Path;

use depin_analytics::analytics::anomaly::{AnomalyDetector, AnomalyParams};

#[derive(Clone, Copy, Debug)]
struct Profile {
    name: &'static str,
    json_key: &'static str,
    tp: f64,
    fn_: f64,
    fp: f64,
}

fn sigma(y: f64) -> f64 {
    if y >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// Seconds since the epoch of "YYYY-MM-DD HH:MM:SS[.ffffff]" (UTC).
fn parse_ts(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-').map(|v| v.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.split('.').next()?;
    let mut t = time.split(':').map(|v| v.parse::<i64>());
    let (h, mi, se) = (
        t.next()?.ok()?,
        t.next()?.ok()?,
        t.next().unwrap_or(Ok(0)).ok()?,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

struct File {
    name: String,
    times: Vec<i64>,
    values: Vec<f64>,
    /// Inclusive row ranges of the labelled windows.
    windows: Vec<(usize, usize)>,
}

fn load(dir: &Path, windows_path: &Path) -> Result<Vec<File>, String> {
    let wtext = std::fs::read_to_string(windows_path)
        .map_err(|e| format!("cannot read {}: {e}", windows_path.display()))?;
    let wjson: BTreeMap<String, Vec<Vec<String>>> =
        serde_json::from_str(&wtext).map_err(|e| format!("windows.json: {e}"))?;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".csv"))
        .collect();
    names.sort();
    let mut files = Vec::new();
    for name in names {
        let text = std::fs::read_to_string(dir.join(&name))
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        let (mut times, mut values) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate().skip(1) {
            let Some((ts, v)) = line.split_once(',') else {
                continue;
            };
            let t =
                parse_ts(ts).ok_or_else(|| format!("{name}:{}: bad timestamp {ts:?}", i + 1))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|e| format!("{name}:{}: {e}", i + 1))?;
            times.push(t);
            values.push(v);
        }
        // A window is every row whose time falls within its limits.
        let key = wjson
            .keys()
            .find(|k| k.rsplit('/').next() == Some(name.as_str()))
            .cloned();
        let mut windows = Vec::new();
        for w in key.and_then(|k| wjson.get(&k)).into_iter().flatten() {
            let (Some(a), Some(b)) = (
                w.first().and_then(|s| parse_ts(s)),
                w.get(1).and_then(|s| parse_ts(s)),
            ) else {
                return Err(format!("{name}: bad window {w:?}"));
            };
            let l = times.partition_point(|&t| t < a);
            let r = times.partition_point(|&t| t <= b);
            if r > l {
                windows.push((l, r - 1));
            }
        }
        files.push(File {
            name,
            times,
            values,
            windows,
        });
    }
    Ok(files)
}

/// Rows where the detector raises an alert.
fn detections(f: &File, params: &AnomalyParams) -> Vec<bool> {
    let mut d = AnomalyDetector::new(*params);
    f.times
        .iter()
        .zip(&f.values)
        .map(|(&t, &v)| d.push(t, v).alert)
        .collect()
}

#[derive(Default, Clone, Copy)]
struct FileScore {
    score: f64,
    windows: usize,
    detected: usize,
    false_positives: usize,
}

fn score_file(f: &File, det: &[bool], p: &Profile) -> FileScore {
    let n = det.len();
    let probation = ((0.15 * n as f64).floor()).min(750.0) as usize;
    let max_tp = sigma(-1.0);
    // Windows lying wholly in probation are not scored, as in NAB.
    let scored: Vec<bool> = f.windows.iter().map(|&(_, r)| r >= probation).collect();
    let mut best: Vec<Option<f64>> = vec![None; f.windows.len()];
    let mut fp_sum = 0.0;
    let mut fps = 0;
    let mut w = 0;
    let mut prev: Option<(usize, usize)> = None;
    for (i, &flag) in det.iter().enumerate() {
        while w < f.windows.len() && f.windows[w].1 < i {
            prev = Some(f.windows[w]);
            w += 1;
        }
        let inside = w < f.windows.len() && f.windows[w].0 <= i;
        if i < probation || !flag {
            continue;
        }
        if inside {
            let (l, r) = f.windows[w];
            let y = -((r - i + 1) as f64) / (r - l + 1) as f64;
            let s = sigma(y) * p.tp / max_tp;
            best[w] = Some(best[w].map_or(s, |b: f64| b.max(s)));
        } else {
            let y = prev.map_or(3.0, |(l, r)| {
                (i - r) as f64 / ((r - l + 1) as f64 - 1.0).max(1.0)
            });
            fp_sum += sigma(y) * p.fp;
            fps += 1;
        }
    }
    let mut score = fp_sum;
    let mut windows = 0;
    let mut detected = 0;
    for (b, s) in best.iter().zip(&scored) {
        if !s {
            continue;
        }
        windows += 1;
        match b {
            Some(v) => {
                detected += 1;
                score += v.max(-p.fn_);
            }
            None => score -= p.fn_,
        }
    }
    FileScore {
        score,
        windows,
        detected,
        false_positives: fps,
    }
}

fn profiles(windows_path: &Path) -> Vec<Profile> {
    let mut out = vec![
        Profile {
            name: "standard",
            json_key: "standard",
            tp: 1.0,
            fn_: 1.0,
            fp: 0.11,
        },
        Profile {
            name: "reward_low_FP_rate",
            json_key: "reward_low_fp",
            tp: 1.0,
            fn_: 1.0,
            fp: 0.22,
        },
        Profile {
            name: "reward_low_FN_rate",
            json_key: "reward_low_fn",
            tp: 1.0,
            fn_: 2.0,
            fp: 0.11,
        },
    ];
    let path = windows_path.with_file_name("profiles.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
    {
        for p in &mut out {
            let cm = &v[p.name]["CostMatrix"];
            if let (Some(tp), Some(fn_), Some(fp)) = (
                cm["tpWeight"].as_f64(),
                cm["fnWeight"].as_f64(),
                cm["fpWeight"].as_f64(),
            ) {
                (p.tp, p.fn_, p.fp) = (tp, fn_, fp);
            }
        }
    }
    out
}

/// Normalised score of each profile, plus per-file details of the first.
fn evaluate(
    files: &[File],
    params: &AnomalyParams,
    profs: &[Profile],
) -> (Vec<f64>, Vec<FileScore>) {
    let dets: Vec<Vec<bool>> = files.iter().map(|f| detections(f, params)).collect();
    let mut first = Vec::new();
    let norm = profs
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let per: Vec<FileScore> = files
                .iter()
                .zip(&dets)
                .map(|(f, d)| score_file(f, d, p))
                .collect();
            let s: f64 = per.iter().map(|x| x.score).sum();
            let w: f64 = per.iter().map(|x| x.windows as f64).sum();
            let (null, perfect) = (-p.fn_ * w, p.tp * w);
            if k == 0 {
                first = per;
            }
            100.0 * (s - null) / (perfect - null)
        })
        .collect();
    (norm, first)
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: nab_eval <dir of csv files> <windows.json> [--sweep]".into());
    }
    let windows_path = Path::new(&args[2]);
    let files = load(Path::new(&args[1]), windows_path)?;
    let profs = profiles(windows_path);
    let shipped = AnomalyParams::default();

    if args.iter().any(|a| a == "--sweep") {
        let d = shipped;
        let plain = AnomalyParams {
            cooldown: 0,
            adaptive_factor: 0.0,
            long_run_floor: 0.0,
            max_excluded: 0,
            ..d
        };
        let settings: Vec<(&str, AnomalyParams)> = vec![
            ("robust z 2.5σ, episodes only", plain),
            (
                "+ cooldown 24",
                AnomalyParams {
                    cooldown: 24,
                    ..plain
                },
            ),
            (
                "+ long-run σ floor",
                AnomalyParams {
                    cooldown: 24,
                    long_run_floor: 1.0,
                    ..plain
                },
            ),
            ("+ adaptive threshold (shipped)", d),
            (
                "shipped, no long-run floor",
                AnomalyParams {
                    long_run_floor: 0.0,
                    ..d
                },
            ),
            (
                "shipped, long-run floor 0.5",
                AnomalyParams {
                    long_run_floor: 0.5,
                    ..d
                },
            ),
            (
                "shipped, adaptive quantile 0.99",
                AnomalyParams {
                    adaptive_quantile: 0.99,
                    ..d
                },
            ),
            (
                "shipped, adaptive quantile 0.999",
                AnomalyParams {
                    adaptive_quantile: 0.999,
                    ..d
                },
            ),
            ("shipped, cooldown 48", AnomalyParams { cooldown: 48, ..d }),
            ("shipped, cooldown 96", AnomalyParams { cooldown: 96, ..d }),
            (
                "shipped, threshold 3.5σ",
                AnomalyParams {
                    threshold_std_devs: 3.5,
                    ..d
                },
            ),
            ("shipped, window 336", AnomalyParams { window: 336, ..d }),
        ];
        println!(
            "{:<50} {:>9} {:>9} {:>9}",
            "setting", "standard", "low_FP", "low_FN"
        );
        for (name, p) in &settings {
            let (s, _) = evaluate(&files, p, &profs);
            println!("{name:<50} {:>9.1} {:>9.1} {:>9.1}", s[0], s[1], s[2]);
        }
        println!();
    }

    let (scores, per) = evaluate(&files, &shipped, &profs);
    println!(
        "{:<44} {:>7} {:>8} {:>4} {:>8}",
        "file (standard profile)", "windows", "detected", "FP", "score"
    );
    for (f, s) in files.iter().zip(&per) {
        println!(
            "{:<44} {:>7} {:>8} {:>4} {:>8.3}",
            f.name, s.windows, s.detected, s.false_positives, s.score
        );
    }
    println!();
    for (p, s) in profs.iter().zip(&scores) {
        println!("{:<20} {s:>6.1}", p.name);
    }
    let body: Vec<String> = profs
        .iter()
        .zip(&scores)
        .map(|(p, s)| format!("\"{}\":{s:.2}", p.json_key))
        .collect();
    println!("{{{}}}", body.join(", "));
    Ok(())
}
