//! Channel bindings: how an inbound SMS, call or app session finds its patient.
//! Values are normalised here so that lookups match however a number was typed.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BindingKind {
    /// E.164 phone number for SMS and voice.
    Phone,
    /// WhatsApp id (the E.164 number WhatsApp knows the patient by).
    Whatsapp,
    /// The customer's own app user id.
    AppUserId,
}

impl BindingKind {
    pub const ALL: [BindingKind; 3] = [
        BindingKind::Phone,
        BindingKind::Whatsapp,
        BindingKind::AppUserId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BindingKind::Phone => "phone",
            BindingKind::Whatsapp => "whatsapp",
            BindingKind::AppUserId => "app_user_id",
        }
    }

    /// Normalises a raw value for this kind of binding.
    pub fn normalize(self, raw: &str) -> Result<String, BindingError> {
        match self {
            BindingKind::Phone | BindingKind::Whatsapp => normalize_phone(raw),
            BindingKind::AppUserId => normalize_app_user_id(raw),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("`{0}` is not a valid phone number in international E.164 form (e.g. +14155552671)")]
    InvalidPhone(String),
    #[error("app_user_id must be 1..=128 characters of letters, digits and . _ : @ -")]
    InvalidAppUserId,
}

/// Parses a phone number written in international form (leading `+` and country
/// code; spaces, dashes, dots and parentheses allowed) and returns it as E.164.
pub fn normalize_phone(raw: &str) -> Result<String, BindingError> {
    let invalid = || BindingError::InvalidPhone(raw.chars().take(40).collect());
    let trimmed = raw.trim();
    if !trimmed.starts_with('+') || trimmed.len() > 32 {
        return Err(invalid());
    }
    let number = phonenumber::parse(None, trimmed).map_err(|_| invalid())?;
    if !phonenumber::is_valid(&number) {
        return Err(invalid());
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

pub fn normalize_app_user_id(raw: &str) -> Result<String, BindingError> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(BindingError::InvalidAppUserId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn phones_are_normalised_to_e164() {
        assert_eq!(
            normalize_phone("+1 (415) 555-2671").unwrap(),
            "+14155552671"
        );
        assert_eq!(
            normalize_phone("+44 20 7946 0958").unwrap(),
            "+442079460958"
        );
        assert_eq!(
            normalize_phone(" +4915112345678 ").unwrap(),
            "+4915112345678"
        );
    }

    #[test]
    fn invalid_phones_are_refused() {
        for bad in [
            "4155552671",
            "+1",
            "+1 555",
            "hello",
            "+999 123456",
            "",
            "+",
        ] {
            assert!(normalize_phone(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn app_user_ids() {
        assert!(normalize_app_user_id("user-42@acme").is_ok());
        assert!(normalize_app_user_id("has space").is_err());
        assert!(normalize_app_user_id(&"x".repeat(129)).is_err());
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent_and_never_panics(s in "\\PC{0,40}") {
            if let Ok(n) = normalize_phone(&s) {
                prop_assert_eq!(normalize_phone(&n).unwrap(), n);
            }
        }

        #[test]
        fn formatted_numbers_normalise_to_the_same_value(sep in prop::sample::select(vec![" ", "-", ".", ""])) {
            let raw = format!("+1{sep}415{sep}555{sep}2671");
            prop_assert_eq!(normalize_phone(&raw).unwrap(), "+14155552671");
        }
    }
}
