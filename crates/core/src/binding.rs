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
    /// The `phonenumber` parser would silently drop the extension and bind
    /// the main number, routing the patient's messages to whoever else
    /// shares the switchboard.
    #[error(
        "phone numbers with an extension (`x5`, `ext. 5`, `,,123`, `;ext=5`, `#5`) are not accepted: bind the main number; dial extensions with DTMF"
    )]
    PhoneExtension,
    /// Not echoed back: the value would carry the control characters into
    /// error messages and logs.
    #[error("phone numbers must not contain control characters (such as NUL, tab or line breaks)")]
    PhoneControlCharacter,
    #[error("app_user_id must be 1..=128 characters of letters, digits and . _ : @ -")]
    InvalidAppUserId,
}

/// Parses a phone number written in international form (leading `+` and country
/// code; spaces, dashes, dots and parentheses allowed) and returns it as E.164.
///
/// Extensions are refused rather than dropped: a binding is a patient's
/// identity, and `+14155552671 x5` is not the same patient as the switchboard
/// at `+14155552671`. Control characters are refused before anything else so
/// they never reach the parser, an error message or a log line.
pub fn normalize_phone(raw: &str) -> Result<String, BindingError> {
    if raw.chars().any(char::is_control) {
        return Err(BindingError::PhoneControlCharacter);
    }
    let invalid = || BindingError::InvalidPhone(raw.chars().take(40).collect());
    let trimmed = raw.trim();
    if has_extension_marker(trimmed) {
        return Err(BindingError::PhoneExtension);
    }
    if !trimmed.starts_with('+') || trimmed.len() > 32 {
        return Err(invalid());
    }
    let number = phonenumber::parse(None, trimmed).map_err(|_| invalid())?;
    // Backstop for every other way the parser recognises an extension
    // (`extension 5`, `anexo 5`, `int 5`, full-width forms…).
    if number.extension().is_some() {
        return Err(BindingError::PhoneExtension);
    }
    if !phonenumber::is_valid(&number) {
        return Err(invalid());
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Dial-string punctuation (`,` and `;` pauses, `#`, `~`) and `ext` in any
/// case: none belongs in a main number. Checked before parsing so the caller
/// learns the real reason whatever the parser makes of the rest (it fails
/// outright on `;ext=5`, which would read as a merely malformed number).
fn has_extension_marker(s: &str) -> bool {
    s.contains([',', ';', '#', '~']) || s.to_ascii_lowercase().contains("ext")
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

    #[test]
    fn phone_extensions_are_refused_not_dropped() {
        for ext in [
            "+14155552671 x5",
            "+14155552671x5",
            "+14155552671 X5",
            "+14155552671,,123",
            "+14155552671,5",
            "+14155552671;ext=5",
            "+14155552671;5",
            "+14155552671 ext. 5",
            "+14155552671 ext5",
            "+14155552671 EXT 5",
            "+1 415 555 2671 extension 5",
            "+14155552671#5",
            "+14155552671 #5",
            "+14155552671~5",
            "+1 415 555 2671 anexo 5",
            "+14155552671 int 5",
            " +1 (415) 555-2671 x 123 ",
        ] {
            assert_eq!(
                normalize_phone(ext),
                Err(BindingError::PhoneExtension),
                "{ext:?}"
            );
            assert_eq!(
                BindingKind::Whatsapp.normalize(ext),
                Err(BindingError::PhoneExtension),
                "{ext:?}"
            );
        }
        let msg = BindingError::PhoneExtension.to_string();
        assert!(msg.contains("extension") && msg.contains("DTMF"), "{msg}");
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in [
            "+14155552671\0",
            "+1415555\x002671",
            "\0+14155552671",
            "+14155552671\n",
            "+1\t415 555 2671",
            "+14155552671\r\n",
            "+1415\u{7f}5552671",
            "+1415\u{85}5552671",
        ] {
            assert_eq!(
                normalize_phone(bad),
                Err(BindingError::PhoneControlCharacter),
                "{bad:?}"
            );
        }
        // Not echoed back.
        assert!(
            !BindingError::PhoneControlCharacter
                .to_string()
                .contains('\0')
        );
        // app_user_id's allow-list already keeps them out.
        for bad in ["user\0", "\0", "user\n", "a\tb", "x\u{7f}"] {
            assert_eq!(
                normalize_app_user_id(bad),
                Err(BindingError::InvalidAppUserId),
                "{bad:?}"
            );
            assert!(BindingKind::AppUserId.normalize(bad).is_err());
        }
    }

    #[test]
    fn ordinary_formats_still_normalise() {
        for (raw, e164) in [
            ("+1 (415) 555-2671", "+14155552671"),
            ("+44 20 7946 0958", "+442079460958"),
            ("+14155552671", "+14155552671"),
            ("+1.415.555.2671", "+14155552671"),
            (" +4915112345678 ", "+4915112345678"),
        ] {
            assert_eq!(normalize_phone(raw).as_deref(), Ok(e164), "{raw:?}");
        }
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
