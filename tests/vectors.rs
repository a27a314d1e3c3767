//! Reads every test vector in `tests/vectors/` (see `docs/FORMAT.md`): each
//! `NAME.sealed` has a `NAME.toml` with the expected outcome and the data key,
//! so the payload is checked without hardware. The error variant is the oracle.

mod common;

use std::path::{Path, PathBuf};

use sesame::envelope::{self, UnsealError};
use sesame::format;
use sesame::secret::DataKey;

#[derive(serde::Deserialize)]
struct Meta {
    comment: String,
    expect: String,
    data_key: String,
    payload: Option<String>,
}

fn vectors() -> Vec<(PathBuf, Meta)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut out: Vec<(PathBuf, Meta)> = std::fs::read_dir(&dir)
        .expect("tests/vectors exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let meta: Meta = toml::from_str(&std::fs::read_to_string(&p).expect("read meta"))
                .expect("meta parses");
            (p.with_extension("sealed"), meta)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 15,
        "expected the full vector set, found {}",
        out.len()
    );
    out
}

fn key(hex: &str) -> DataKey {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex key"))
        .collect();
    DataKey::from_slice(&bytes).expect("32-byte key")
}

#[test]
fn every_vector_gives_its_expected_outcome() {
    for (path, meta) in vectors() {
        let bytes = std::fs::read(&path).expect("read vector");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let parsed = format::parse(&bytes);
        match meta.expect.as_str() {
            "ok" => {
                let file = parsed.unwrap_or_else(|e| panic!("{name} ({}): {e:?}", meta.comment));
                let plaintext = envelope::decrypt(&key(&meta.data_key), &file)
                    .unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert_eq!(
                    &*plaintext,
                    meta.payload.as_deref().expect("payload").as_bytes(),
                    "{name}"
                );
                // Byte-exact round trip of the header.
                assert_eq!(
                    format::encode_header(&file.header).unwrap(),
                    file.header_bytes,
                    "{name}"
                );
                assert_eq!(
                    format::encode(&file.header_bytes, &file.nonce, &file.ciphertext),
                    bytes,
                    "{name}"
                );
            }
            "tampered" => {
                let file = parsed.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert!(
                    matches!(
                        envelope::decrypt(&key(&meta.data_key), &file),
                        Err(UnsealError::Tampered { .. })
                    ),
                    "{name}"
                );
            }
            variant => {
                let err = parsed
                    .err()
                    .unwrap_or_else(|| panic!("{name} parsed but should fail with {variant}"));
                let debug = format!("{err:?}");
                assert!(
                    debug.starts_with(variant),
                    "{name}: expected {variant}, got {debug}"
                );
            }
        }
    }
}

#[test]
fn cli_inspect_and_unseal_report_format_errors_with_exit_65() {
    for (path, meta) in vectors() {
        let inspect = common::run(common::sesame().arg("inspect").arg(&path));
        match meta.expect.as_str() {
            "ok" | "tampered" => {
                common::expect_code(&inspect, 0);
                let text = String::from_utf8(inspect.stdout).unwrap();
                assert!(text.contains("generation: "), "{text}");
            }
            _ => {
                let stderr = common::expect_code(&inspect, 65);
                assert_eq!(stderr.lines().count(), 1, "{stderr}");
                assert!(stderr.starts_with("sesame: inspect "), "{stderr}");
                assert!(stderr.contains(&*path.to_string_lossy()), "{stderr}");
                let unseal = common::run(common::sesame().arg("unseal").arg(&path));
                let stderr = common::expect_code(&unseal, 65);
                assert!(stderr.contains(&*path.to_string_lossy()), "{stderr}");
            }
        }
    }
}

#[test]
fn inspect_json_lists_stanzas() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/ok-two-stanzas-named.sealed");
    let out = common::run(common::sesame().args(["inspect", "--json"]).arg(&path));
    common::expect_code(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["name"], "ses eu-west-1 prod");
    assert_eq!(v["generation"], 1);
    assert_eq!(v["stanzas"][0]["type"], "tpm2");
    assert_eq!(v["stanzas"][1]["type"], "pkcs11");
    assert_eq!(v["stanzas"][0]["fields"]["pcrs"], "7");
}
