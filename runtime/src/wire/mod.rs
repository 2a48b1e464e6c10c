//! Request and response types shared by clients and servers, one definition each.

pub mod ca;
pub mod center;
pub mod est;
pub mod line;
pub mod station;

use serde::{Deserialize, Serialize};

/// The body of every refusal a certline service sends: a stable machine code
/// and a sentence for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub error: String,
}

#[cfg(test)]
mod tests {
    // Property runs (issue 12's fuzzing matrix) over the API bodies every
    // service parses: any bytes are read into the request type or refused
    // with an error, never a panic, and an id in an accepted body is either a
    // valid device id (that reads back as itself) or refused by the id parser.
    use super::{ca, center, station};
    use crate::pki::id::DeviceId;
    use proptest::prelude::*;

    fn body() -> impl Strategy<Value = String> {
        prop_oneof![
            "(\\PC|[{}\\[\\]:,\"0-9])*",
            (
                "[a-z_]{1,10}",
                "(\\PC){0,30}",
                "[a-z_]{1,10}",
                "(\\PC){0,30}"
            )
                .prop_map(|(k1, v1, k2, v2)| format!(r#"{{"{k1}":"{v1}","{k2}":"{v2}"}}"#)),
            ("(\\PC){0,30}", "[0-9a-f]{0,40}")
                .prop_map(|(id, serial)| format!(r#"{{"id":"{id}","serial":"{serial}"}}"#)),
            prop::collection::vec("(\\PC){0,24}", 0..4).prop_map(|ids| {
                let items: Vec<String> = ids.iter().map(|i| format!(r#"{{"id":{i:?}}}"#)).collect();
                format!(r#"{{"items":[{}]}}"#, items.join(","))
            }),
        ]
    }

    fn check_id(id: &str) -> Result<(), TestCaseError> {
        if let Ok(parsed) = DeviceId::parse(id) {
            prop_assert_eq!(DeviceId::parse(&parsed.to_string()).unwrap(), parsed);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn api_bodies_are_read_or_refused(text in body()) {
            if let Ok(r) = serde_json::from_str::<station::TakeRequest>(&text) {
                check_id(&r.id)?;
            }
            if let Ok(r) = serde_json::from_str::<station::ReceivedRequest>(&text) {
                check_id(&r.id)?;
            }
            let _ = serde_json::from_str::<station::WrittenRequest>(&text);
            let _ = serde_json::from_str::<station::FailedRequest>(&text);
            let _ = serde_json::from_str::<station::LoginRequest>(&text);
            let _ = serde_json::from_str::<station::DiscardRequest>(&text);
            let _ = serde_json::from_str::<station::ReworkRequest>(&text);
            if let Ok(r) = serde_json::from_str::<ca::BatchRequest>(&text) {
                for item in &r.items {
                    check_id(&item.id)?;
                }
            }
            let _ = serde_json::from_str::<ca::ReplaceRequest>(&text);
            let _ = serde_json::from_str::<ca::RevokeRequest>(&text);
            let _ = serde_json::from_str::<ca::LookupRequest>(&text);
            let _ = serde_json::from_str::<center::Report>(&text);
        }

        #[test]
        fn any_text_is_a_device_id_or_refused(text in "(\\PC|[-A-Z0-9]){0,40}") {
            check_id(&text)?;
        }
    }
}
