//! Secret-holding types: the data key, the PIN, and the secret document.
//!
//! None of these types implement `Debug`, `Display` or `Serialize` in a way that
//! could print their contents; every buffer is wiped when dropped.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use zeroize::Zeroizing;

/// Length of the data key in bytes (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// The per-file random key that encrypts the payload. Backends wrap it.
pub struct DataKey(SecretBox<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// Draws a fresh key from the operating system's CSPRNG.
    ///
    /// # Errors
    /// When the OS random source fails (practically never on Linux ≥ 3.17).
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key = SecretBox::new(Box::new([0u8; DATA_KEY_LEN]));
        getrandom::getrandom(secrecy::ExposeSecretMut::expose_secret_mut(&mut key))?;
        Ok(Self(key))
    }

    /// Copies a key out of a buffer a backend just unwrapped. `None` if the
    /// length is not [`DATA_KEY_LEN`]. The caller keeps ownership of (and should
    /// wipe) `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != DATA_KEY_LEN {
            return None;
        }
        // Built in place inside the box: no stack copy of the key to wipe.
        Some(Self(SecretBox::init_with_mut(
            |k: &mut [u8; DATA_KEY_LEN]| k.copy_from_slice(bytes),
        )))
    }

    /// The raw key bytes, for handing to a cipher or a backend.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        self.0.expose_secret()
    }
}

/// A PIN or passphrase for a hardware token.
pub type Pin = SecretString;

/// A validated field name: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldName(String);

impl FieldName {
    /// Longest accepted field name.
    pub const MAX_LEN: usize = 64;

    /// Parses a field name the user typed as such (a flag value like
    /// `--field`): the error quotes it.
    ///
    /// Not for names read from secret input, where a mistyped line may put
    /// part of a secret where the name should be: use [`FieldName::parse`].
    ///
    /// # Errors
    /// [`DocumentError::InvalidFieldName`] unless it matches `[A-Za-z_][A-Za-z0-9_]*`.
    pub fn new(name: &str) -> Result<Self, DocumentError> {
        Self::parse(name).ok_or_else(|| DocumentError::InvalidFieldName(printable(name)))
    }

    /// Parses a field name; `None` unless it matches `[A-Za-z_][A-Za-z0-9_]*`
    /// and is at most [`FieldName::MAX_LEN`] bytes. The caller reports the
    /// failure without quoting the text.
    pub fn parse(name: &str) -> Option<Self> {
        let mut chars = name.chars();
        let valid_start = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_');
        let valid_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        (valid_start && valid_rest && name.len() <= Self::MAX_LEN).then(|| Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Sound: `Eq`, `Ord` and `Hash` are derived from the inner `String`, which
// agree with `str`'s.
impl Borrow<str> for FieldName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One secret field value. Wiped on drop, never printed.
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Takes ownership of a string (its buffer is wiped when this value drops).
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value itself: only for writing it where the user asked for it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// Errors reading or building a secret document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// A field name given as a flag value (e.g. `--field`) outside
    /// `[A-Za-z_][A-Za-z0-9_]*` (the name is shown: the user typed it as a name).
    #[error("field name {0:?} is not a valid name (use letters, digits and _, not starting with a digit)")]
    InvalidFieldName(String),
    /// A `KEY=VALUE` line whose text before the first `=` is not a valid
    /// field name. The text is not shown: a mistyped line (`password: x=y`,
    /// a base64 value with `=` padding) would put a secret there.
    #[error("line {line}: the text before '=' is not a valid field name ([A-Za-z_][A-Za-z0-9_]*)")]
    InvalidLineKey {
        /// 1-based line number.
        line: usize,
    },
    /// A JSON object key that is not a valid field name. The key is not
    /// shown, for the same reason as [`DocumentError::InvalidLineKey`].
    #[error("the {} key of the JSON object is not a valid field name ([A-Za-z_][A-Za-z0-9_]*)", Ordinal(*.position))]
    InvalidJsonKey {
        /// 1-based position of the key in the object.
        position: usize,
    },
    /// The same field twice.
    #[error("field {0} appears twice")]
    DuplicateField(String),
    /// Input that is neither a JSON object of strings nor KEY=VALUE lines.
    /// The detail never quotes the input.
    #[error("not a JSON object of strings nor KEY=VALUE lines: {0}")]
    Syntax(String),
    /// No fields at all.
    #[error("the secret has no fields")]
    Empty,
    /// Too large to seal.
    #[error("the secret is larger than {max} bytes")]
    TooLarge {
        /// The limit in bytes.
        max: usize,
    },
}

/// A secret: named string fields. For SES: `username`, `password`, `host`, `port`, `region`.
#[derive(Default)]
pub struct SecretDocument {
    fields: BTreeMap<FieldName, SecretValue>,
}

impl SecretDocument {
    /// Largest accepted input (the sealed file is capped at 1 MiB).
    pub const MAX_INPUT: usize = 512 * 1024;

    /// An empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a field.
    ///
    /// # Errors
    /// [`DocumentError::DuplicateField`] if the name is already present.
    pub fn insert(&mut self, name: FieldName, value: SecretValue) -> Result<(), DocumentError> {
        if self.fields.contains_key(&name) {
            return Err(DocumentError::DuplicateField(name.0));
        }
        self.fields.insert(name, value);
        Ok(())
    }

    /// Looks up a field by name.
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.fields.get(name)
    }

    /// Fields in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&FieldName, &SecretValue)> {
        self.fields.iter()
    }

    /// Field names in order (safe to print).
    pub fn names(&self) -> Vec<String> {
        self.fields.keys().map(|k| k.0.clone()).collect()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Parses user input: a JSON object of strings, or `KEY=VALUE` lines
    /// (blank lines and lines starting with `#` are ignored; the value is the
    /// rest of the line, verbatim, without its line ending).
    ///
    /// # Errors
    /// A [`DocumentError`] that never quotes the input's values.
    pub fn parse_input(input: &[u8]) -> Result<Self, DocumentError> {
        if input.len() > Self::MAX_INPUT {
            return Err(DocumentError::TooLarge {
                max: Self::MAX_INPUT,
            });
        }
        let first = input.iter().find(|b| !b.is_ascii_whitespace());
        let doc = match first {
            None => return Err(DocumentError::Empty),
            Some(b'{') => Self::from_json(input)?,
            Some(_) => Self::from_lines(input)?,
        };
        if doc.is_empty() {
            return Err(DocumentError::Empty);
        }
        Ok(doc)
    }

    /// Parses the payload format: a JSON object of strings.
    ///
    /// # Errors
    /// As [`SecretDocument::parse_input`].
    pub fn from_json(input: &[u8]) -> Result<Self, DocumentError> {
        // Limitation: serde_json unescapes a string containing `\` escapes
        // into its internal scratch buffer, which it frees without wiping;
        // escape-free values are borrowed from `input` and not copied there.
        let mut de = serde_json::Deserializer::from_slice(input);
        let doc = DocumentSeed
            .deserialize_any_doc(&mut de)
            .map_err(|e| DocumentError::Syntax(json_error_summary(&e)))?;
        de.end()
            .map_err(|e| DocumentError::Syntax(json_error_summary(&e)))?;
        doc
    }

    fn from_lines(input: &[u8]) -> Result<Self, DocumentError> {
        let text = std::str::from_utf8(input)
            .map_err(|e| DocumentError::Syntax(format!("not UTF-8 at byte {}", e.valid_up_to())))?;
        let mut doc = Self::new();
        for (number, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(DocumentError::Syntax(format!(
                    "line {} has no '=' (expected KEY=VALUE)",
                    number + 1
                )));
            };
            let line = number + 1;
            let name =
                FieldName::parse(key.trim()).ok_or(DocumentError::InvalidLineKey { line })?;
            doc.insert(name, SecretValue::new(value.to_owned()))?;
        }
        Ok(doc)
    }

    /// Serialises the document as the sealed payload: a compact JSON object of
    /// strings in field-name order, in a buffer that is wiped on drop.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        // Reserve the worst case up front (every byte escaped as \u00XX) so the
        // buffer never reallocates and leaves unwiped copies behind.
        let worst: usize = self
            .fields
            .iter()
            .map(|(k, v)| 6 * (k.0.len() + v.expose().len()) + 6)
            .sum();
        let mut out = Zeroizing::new(Vec::with_capacity(worst + 2));
        out.push(b'{');
        for (i, (name, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(&mut out, &name.0);
            out.push(b':');
            write_json_string(&mut out, value.expose());
        }
        out.push(b'}');
        out
    }
}

/// Writes a JSON string literal without intermediate allocations.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// serde_json errors can quote the input; keep only the position and category.
fn json_error_summary(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "expected an object whose values are all strings",
        serde_json::error::Category::Eof => "JSON ends early",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// `1st`, `2nd`, `3rd`, `4th`, … `11th`, `12th`, `13th`, … `21st`.
struct Ordinal(usize);

impl fmt::Display for Ordinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        let suffix = match (n % 10, n % 100) {
            (_, 11..=13) => "th",
            (1, _) => "st",
            (2, _) => "nd",
            (3, _) => "rd",
            _ => "th",
        };
        write!(f, "{n}{suffix}")
    }
}

/// Replaces control characters so a (non-secret) name can be shown on one line.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Deserialises a JSON object straight into secret values, checking names and
/// duplicates as it goes (serde_json would silently keep the last duplicate).
struct DocumentSeed;

impl DocumentSeed {
    fn deserialize_any_doc<'de, D: Deserializer<'de>>(
        self,
        de: D,
    ) -> Result<Result<SecretDocument, DocumentError>, D::Error> {
        de.deserialize_map(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Result<SecretDocument, DocumentError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut doc = SecretDocument::new();
        let mut first_error = None;
        let mut position = 0;
        // The key is read as a secret too: a mistyped one may be a secret.
        while let Some(key) = map.next_key::<SecretValue>()? {
            position += 1;
            let value: SecretValue = map.next_value()?;
            if first_error.is_some() {
                continue;
            }
            let outcome = FieldName::parse(key.expose())
                .ok_or(DocumentError::InvalidJsonKey { position })
                .and_then(|name| doc.insert(name, value));
            if let Err(e) = outcome {
                first_error = Some(e);
            }
        }
        Ok(match first_error {
            Some(e) => Err(e),
            None => Ok(doc),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names() {
        for ok in ["username", "_x", "A1_b", "port"] {
            assert!(FieldName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "é", "a=b"] {
            assert!(
                matches!(FieldName::new(bad), Err(DocumentError::InvalidFieldName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_json_and_lines_to_the_same_document() {
        let json =
            SecretDocument::parse_input(br#"{"username":"AKIA","password":"p=w:\"x"}"#).unwrap();
        let lines =
            SecretDocument::parse_input(b"# SES\nusername=AKIA\r\n\npassword=p=w:\"x\n").unwrap();
        assert_eq!(json.names(), vec!["password", "username"]);
        assert_eq!(*json.to_json(), *lines.to_json());
        assert_eq!(json.get("password").unwrap().expose(), "p=w:\"x");
    }

    #[test]
    fn json_round_trip_escapes_everything() {
        let mut doc = SecretDocument::new();
        let tricky = "a\"b\\c\nd\u{1}\u{7f}é€";
        doc.insert(
            FieldName::new("k").unwrap(),
            SecretValue::new(tricky.into()),
        )
        .unwrap();
        let json = doc.to_json();
        let back = SecretDocument::from_json(&json).unwrap();
        assert_eq!(back.get("k").unwrap().expose(), tricky);
    }

    #[test]
    fn rejects_bad_input_without_quoting_it() {
        let cases: [(&[u8], &str); 11] = [
            (b"", "Empty"),
            (b"{}", "Empty"),
            (br#"{"a":"SECRET","a":"SECRET"}"#, "DuplicateField"),
            (br#"{"a":"x","bad-SECRET":"SECRET"}"#, "InvalidJsonKey"),
            (br#"{"a":"x","SECRET\n":"x"}"#, "InvalidJsonKey"),
            (br#"{"a":1}"#, "Syntax"),
            (b"SECRET-without-equals", "Syntax"),
            (b"password: SECRET=x\n", "InvalidLineKey"),
            (b"a=b\npassword SECRET==\n", "InvalidLineKey"),
            (b"U0VDUkVU SECRET==\n", "InvalidLineKey"),
            (b"SECRET-with-dash=x\n", "InvalidLineKey"),
        ];
        for (input, variant) in cases {
            let err = SecretDocument::parse_input(input).err().unwrap();
            assert!(format!("{err:?}").starts_with(variant), "{err:?}");
            assert!(!err.to_string().contains("SECRET"), "{err}");
        }
    }

    #[test]
    fn bad_keys_are_reported_by_position() {
        let err = SecretDocument::parse_input(b"# c\nusername=u\n\npass word=x\n")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "line 4: the text before '=' is not a valid field name ([A-Za-z_][A-Za-z0-9_]*)"
        );
        let err = SecretDocument::parse_input(br#"{"a":"x","b":"y","c d":"z"}"#)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "the 3rd key of the JSON object is not a valid field name ([A-Za-z_][A-Za-z0-9_]*)"
        );
        let ordinals: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .map(|n| Ordinal(n).to_string())
            .into();
        assert_eq!(
            ordinals,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }

    #[test]
    fn get_finds_fields_by_name() {
        let doc = SecretDocument::parse_input(b"b=2\na=1\n").unwrap();
        assert_eq!(doc.get("a").unwrap().expose(), "1");
        assert_eq!(doc.get("b").unwrap().expose(), "2");
        assert!(doc.get("c").is_none());
    }

    #[test]
    fn data_key_is_random_and_sized() {
        let a = DataKey::generate().unwrap();
        let b = DataKey::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(DataKey::from_slice(&[0u8; 31]).is_none());
        assert_eq!(
            DataKey::from_slice(&[7u8; 32]).unwrap().expose(),
            &[7u8; 32]
        );
    }
}
