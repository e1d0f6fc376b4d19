//! Utilization patterns from the hourly window: hour-of-day, day-of-week and hour-of-week
//! profiles, peak and low hours, how much of the variation the daily cycle explains, and
//! optimization suggestions drawn from them.
//!
//! "Load" is the busiest resource of an hour, `max(cpu, gpu, memory)`: a provider is as
//! saturated as its tightest resource. Every hour with utilization samples counts once
//! (hours are not weighted by their sample counts). Times are UTC.

use serde::{Deserialize, Serialize};

use crate::analytics::state::HourWindow;

/// Mean utilization of one profile slot (fractions in [0, 1]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UtilizationSlot {
    pub cpu: f64,
    pub gpu: f64,
    pub memory: f64,
    /// Mean of the hourly `max(cpu, gpu, memory)`.
    pub load: f64,
    /// Hours that contributed.
    pub hours: u32,
}

/// What a suggestion is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SuggestionKind {
    /// Regular low-load hours: sell them cheaper.
    OffPeakDiscount,
    /// Regular peaks close to saturation: add capacity or price the peak.
    PeakSaturation,
    /// Low load around the clock.
    Underutilized,
    /// Weekends much quieter than weekdays.
    WeekendDip,
}

/// A structured optimization suggestion with its human text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizationSuggestion {
    pub kind: SuggestionKind,
    pub text: String,
    /// Hours of day (UTC) it concerns, if any.
    pub hours_utc: Vec<u8>,
}

/// Tunables of the pattern analysis.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatternParams {
    /// Peak hours: profile load at least mean + this × sd of the hour-of-day profile.
    pub peak_sd: f64,
    /// Load at or above which a peak counts as near saturation.
    pub saturation_load: f64,
    /// Load below which an hour counts as idle enough to discount.
    pub low_load: f64,
    /// Mean load below which the provider is underutilized.
    pub underutilized_load: f64,
    /// Seasonal strength below which no hour-of-day suggestion is made.
    pub min_seasonal_strength: f64,
    /// Hours with samples needed for any suggestion.
    pub min_hours: u32,
}

impl Default for PatternParams {
    fn default() -> Self {
        Self {
            peak_sd: 0.5,
            saturation_load: 0.85,
            low_load: 0.3,
            underutilized_load: 0.2,
            min_seasonal_strength: 0.2,
            min_hours: 48,
        }
    }
}

/// A provider's utilization pattern over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceUtilizationPattern {
    /// 24 slots, index = hour of day (UTC).
    pub hour_of_day: Vec<UtilizationSlot>,
    /// 7 slots, index 0 = Monday.
    pub day_of_week: Vec<UtilizationSlot>,
    /// 168 slots, index = day of week × 24 + hour of day.
    pub hour_of_week: Vec<UtilizationSlot>,
    pub hours_observed: u32,
    pub mean_load: f64,
    /// Variance of the hourly load.
    pub load_variance: f64,
    /// Variance of the load explained by the hour-of-day profile (between-hour variance).
    pub seasonal_variance: f64,
    /// `seasonal_variance / load_variance` in [0, 1] (0 when the load is constant).
    pub seasonal_strength: f64,
    /// Hours of day (UTC) of the peaks and of the lows, ascending.
    pub peak_hours_utc: Vec<u8>,
    pub low_hours_utc: Vec<u8>,
    pub suggestions: Vec<OptimizationSuggestion>,
}

/// One hour's utilization means.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HourUtilization {
    pub epoch_hour: i64,
    pub cpu: f64,
    pub gpu: f64,
    pub memory: f64,
}

impl HourUtilization {
    fn load(&self) -> f64 {
        self.cpu.max(self.gpu).max(self.memory)
    }
}

/// Day of week of an epoch hour, Monday = 0 (1970-01-01 was a Thursday).
pub fn weekday(epoch_hour: i64) -> usize {
    (epoch_hour.div_euclid(24) + 3).rem_euclid(7) as usize
}

/// Hour of day (UTC) of an epoch hour.
pub fn hour_of_day(epoch_hour: i64) -> usize {
    epoch_hour.rem_euclid(24) as usize
}

fn profile(
    hours: &[HourUtilization],
    slots: usize,
    slot: impl Fn(i64) -> usize,
) -> Vec<UtilizationSlot> {
    let mut out = vec![UtilizationSlot::default(); slots];
    for h in hours {
        let s = &mut out[slot(h.epoch_hour)];
        s.cpu += h.cpu;
        s.gpu += h.gpu;
        s.memory += h.memory;
        s.load += h.load();
        s.hours += 1;
    }
    for s in &mut out {
        if s.hours > 0 {
            let n = f64::from(s.hours);
            s.cpu /= n;
            s.gpu /= n;
            s.memory /= n;
            s.load /= n;
        }
    }
    out
}

/// Consecutive hours (wrapping at midnight) as "02:00–06:00" ranges, end exclusive.
pub fn hour_ranges(hours: &[u8]) -> Vec<(u8, u8)> {
    let mut set = [false; 24];
    for &h in hours {
        set[usize::from(h) % 24] = true;
    }
    if set.iter().all(|&b| b) {
        return vec![(0, 24)];
    }
    // Start scanning just after an unset hour so a range across midnight stays whole.
    let first_gap = set.iter().position(|&b| !b).unwrap_or(0);
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for k in 1..=24 {
        let h = (first_gap + k) % 24;
        match (set[h], start) {
            (true, None) => start = Some(h),
            (false, Some(s)) => {
                out.push((s as u8, h as u8));
                start = None;
            }
            _ => {}
        }
    }
    out.sort();
    out
}

fn ranges_text(hours: &[u8]) -> String {
    hour_ranges(hours)
        .iter()
        .map(|(a, b)| format!("{a:02}:00–{:02}:00", b % 24))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Patterns from per-hour utilization means.
pub fn analyze_patterns(
    hours: &[HourUtilization],
    params: &PatternParams,
) -> ResourceUtilizationPattern {
    let hod = profile(hours, 24, hour_of_day);
    let dow = profile(hours, 7, weekday);
    let how = profile(hours, 168, |h| weekday(h) * 24 + hour_of_day(h));
    let n = hours.len() as f64;
    let mean_load = if hours.is_empty() {
        0.0
    } else {
        hours.iter().map(HourUtilization::load).sum::<f64>() / n
    };
    let load_variance = if hours.is_empty() {
        0.0
    } else {
        hours
            .iter()
            .map(|h| (h.load() - mean_load).powi(2))
            .sum::<f64>()
            / n
    };
    // Between-slot sum of squares over the total: the share a pure daily cycle explains.
    let seasonal_variance = if hours.is_empty() {
        0.0
    } else {
        hod.iter()
            .map(|s| f64::from(s.hours) * (s.load - mean_load).powi(2))
            .sum::<f64>()
            / n
    };
    let seasonal_strength = if load_variance > 1e-12 {
        (seasonal_variance / load_variance).clamp(0.0, 1.0)
    } else {
        0.0
    };

    let observed: Vec<(u8, f64)> = hod
        .iter()
        .enumerate()
        .filter(|(_, s)| s.hours > 0)
        .map(|(h, s)| (h as u8, s.load))
        .collect();
    let pm = observed.iter().map(|x| x.1).sum::<f64>() / observed.len().max(1) as f64;
    let psd = (observed.iter().map(|x| (x.1 - pm).powi(2)).sum::<f64>()
        / observed.len().max(1) as f64)
        .sqrt();
    let (mut peak_hours_utc, mut low_hours_utc) = (Vec::new(), Vec::new());
    if psd > 1e-9 {
        for &(h, l) in &observed {
            if l >= pm + params.peak_sd * psd {
                peak_hours_utc.push(h);
            } else if l <= pm - params.peak_sd * psd {
                low_hours_utc.push(h);
            }
        }
    }

    let mut suggestions = Vec::new();
    let enough = hours.len() >= params.min_hours as usize;
    if enough && seasonal_strength >= params.min_seasonal_strength {
        let idle: Vec<u8> = low_hours_utc
            .iter()
            .copied()
            .filter(|&h| hod[usize::from(h)].load < params.low_load)
            .collect();
        if !idle.is_empty() {
            let avg =
                idle.iter().map(|&h| hod[usize::from(h)].load).sum::<f64>() / idle.len() as f64;
            suggestions.push(OptimizationSuggestion {
                kind: SuggestionKind::OffPeakDiscount,
                text: format!(
                    "low utilization {} UTC ({:.0} % load): offer discounted spot pricing",
                    ranges_text(&idle),
                    avg * 100.0
                ),
                hours_utc: idle,
            });
        }
        let hot: Vec<u8> = peak_hours_utc
            .iter()
            .copied()
            .filter(|&h| hod[usize::from(h)].load >= params.saturation_load)
            .collect();
        // The busiest hour, the earliest on ties.
        let top = hot
            .iter()
            .copied()
            .fold(None, |best: Option<u8>, h| match best {
                Some(b) if hod[usize::from(b)].load >= hod[usize::from(h)].load => Some(b),
                _ => Some(h),
            });
        if let Some(top) = top {
            let s = hod[usize::from(top)];
            let (name, v) = [("cpu", s.cpu), ("gpu", s.gpu), ("memory", s.memory)]
                .into_iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or(("cpu", s.cpu));
            suggestions.push(OptimizationSuggestion {
                kind: SuggestionKind::PeakSaturation,
                text: format!(
                    "peaks at {top:02}:00 UTC near saturation ({:.0} % {name}) during {}: add capacity or raise peak pricing",
                    v * 100.0,
                    ranges_text(&hot)
                ),
                hours_utc: hot,
            });
        }
    }
    if enough && mean_load < params.underutilized_load {
        suggestions.push(OptimizationSuggestion {
            kind: SuggestionKind::Underutilized,
            text: format!(
                "mean load {:.0} % around the clock: lower prices or consolidate capacity",
                mean_load * 100.0
            ),
            hours_utc: Vec::new(),
        });
    }
    let week_mean = |days: &[usize]| {
        let (s, c) = days.iter().fold((0.0, 0u32), |(s, c), &d| {
            (s + dow[d].load * f64::from(dow[d].hours), c + dow[d].hours)
        });
        (c > 0).then(|| s / f64::from(c))
    };
    if enough
        && let (Some(wd), Some(we)) = (week_mean(&[0, 1, 2, 3, 4]), week_mean(&[5, 6]))
        && wd > 0.0
        && we < 0.7 * wd
    {
        suggestions.push(OptimizationSuggestion {
            kind: SuggestionKind::WeekendDip,
            text: format!(
                "weekend load {:.0} % against {:.0} % on weekdays: offer weekend discounts",
                we * 100.0,
                wd * 100.0
            ),
            hours_utc: Vec::new(),
        });
    }

    ResourceUtilizationPattern {
        hour_of_day: hod,
        day_of_week: dow,
        hour_of_week: how,
        hours_observed: hours.len() as u32,
        mean_load,
        load_variance,
        seasonal_variance,
        seasonal_strength,
        peak_hours_utc,
        low_hours_utc,
        suggestions,
    }
}

/// Patterns of a provider's window (hours without utilization samples skipped).
pub fn utilization_pattern(
    window: &HourWindow,
    params: &PatternParams,
) -> ResourceUtilizationPattern {
    let hours: Vec<HourUtilization> = window
        .iter()
        .filter(|(_, b)| b.util_count > 0)
        .map(|(h, b)| HourUtilization {
            epoch_hour: h,
            cpu: b.cpu(),
            gpu: b.gpu(),
            memory: b.memory(),
        })
        .collect();
    analyze_patterns(&hours, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2014-01-06 00:00 UTC, a Monday, as an epoch hour (16076 days × 24).
    const MONDAY: i64 = 16_076 * 24;

    fn hu(h: i64, cpu: f64) -> HourUtilization {
        HourUtilization {
            epoch_hour: h,
            cpu,
            gpu: 0.0,
            memory: 0.1,
        }
    }

    #[test]
    fn weekday_and_hour_of_day() {
        assert_eq!(weekday(0), 3); // 1970-01-01, Thursday
        assert_eq!(weekday(MONDAY), 0);
        assert_eq!(weekday(MONDAY + 24 * 6 + 23), 6);
        assert_eq!(hour_of_day(MONDAY + 14), 14);
        assert_eq!(hour_of_day(-1), 23);
    }

    #[test]
    fn ranges_wrap_midnight() {
        assert_eq!(hour_ranges(&[2, 3, 4, 5]), vec![(2, 6)]);
        assert_eq!(hour_ranges(&[23, 0, 1, 14]), vec![(14, 15), (23, 2)]);
        assert_eq!(ranges_text(&[22, 23]), "22:00–00:00");
    }

    #[test]
    fn two_level_day_gives_hand_computed_strength() {
        // A week: hours 02–05 at 10 % cpu, hours 14 and 15 at 95 %, all others 50 %.
        // Loads: 4 h × 0.1, 2 h × 0.95, 18 h × 0.5 a day → mean = (0.4 + 1.9 + 9)/24
        // = 0.470833…; the profile equals the data, so seasonal strength is exactly 1.
        let hours: Vec<_> = (0..168)
            .map(|i| {
                let hod = i % 24;
                let cpu = match hod {
                    2..=5 => 0.1,
                    14 | 15 => 0.95,
                    _ => 0.5,
                };
                hu(MONDAY + i, cpu)
            })
            .collect();
        let p = analyze_patterns(&hours, &PatternParams::default());
        assert!((p.mean_load - 11.3 / 24.0).abs() < 1e-12);
        assert!((p.seasonal_strength - 1.0).abs() < 1e-12);
        // Variance: E[x²] − mean² = (4·0.01 + 2·0.9025 + 18·0.25)/24 − mean².
        let var = (0.04 + 1.805 + 4.5) / 24.0 - (11.3f64 / 24.0).powi(2);
        assert!((p.load_variance - var).abs() < 1e-12);
        assert_eq!(p.peak_hours_utc, vec![14, 15]);
        assert_eq!(p.low_hours_utc, vec![2, 3, 4, 5]);
        assert_eq!(p.hour_of_day[14].hours, 7);
        assert!((p.hour_of_week[24 + 14].cpu - 0.95).abs() < 1e-12);
        let kinds: Vec<_> = p.suggestions.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            vec![
                SuggestionKind::OffPeakDiscount,
                SuggestionKind::PeakSaturation
            ]
        );
        assert!(
            p.suggestions[0].text.contains("02:00–06:00 UTC"),
            "{}",
            p.suggestions[0].text
        );
        assert!(
            p.suggestions[1].text.contains("peaks at 14:00 UTC"),
            "{}",
            p.suggestions[1].text
        );
        assert!(
            p.suggestions[1].text.contains("95 % cpu"),
            "{}",
            p.suggestions[1].text
        );
    }

    #[test]
    fn weekend_dip_and_underutilized() {
        // Weekdays 19 % cpu, weekends 2 % cpu under 10 % memory (load 0.1): flat within each
        // day, so no hourly pattern; mean load (5·0.19 + 2·0.1)/7 ≈ 0.164 < 0.2.
        let hours: Vec<_> = (0..336)
            .map(|i| {
                hu(
                    MONDAY + i,
                    if weekday(MONDAY + i) >= 5 { 0.02 } else { 0.19 },
                )
            })
            .collect();
        let p = analyze_patterns(&hours, &PatternParams::default());
        assert!(p.seasonal_strength < 1e-9);
        assert!(p.peak_hours_utc.is_empty());
        let kinds: Vec<_> = p.suggestions.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            vec![SuggestionKind::Underutilized, SuggestionKind::WeekendDip]
        );
        assert!((p.day_of_week[6].load - 0.1).abs() < 1e-12);
        assert!((p.day_of_week[0].load - 0.19).abs() < 1e-12);
        assert!((p.mean_load - (5.0 * 0.19 + 2.0 * 0.1) / 7.0).abs() < 1e-12);
    }

    #[test]
    fn little_data_gives_no_suggestions() {
        let hours: Vec<_> = (0..24)
            .map(|i| hu(MONDAY + i, if i < 6 { 0.05 } else { 0.9 }))
            .collect();
        let p = analyze_patterns(&hours, &PatternParams::default());
        assert!(p.suggestions.is_empty());
        assert_eq!(
            analyze_patterns(&[], &PatternParams::default()).mean_load,
            0.0
        );
    }

    #[test]
    fn window_pattern_uses_utilization_buckets() {
        use crate::analytics::state::{ProviderState, StateParams};
        use crate::model::{EventPayload, HOUR, ProviderId, TelemetryEvent, UtilizationSample};
        let params = StateParams::default();
        let mut st = ProviderState::new(ProviderId::new("p"), &params);
        for (k, (h, cpu)) in [(MONDAY + 3, 0.2), (MONDAY + 3, 0.4), (MONDAY + 4, 0.8)]
            .into_iter()
            .enumerate()
        {
            let ev = TelemetryEvent {
                event_id: format!("u{k}"),
                provider_id: ProviderId::new("p"),
                timestamp: h * HOUR + 10,
                payload: EventPayload::Utilization(UtilizationSample {
                    cpu,
                    gpu: 0.0,
                    memory: 0.0,
                }),
            };
            st.apply(&ev, (MONDAY + 4) * HOUR + 10, &params).unwrap();
        }
        let p = utilization_pattern(&st.window, &PatternParams::default());
        assert_eq!(p.hours_observed, 2);
        assert!((p.hour_of_day[3].cpu - 0.3).abs() < 1e-4);
        assert!((p.mean_load - 0.55).abs() < 1e-4);
    }
}
