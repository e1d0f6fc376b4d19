//! The compact, lossless encoding of a parked provider's state (see
//! [`Parked`](crate::actors::provider::Parked)): what an idle provider costs while it has no
//! actor. In memory only — snapshots, the log and handoffs keep the plain bincode form of
//! [`ProviderState`], so this encoding can change between versions freely.
//!
//! The layout is bincode 2 (standard configuration) of, in order: the id, spec and spec
//! time, the window's newest hour and capacity, the window's buckets **packed by column**
//! ([`pack_buckets`]), the lifetime, uptime and failure counters — the *head*, all that a
//! read or a summary needs ([`decode_head`]) — then the recent event-id fingerprints as
//! 8 bytes each and the alert keys raised.
//!
//! Why by column: a week is 168 buckets of 19 small fields, and plain bincode spends 40-odd
//! bytes a bucket (a varint per field; 3 bytes for any `u16` above 250, 4 for every `f32`).
//! Down a column the values are alike — uptime is 3,600 seconds hour after hour, busy
//! seconds and costs repeat, a score drifts in its low mantissa bits — so each column is
//! written in whichever of five forms is shortest for it ([`Mode`]): plain varints, varints of
//! the zigzagged difference from the previous value, of the XOR with the previous value's
//! bits (close floats share their high bits), of that XOR bit-reversed (whole-number floats
//! differ in their high bits only), or fixed-width. Exact for every value, NaN payloads
//! included. The fingerprints are random 64-bit numbers, which bincode's varints would
//! spend 9 bytes on; they take 8.

use std::collections::VecDeque;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::analytics::state::{
    FailureCounters, HourBucket, HourWindow, LifetimeCounters, ProviderState, RecentIds,
    UptimeTracker,
};
use crate::model::{ProviderId, ProviderSpec, UnixSeconds};

/// The fields of an [`HourBucket`], a column each ([`HourBucket::to_columns`]).
const COLUMNS: usize = HourBucket::COLUMNS;

/// How a column's values are written. Each form but [`Mode::Fixed`] writes one LEB128
/// varint a value, of the value transformed against the previous one (0 before the first):
/// [`pack_column`] and [`unpack_column`] spell each transform and its inverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// The value itself.
    Varint = 0,
    /// The zigzagged difference from the previous value (counts that drift).
    Delta = 1,
    /// The XOR with the previous value (repeats are one byte; close floats share their
    /// sign, exponent and high mantissa bits).
    Xor = 2,
    /// That XOR with its bits reversed (values that differ only in their high bits, such
    /// as whole-number floats).
    XorReversed = 3,
    /// The value in the column's width, little-endian (noise).
    Fixed = 4,
}

const MODES: [Mode; 5] = [
    Mode::Varint,
    Mode::Delta,
    Mode::Xor,
    Mode::XorReversed,
    Mode::Fixed,
];

impl Mode {
    fn of(byte: u8) -> Option<Mode> {
        MODES.get(usize::from(byte)).copied()
    }
}

/// The zigzagged difference `v − prev` (small either way for values that drift).
#[inline(always)]
fn zigzag_delta(v: u32, prev: u32) -> u32 {
    let d = v.wrapping_sub(prev) as i32;
    ((d << 1) ^ (d >> 31)) as u32
}

/// The value whose [`zigzag_delta`] after `prev` is `x`.
#[inline(always)]
fn undo_zigzag_delta(x: u32, prev: u32) -> u32 {
    prev.wrapping_add(((x >> 1) as i32 ^ -((x & 1) as i32)) as u32)
}

#[inline(always)]
fn varint_len(x: u32) -> usize {
    // 1 byte up to 7 bits, then one more per 7 bits (comparisons, which vectorise well)
    1 + usize::from(x >= 1 << 7)
        + usize::from(x >= 1 << 14)
        + usize::from(x >= 1 << 21)
        + usize::from(x >= 1 << 28)
}

#[inline(always)]
fn put_varint(out: &mut Vec<u8>, mut x: u32) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// Reads a varint at `*at`; `None` when the bytes end first or it is longer than 5 bytes.
#[inline(always)]
fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u32> {
    // one byte: most values of most columns
    let first = *bytes.get(*at)?;
    if first < 0x80 {
        *at += 1;
        return Some(u32::from(first));
    }
    let mut x: u64 = 0;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        x |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return u32::try_from(x).ok();
        }
    }
    None
}

/// Appends `values` (each fitting in `width` bytes, 2 or 4) in the shortest [`Mode`]: a
/// mode byte, then the values.
pub fn pack_column(values: &[u32], width: usize, out: &mut Vec<u8>) {
    debug_assert!(width == 2 || width == 4);
    debug_assert!(width == 4 || values.iter().all(|v| *v <= 0xffff));
    // the size of every varint form in one pass (each form spelled out: no match a value)
    let mut sizes = [0usize; 4];
    let mut prev = 0;
    for &v in values {
        let x = v ^ prev;
        sizes[0] += varint_len(v);
        sizes[1] += varint_len(zigzag_delta(v, prev));
        sizes[2] += varint_len(x);
        sizes[3] += varint_len(x.reverse_bits());
        prev = v;
    }
    let (mode, _) = sizes
        .iter()
        .zip(MODES)
        .map(|(s, m)| (m, *s))
        .chain([(Mode::Fixed, values.len() * width)])
        .min_by_key(|(_, s)| *s)
        .expect("five modes");
    out.push(mode as u8);
    out.reserve(values.len() * width);
    #[inline(always)]
    fn write(out: &mut Vec<u8>, values: &[u32], f: impl Fn(u32, u32) -> u32) {
        let mut prev = 0;
        for &v in values {
            put_varint(out, f(v, prev));
            prev = v;
        }
    }
    match mode {
        Mode::Fixed => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes()[..width]);
            }
        }
        Mode::Varint => write(out, values, |v, _| v),
        Mode::Delta => write(out, values, zigzag_delta),
        Mode::Xor => write(out, values, |v, p| v ^ p),
        Mode::XorReversed => write(out, values, |v, p| (v ^ p).reverse_bits()),
    }
}

/// Reads a column of `out.len()` values written by [`pack_column`] with the same `width`
/// at `*at`, checking each fits the width.
pub fn unpack_column(
    bytes: &[u8],
    at: &mut usize,
    width: usize,
    out: &mut [u32],
) -> Result<(), String> {
    let byte = *bytes.get(*at).ok_or("the column's mode is missing")?;
    *at += 1;
    let mode = Mode::of(byte).ok_or_else(|| format!("unknown column mode {byte}"))?;
    let max = if width == 2 { 0xffff } else { u32::MAX };
    #[inline(always)]
    fn read(
        bytes: &[u8],
        at: &mut usize,
        out: &mut [u32],
        max: u32,
        f: impl Fn(u32, u32) -> u32,
    ) -> Result<(), String> {
        let mut prev = 0;
        for slot in out.iter_mut() {
            let x = get_varint(bytes, at).ok_or("the column ends early or has a bad varint")?;
            let v = f(x, prev);
            if v > max {
                return Err(format!("value {v} does not fit the column"));
            }
            *slot = v;
            prev = v;
        }
        Ok(())
    }
    match mode {
        Mode::Fixed => {
            let end = *at + out.len() * width;
            let b = bytes.get(*at..end).ok_or("the column ends early")?;
            for (slot, le) in out.iter_mut().zip(b.chunks_exact(width)) {
                let mut v = [0u8; 4];
                v[..width].copy_from_slice(le);
                *slot = u32::from_le_bytes(v);
            }
            *at = end;
            Ok(())
        }
        Mode::Varint => read(bytes, at, out, max, |x, _| x),
        Mode::Delta => read(bytes, at, out, max, undo_zigzag_delta),
        Mode::Xor => read(bytes, at, out, max, |x, p| x ^ p),
        Mode::XorReversed => read(bytes, at, out, max, |x, p| x.reverse_bits() ^ p),
    }
}

/// The buckets by column: their count as a varint, then each column ([`pack_column`]).
pub fn pack_buckets(buckets: &VecDeque<HourBucket>, out: &mut Vec<u8>) {
    put_varint(out, buckets.len() as u32);
    let rows: Vec<[u32; COLUMNS]> = buckets.iter().map(HourBucket::to_columns).collect();
    let mut column = Vec::with_capacity(rows.len());
    for c in 0..COLUMNS {
        column.clear();
        column.extend(rows.iter().map(|r| r[c]));
        pack_column(&column, HourBucket::column_width(c), out);
    }
}

/// The buckets [`pack_buckets`] wrote, from all of `bytes`.
pub fn unpack_buckets(bytes: &[u8]) -> Result<VecDeque<HourBucket>, String> {
    let mut at = 0;
    let n = get_varint(bytes, &mut at).ok_or("the bucket count is missing")? as usize;
    // every column takes at least a byte a value: a count the bytes cannot hold is damage
    if n.saturating_mul(COLUMNS) > bytes.len() {
        return Err(format!("{n} buckets cannot fit {} bytes", bytes.len()));
    }
    let mut values = vec![0u32; n * COLUMNS];
    for c in 0..COLUMNS {
        let column = &mut values[c * n..(c + 1) * n];
        unpack_column(bytes, &mut at, HourBucket::column_width(c), column)?;
    }
    if at != bytes.len() {
        return Err(format!("{} bytes left after the buckets", bytes.len() - at));
    }
    Ok((0..n)
        .map(|i| HourBucket::from_columns(std::array::from_fn(|c| values[c * n + i])))
        .collect())
}

/// The buckets, serialized as one byte string ([`pack_buckets`]).
struct BucketsOut<'a>(&'a VecDeque<HourBucket>);

impl Serialize for BucketsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::with_capacity(16 + self.0.len() * 24);
        pack_buckets(self.0, &mut out);
        s.serialize_bytes(&out)
    }
}

/// Deserializes a byte string through `parse`, straight from the deserializer's bytes
/// (no copy of them); `what` names it in errors.
fn from_bytes<'de, D, T>(
    d: D,
    what: &'static str,
    parse: fn(&[u8]) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T> {
        what: &'static str,
        parse: fn(&[u8]) -> Result<T, String>,
    }
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(self.what)
        }
        fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<T, E> {
            (self.parse)(b).map_err(E::custom)
        }
    }
    d.deserialize_bytes(V { what, parse })
}

/// The buckets [`BucketsOut`] wrote.
struct BucketsIn(VecDeque<HourBucket>);

impl<'de> Deserialize<'de> for BucketsIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_bytes(d, "packed hourly buckets", unpack_buckets).map(BucketsIn)
    }
}

/// The recent event-id fingerprints, 8 bytes each, as one byte string.
struct IdsOut<'a>(&'a RecentIds);

impl Serialize for IdsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ids = self.0.fingerprints();
        let mut out = Vec::with_capacity(ids.len() * 8);
        for fp in ids {
            out.extend_from_slice(&fp.to_le_bytes());
        }
        s.serialize_bytes(&out)
    }
}

struct IdsIn(RecentIds);

/// The fingerprints [`IdsOut`] wrote.
fn parse_ids(b: &[u8]) -> Result<RecentIds, String> {
    if !b.len().is_multiple_of(8) {
        return Err(format!("{} bytes of 8-byte ids", b.len()));
    }
    let ids: VecDeque<u64> = b
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Ok(RecentIds::from(ids))
}

impl<'de> Deserialize<'de> for IdsIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_bytes(d, "event-id fingerprints, 8 bytes each", parse_ids).map(IdsIn)
    }
}

#[derive(Serialize)]
struct Out<'a> {
    id: &'a ProviderId,
    spec: &'a Option<ProviderSpec>,
    spec_time: &'a Option<UnixSeconds>,
    newest_hour: i64,
    capacity: u32,
    buckets: BucketsOut<'a>,
    lifetime: &'a LifetimeCounters,
    uptime: &'a UptimeTracker,
    failures: &'a FailureCounters,
    ids: IdsOut<'a>,
    alerted: &'a [String],
}

/// What [`Out`] wrote up to the ids: all a read needs.
#[derive(Deserialize)]
struct Head {
    id: ProviderId,
    spec: Option<ProviderSpec>,
    spec_time: Option<UnixSeconds>,
    newest_hour: i64,
    capacity: u32,
    buckets: BucketsIn,
    lifetime: LifetimeCounters,
    uptime: UptimeTracker,
    failures: FailureCounters,
}

#[derive(Deserialize)]
struct Tail {
    ids: IdsIn,
    alerted: Vec<String>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// A parked provider's bytes: its state and the alert keys it has raised.
pub fn encode(state: &ProviderState, alerted: &[String]) -> Vec<u8> {
    // every field named: a field added to the state fails to compile until it is encoded
    let ProviderState {
        id,
        spec,
        spec_time,
        window,
        lifetime,
        uptime,
        failures,
        recent_ids,
    } = state;
    let (newest_hour, capacity, buckets) = window.parts();
    let out = Out {
        id,
        spec,
        spec_time,
        newest_hour,
        capacity,
        buckets: BucketsOut(buckets),
        lifetime,
        uptime,
        failures,
        ids: IdsOut(recent_ids),
        alerted,
    };
    bincode::serde::encode_to_vec(&out, config()).expect("a provider state always encodes")
}

fn head(bytes: &[u8]) -> Result<(ProviderState, usize), String> {
    let (h, used): (Head, usize) = bincode::serde::borrow_decode_from_slice(bytes, config())
        .map_err(|e| format!("undecodable parked state: {e}"))?;
    let state = ProviderState {
        id: h.id,
        spec: h.spec,
        spec_time: h.spec_time,
        window: HourWindow::from_parts(h.newest_hour, h.capacity, h.buckets.0),
        lifetime: h.lifetime,
        uptime: h.uptime,
        failures: h.failures,
        recent_ids: RecentIds::default(),
    };
    Ok((state, used))
}

/// The state and alert keys [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<(ProviderState, Vec<String>), String> {
    let (mut state, used) = head(bytes)?;
    let (tail, rest): (Tail, usize) =
        bincode::serde::borrow_decode_from_slice(&bytes[used..], config())
            .map_err(|e| format!("undecodable parked state: {e}"))?;
    if used + rest != bytes.len() {
        return Err(format!(
            "{} bytes left after the parked state",
            bytes.len() - used - rest
        ));
    }
    state.recent_ids = tail.ids.0;
    Ok((state, tail.alerted))
}

/// The state without its recent event ids (empty), from the head of the bytes only: what
/// reads and summaries need (the ids serve only the duplicate check of new events).
pub fn decode_head(bytes: &[u8]) -> Result<ProviderState, String> {
    head(bytes).map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(values: &[u32], width: usize) -> (Vec<u32>, usize, u8) {
        let mut out = Vec::new();
        pack_column(values, width, &mut out);
        let mut back = vec![0; values.len()];
        let mut at = 0;
        unpack_column(&out, &mut at, width, &mut back).unwrap();
        assert_eq!(at, out.len(), "every byte read");
        (back, out.len(), out[0])
    }

    #[test]
    fn each_kind_of_column_gets_the_mode_that_suits_it() {
        // a constant: one byte a value after the first (a zero difference or XOR)
        let (back, len, mode) = round_trip(&[3600; 168], 2);
        assert_eq!(back, vec![3600; 168]);
        assert_eq!(len, 1 + 2 + 167);
        assert!(mode == Mode::Delta as u8 || mode == Mode::Xor as u8);
        // a slow ramp: differences of one
        let ramp: Vec<u32> = (1000..1168).collect();
        let (back, len, mode) = round_trip(&ramp, 2);
        assert_eq!(back, ramp);
        assert_eq!(mode, Mode::Delta as u8);
        assert!(len < 1 + 168 + 3, "{len}");
        // whole-number floats alternating: the XOR is in the high bits
        let floats: Vec<u32> = (0..168)
            .map(|i| if i % 2 == 0 { 3600f32 } else { 1800f32 }.to_bits())
            .collect();
        let (back, len, mode) = round_trip(&floats, 4);
        assert_eq!(back, floats);
        assert_eq!(mode, Mode::XorReversed as u8);
        // two bytes a value after the first, half the fixed form
        assert_eq!(len, 1 + 3 + 2 * 167);
        // noise over the whole width: fixed
        let noise: Vec<u32> = (0..168u32)
            .map(|i| i.wrapping_mul(0x9e37_79b9) | 0x8000_0000)
            .collect();
        let (back, len, mode) = round_trip(&noise, 4);
        assert_eq!(back, noise);
        assert_eq!((len, mode), (1 + 4 * 168, Mode::Fixed as u8));
    }

    #[test]
    fn damaged_columns_are_errors_not_panics() {
        let mut out = Vec::new();
        pack_column(&[1, 2, 3, 70_000], 4, &mut out);
        let mut back = [0; 4];
        // read as a 2-byte column, 70,000 does not fit
        assert!(unpack_column(&out, &mut 0, 2, &mut back).is_err());
        for cut in 0..out.len() {
            assert!(unpack_column(&out[..cut], &mut 0, 4, &mut back).is_err());
        }
        assert!(unpack_column(&[9, 0, 0, 0, 0], &mut 0, 4, &mut back).is_err());
        assert!(
            unpack_buckets(&[200, 1]).is_err(),
            "a count the bytes cannot hold"
        );
        assert!(unpack_buckets(&[]).is_err());
    }

    proptest! {
        #[test]
        fn any_column_round_trips(
            values in prop::collection::vec(any::<u32>(), 0..300),
            narrow in any::<bool>(),
        ) {
            let width = if narrow { 2 } else { 4 };
            let values: Vec<u32> = if narrow {
                values.iter().map(|v| v & 0xffff).collect()
            } else {
                values
            };
            let (back, len, _) = round_trip(&values, width);
            prop_assert_eq!(back, values.clone());
            // never longer than the fixed form
            prop_assert!(len <= 1 + values.len() * width);
        }
    }
}
