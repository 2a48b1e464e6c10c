//! Certificate serial numbers: random, positive, at most 20 octets (RFC 5280 4.1.2.2).

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// 16 random octets with the top bit clear and a non-zero first octet, so the
/// DER INTEGER is positive, minimally encoded and exactly 16 octets long.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Serial([u8; 16]);

impl Serial {
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system random generator failed");
        bytes[0] = (bytes[0] & 0x7f).max(1);
        Serial(bytes)
    }

    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes =
            hex::decode(text.trim()).map_err(|e| format!("serial {text:?} is not hex: {e}"))?;
        let bytes: [u8; 16] = bytes
            .try_into()
            .map_err(|_| format!("serial {text:?} is not 16 octets (32 hex digits)"))?;
        Ok(Serial(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn to_rcgen(&self) -> rcgen::SerialNumber {
        rcgen::SerialNumber::from_slice(&self.0)
    }
}

impl std::fmt::Display for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}
