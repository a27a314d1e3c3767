//! Output formats for an unsealed document: `json`, `env`, `exim`, `value`.
//! Pure functions into wiped buffers; writing them is [`crate::fsio`]'s job.

use zeroize::Zeroizing;

use crate::secret::SecretDocument;

/// The output formats of `sesame unseal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// A JSON object of strings.
    Json,
    /// `KEY="VALUE"` lines for systemd `EnvironmentFile=` and POSIX shells.
    Env,
    /// Exim `passwd.client` lines `host:username:password`.
    Exim,
    /// The raw value of one field.
    Value,
}

/// Options that shape the output.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// For `value`: the field to print.
    pub field: Option<String>,
    /// For `env`: prefix prepended to every (upper-cased) key.
    pub env_prefix: String,
    /// For `exim`: host pattern; default the `host` field, else `*`.
    pub exim_host: Option<String>,
}

/// Why a document cannot be written in the requested format. Messages name
/// fields, never values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputError {
    /// `--format value` without `--field`.
    #[error("--format value needs --field NAME")]
    FieldRequired,
    /// The field asked for is not in the document.
    #[error("the sealed document has no field {field:?} (it has: {present})")]
    NoSuchField {
        /// Requested field.
        field: String,
        /// Field names present.
        present: String,
    },
    /// A value would break the format's line syntax.
    #[error("field {field:?} contains {what}, which the {format} format cannot hold")]
    Unrepresentable {
        /// Offending field (or `exim-host`).
        field: String,
        /// What character class.
        what: &'static str,
        /// Format name.
        format: &'static str,
    },
    /// `--env-prefix` is not a valid variable-name prefix.
    #[error("--env-prefix {0:?} is not a valid variable name prefix ([A-Za-z_][A-Za-z0-9_]*)")]
    BadPrefix(String),
}

/// Renders `doc` in `format`.
///
/// # Errors
/// An [`OutputError`]; no partial output is returned.
pub fn render(
    doc: &SecretDocument,
    format: OutputFormat,
    options: &RenderOptions,
) -> Result<Zeroizing<Vec<u8>>, OutputError> {
    match format {
        OutputFormat::Json => {
            let mut out = doc.to_json();
            // to_json reserved room for the worst case; this push never reallocates.
            out.push(b'\n');
            Ok(out)
        }
        OutputFormat::Env => render_env(doc, &options.env_prefix),
        OutputFormat::Exim => render_exim(doc, options.exim_host.as_deref()),
        OutputFormat::Value => {
            let name = options.field.as_deref().ok_or(OutputError::FieldRequired)?;
            let value = field(doc, name)?;
            Ok(Zeroizing::new(value.as_bytes().to_vec()))
        }
    }
}

/// The environment variables `env` and `exec` produce: `(NAME, value)` pairs.
///
/// # Errors
/// [`OutputError::BadPrefix`].
pub fn env_pairs<'a>(
    doc: &'a SecretDocument,
    prefix: &str,
) -> Result<Vec<(String, &'a str)>, OutputError> {
    check_prefix(prefix)?;
    Ok(doc
        .iter()
        .map(|(name, value)| {
            (
                format!("{prefix}{}", name.as_str().to_ascii_uppercase()),
                value.expose(),
            )
        })
        .collect())
}

/// Checks an `--env-prefix`: empty, or the start of a variable name
/// (`[A-Za-z_][A-Za-z0-9_]*`).
///
/// # Errors
/// [`OutputError::BadPrefix`].
pub fn check_prefix(prefix: &str) -> Result<(), OutputError> {
    let valid = prefix.is_empty()
        || (prefix
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if valid {
        Ok(())
    } else {
        Err(OutputError::BadPrefix(prefix.to_owned()))
    }
}

fn field<'a>(doc: &'a SecretDocument, name: &str) -> Result<&'a str, OutputError> {
    doc.get(name)
        .map(|v| v.expose())
        .ok_or_else(|| OutputError::NoSuchField {
            field: name.to_owned(),
            present: doc.names().join(", "),
        })
}

/// Double quotes with `\` before `"`, `\`, `$` and `` ` ``: the escapes systemd's
/// EnvironmentFile parser and a POSIX shell's double quotes agree on. Line breaks
/// and NUL are refused rather than relying on either parser's continuation rules.
fn render_env(doc: &SecretDocument, prefix: &str) -> Result<Zeroizing<Vec<u8>>, OutputError> {
    let pairs = env_pairs(doc, prefix)?;
    let mut out = Zeroizing::new(Vec::with_capacity(
        pairs.iter().map(|(k, v)| k.len() + 2 * v.len() + 4).sum(),
    ));
    for (key, value) in pairs {
        if let Some(what) = forbidden(value, &['\n', '\r', '\0']) {
            return Err(OutputError::Unrepresentable {
                field: key.to_ascii_lowercase(),
                what,
                format: "env",
            });
        }
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"=\"");
        for b in value.bytes() {
            if matches!(b, b'"' | b'\\' | b'$' | b'`') {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.extend_from_slice(b"\"\n");
    }
    Ok(out)
}

/// `host:username:password` — the line Exim's `passwd.client` lookups split on
/// `:`; a colon, line break or NUL inside a value would shift the fields.
fn render_exim(
    doc: &SecretDocument,
    host: Option<&str>,
) -> Result<Zeroizing<Vec<u8>>, OutputError> {
    let username = field(doc, "username")?;
    let password = field(doc, "password")?;
    let host = match host {
        Some(h) => h,
        None => doc.get("host").map(|v| v.expose()).unwrap_or("*"),
    };
    let bad = [':', '\n', '\r', '\0'];
    for (name, value) in [
        ("host", host),
        ("username", username),
        ("password", password),
    ] {
        if let Some(what) = forbidden(value, &bad) {
            return Err(OutputError::Unrepresentable {
                field: name.into(),
                what,
                format: "exim",
            });
        }
        if value.is_empty() || value.starts_with(char::is_whitespace) || value.starts_with('#') {
            return Err(OutputError::Unrepresentable {
                field: name.into(),
                what: "an empty value or a leading space or #",
                format: "exim",
            });
        }
    }
    if host.contains(char::is_whitespace) {
        return Err(OutputError::Unrepresentable {
            field: "host".into(),
            what: "whitespace",
            format: "exim",
        });
    }
    let mut out = Zeroizing::new(Vec::with_capacity(
        host.len() + username.len() + password.len() + 3,
    ));
    for (i, part) in [host, username, password].iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        out.extend_from_slice(part.as_bytes());
    }
    out.push(b'\n');
    Ok(out)
}

fn forbidden(value: &str, chars: &[char]) -> Option<&'static str> {
    value.chars().find(|c| chars.contains(c)).map(|c| match c {
        ':' => "a ':'",
        '\n' | '\r' => "a line break",
        _ => "a NUL byte",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(input: &str) -> SecretDocument {
        SecretDocument::parse_input(input.as_bytes()).unwrap()
    }

    fn text(v: Zeroizing<Vec<u8>>) -> String {
        String::from_utf8(v.to_vec()).unwrap()
    }

    #[test]
    fn json() {
        let out = render(
            &doc("b=2\na=\"1\""),
            OutputFormat::Json,
            &RenderOptions::default(),
        );
        assert_eq!(text(out.unwrap()), "{\"a\":\"\\\"1\\\"\",\"b\":\"2\"}\n");
    }

    #[test]
    fn env_quotes_for_shell_and_systemd() {
        let opts = RenderOptions {
            env_prefix: "SES_".into(),
            ..Default::default()
        };
        let out = render(&doc("password=a\"b\\c$d`e'f g"), OutputFormat::Env, &opts).unwrap();
        assert_eq!(text(out), "SES_PASSWORD=\"a\\\"b\\\\c\\$d\\`e'f g\"\n");
        let err = render(&doc("{\"k\":\"a\\nb\"}"), OutputFormat::Env, &opts).unwrap_err();
        assert!(matches!(err, OutputError::Unrepresentable { .. }));
        let bad = RenderOptions {
            env_prefix: "1X".into(),
            ..Default::default()
        };
        assert!(matches!(
            render(&doc("a=b"), OutputFormat::Env, &bad),
            Err(OutputError::BadPrefix(_))
        ));
    }

    #[test]
    fn exim() {
        let d = doc("username=AKIA\npassword=pw/+=\nhost=email-smtp.eu-west-1.amazonaws.com");
        let out = render(&d, OutputFormat::Exim, &RenderOptions::default()).unwrap();
        assert_eq!(text(out), "email-smtp.eu-west-1.amazonaws.com:AKIA:pw/+=\n");
        let opts = RenderOptions {
            exim_host: Some("*.amazonaws.com".into()),
            ..Default::default()
        };
        let out = render(&doc("username=u\npassword=p"), OutputFormat::Exim, &opts).unwrap();
        assert_eq!(text(out), "*.amazonaws.com:u:p\n");
        let out = render(
            &doc("username=u\npassword=p"),
            OutputFormat::Exim,
            &RenderOptions::default(),
        );
        assert_eq!(text(out.unwrap()), "*:u:p\n");
        let err = render(
            &doc("username=u\npassword=p:q"),
            OutputFormat::Exim,
            &RenderOptions::default(),
        );
        assert!(matches!(err, Err(OutputError::Unrepresentable { .. })));
        assert!(!format!("{err:?}").contains("p:q"));
        let err = render(
            &doc("username=u"),
            OutputFormat::Exim,
            &RenderOptions::default(),
        );
        assert!(matches!(err, Err(OutputError::NoSuchField { .. })));
    }

    #[test]
    fn value() {
        let opts = RenderOptions {
            field: Some("password".into()),
            ..Default::default()
        };
        let out = render(&doc("password=x y"), OutputFormat::Value, &opts).unwrap();
        assert_eq!(text(out), "x y");
        assert_eq!(
            render(&doc("a=b"), OutputFormat::Value, &RenderOptions::default()).unwrap_err(),
            OutputError::FieldRequired
        );
    }
}
