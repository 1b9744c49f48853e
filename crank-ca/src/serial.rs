//! Certificate serial numbers.

use rcgen::SerialNumber;

/// A random positive serial of 127 bits (RFC 5280 allows up to 20 octets).
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero octet, so the DER INTEGER is exactly 16 octets.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_and_16_octets() {
        for _ in 0..100 {
            let s = random_serial();
            let b = s.to_bytes();
            assert_eq!(b.len(), 16);
            assert!(b[0] & 0x80 == 0 && b[0] != 0);
        }
    }
}
