//! The device id printed on the rating plate: `<model code>-<serial>`.

use std::fmt;
use std::str::FromStr;

/// A well-formed device id: model code 1–8 and serial 1–20 of `A–Z 0–9`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    model: String,
    serial: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("device id {0:?} has no '-' between model code and serial (expected MODEL-SERIAL, e.g. 3012-123456)")]
    NoSeparator(String),
    #[error("device id {id:?}: model code {model:?} must be 1-8 characters of A-Z 0-9")]
    BadModel { id: String, model: String },
    #[error("device id {id:?}: serial {serial:?} must be 1-20 characters of A-Z 0-9")]
    BadSerial { id: String, serial: String },
}

pub const MODEL_MAX: usize = 8;
pub const SERIAL_MAX: usize = 20;

fn is_code(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Checks a model code on its own (plans and profiles name models without serials).
pub fn check_model(model: &str) -> Result<(), String> {
    if is_code(model, MODEL_MAX) {
        Ok(())
    } else {
        Err(format!(
            "model code {model:?} must be 1-8 characters of A-Z 0-9"
        ))
    }
}

impl DeviceId {
    pub fn new(model: &str, serial: &str) -> Result<Self, IdError> {
        Self::parse(&format!("{model}-{serial}"))
    }

    pub fn parse(text: &str) -> Result<Self, IdError> {
        let (model, serial) = text
            .split_once('-')
            .ok_or_else(|| IdError::NoSeparator(text.to_string()))?;
        if !is_code(model, MODEL_MAX) {
            return Err(IdError::BadModel {
                id: text.to_string(),
                model: model.to_string(),
            });
        }
        if !is_code(serial, SERIAL_MAX) {
            return Err(IdError::BadSerial {
                id: text.to_string(),
                serial: serial.to_string(),
            });
        }
        Ok(DeviceId {
            model: model.to_string(),
            serial: serial.to_string(),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn serial(&self) -> &str {
        &self.serial
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.model, self.serial)
    }
}

impl FromStr for DeviceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DeviceId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plate_ids() {
        let id = DeviceId::parse("3012-123456").unwrap();
        assert_eq!((id.model(), id.serial()), ("3012", "123456"));
        assert_eq!(id.to_string(), "3012-123456");
        assert!(DeviceId::parse("A123-654321").is_ok());
        assert!(DeviceId::parse("ABCDEFGH-12345678901234567890").is_ok());
    }

    #[test]
    fn refuses_malformed_ids_naming_the_part() {
        assert!(matches!(
            DeviceId::parse("3012123456"),
            Err(IdError::NoSeparator(_))
        ));
        assert!(matches!(
            DeviceId::parse("-1"),
            Err(IdError::BadModel { .. })
        ));
        assert!(matches!(
            DeviceId::parse("ABCDEFGHI-1"),
            Err(IdError::BadModel { .. })
        ));
        assert!(matches!(
            DeviceId::parse("a123-1"),
            Err(IdError::BadModel { .. })
        ));
        assert!(matches!(
            DeviceId::parse("A123-"),
            Err(IdError::BadSerial { .. })
        ));
        assert!(matches!(
            DeviceId::parse("A123-1-2"),
            Err(IdError::BadSerial { .. })
        ));
        assert!(matches!(
            DeviceId::parse("A123-123456789012345678901"),
            Err(IdError::BadSerial { .. })
        ));
    }
}
