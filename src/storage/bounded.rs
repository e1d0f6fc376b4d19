//! bincode decoding whose allocations are bounded by the size of the input.
//!
//! bincode allocates a string's or a container's length as soon as it reads it, checked only
//! against the configured limit. A damaged or hostile length field could therefore make a
//! reader allocate gigabytes from a few bytes. Here the limit is picked from the input's
//! size: bincode charges at most 16 bytes of limit per input byte (a one-byte varint decodes
//! to a 16-byte u128), so a valid input always fits under `16 × len` rounded up to a power of
//! four, and no decode can claim more than 64 × its input.

use bincode::error::DecodeError;
use serde::de::DeserializeOwned;

fn with_limit<T: DeserializeOwned, const N: usize>(
    bytes: &[u8],
) -> Result<(T, usize), DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<N>())
}

/// Decodes `T` (bincode 2, standard configuration, serde) from `bytes`, returning it and the
/// bytes read.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    let need = bytes.len().saturating_mul(16);
    macro_rules! pick {
        ($($n:expr),*) => {
            $( if need <= $n { return with_limit::<T, { $n }>(bytes); } )*
        };
    }
    pick!(
        1 << 16,
        1 << 18,
        1 << 20,
        1 << 22,
        1 << 24,
        1 << 26,
        1 << 28,
        1 << 30,
        1 << 32,
        1 << 34,
        1 << 36,
        1 << 38
    );
    with_limit::<T, { 1 << 40 }>(bytes)
}

/// The limit [`decode`] uses for an input of `len` bytes (for tests).
pub fn limit_for(len: usize) -> usize {
    let need = len.saturating_mul(16);
    let mut n = 1usize << 16;
    while n < need && n < 1 << 40 {
        n <<= 2;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_length_in_a_tiny_input_is_refused_without_allocating() {
        // A string claiming 2^40 bytes, in 6 bytes of input.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<String>(&bytes).is_err());
        assert_eq!(limit_for(9), 1 << 16);
    }

    #[test]
    fn round_trips() {
        let v: Vec<(String, u64, f64)> = (0..1000).map(|i| (format!("p{i}"), i, 0.5)).collect();
        let bytes = bincode::serde::encode_to_vec(&v, bincode::config::standard()).unwrap();
        let (back, n): (Vec<(String, u64, f64)>, usize) = decode(&bytes).unwrap();
        assert_eq!((back, n), (v, bytes.len()));
    }
}
