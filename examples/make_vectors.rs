//! Regenerates `tests/vectors/`: sealed files with a known data key, built
//! with the `aes-gcm` crate directly (not through `sesame::envelope`), so the
//! vectors also cross-check the library against the written spec.
//!
//! Run: `cargo run --example make_vectors -- tests/vectors`
//!
//! The stanzas are syntactically valid but wrap nothing: no hardware can
//! unwrap them. They exist to exercise the format and the payload cipher.

use std::path::Path;

use aes_gcm::aead::{Aead as _, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sesame::format::{self, Aead, Header, Stanza};

struct Vector {
    name: &'static str,
    comment: &'static str,
    bytes: Vec<u8>,
    /// `ok`, `tampered`, or a `FormatError` variant name.
    expect: &'static str,
}

const KEY: [u8; 32] = [
    0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae, 0xf0, 0x85, 0x7d, 0x77, 0x81,
    0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61, 0x08, 0xd7, 0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14, 0xdf, 0xf4,
];
const NONCE: [u8; 12] = [
    0xca, 0xfe, 0xba, 0xbe, 0xfa, 0xce, 0xdb, 0xad, 0xde, 0xca, 0xf8, 0x88,
];
const PAYLOAD: &str = r#"{"host":"email-smtp.eu-west-1.amazonaws.com","password":"BExampleSmtpPassword0123456789abcdefghijkl","port":"587","region":"eu-west-1","username":"AKIAIOSFODNN7EXAMPLE"}"#;

fn pkcs11_stanza() -> Stanza {
    Stanza::new("pkcs11")
        .with(
            "uri",
            "pkcs11:token=sesame;object=ses-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sesame/hsm.pin",
        )
        .with("mechanism", "aes-gcm")
        .with_bytes("iv", &[0x11; 12])
        .with_bytes("wrapped", &[0x22; 48])
}

fn tpm2_stanza() -> Stanza {
    Stanza::new("tpm2")
        .with("pcrs", "7")
        .with("bank", "sha256")
        .with_bytes("public", &[0x33; 78])
        .with_bytes("private", &[0x44; 126])
}

fn header(name: Option<&str>, stanzas: Vec<Stanza>) -> Header {
    Header {
        created: "2026-12-03T16:00:00Z".into(),
        generation: 1,
        name: name.map(str::to_owned),
        aead: Aead::Aes256Gcm,
        stanzas,
    }
}

fn seal_raw(header_bytes: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(&KEY).expect("32-byte key");
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&NONCE),
            Payload {
                msg: PAYLOAD.as_bytes(),
                aad: header_bytes,
            },
        )
        .expect("encrypt");
    format::encode(header_bytes, &NONCE, &ciphertext)
}

fn sealed(h: &Header) -> Vec<u8> {
    seal_raw(&format::encode_header(h).expect("valid header"))
}

/// A file whose header text is given verbatim (for invalid headers).
fn raw(header_text: &str) -> Vec<u8> {
    seal_raw(header_text.as_bytes())
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/vectors".into());
    let dir = Path::new(&dir);
    let good = sealed(&header(None, vec![pkcs11_stanza()]));
    let header_len = format::parse(&good).expect("parses").header_bytes.len();
    let valid_text = String::from_utf8(good[..header_len].to_vec()).expect("ascii");

    let mut header_flip = good.clone();
    header_flip[valid_text.find("generation: 1").expect("field") + 12] = b'2';
    let mut payload_flip = good.clone();
    let last = payload_flip.len() - 20;
    payload_flip[last] ^= 0x80;

    let vectors = vec![
        Vector {
            name: "ok-one-stanza",
            comment: "one pkcs11 stanza",
            bytes: good.clone(),
            expect: "ok",
        },
        Vector {
            name: "ok-two-stanzas-named",
            comment: "tpm2 and pkcs11 stanzas wrapping the same key, with a name",
            bytes: sealed(&header(
                Some("ses eu-west-1 prod"),
                vec![tpm2_stanza(), pkcs11_stanza()],
            )),
            expect: "ok",
        },
        Vector {
            name: "ok-unknown-stanza-type",
            comment: "a stanza type from the future is kept and authenticated; readers skip it",
            bytes: sealed(&header(
                None,
                vec![Stanza::new("x-future").with("k", "v"), pkcs11_stanza()],
            )),
            expect: "ok",
        },
        Vector {
            name: "err-header-byte-changed",
            comment: "generation 1 changed to 2 after sealing",
            bytes: header_flip,
            expect: "tampered",
        },
        Vector {
            name: "err-payload-byte-flipped",
            comment: "one ciphertext bit flipped",
            bytes: payload_flip,
            expect: "tampered",
        },
        Vector {
            name: "err-truncated-body",
            comment: "cut after the header and part of the nonce",
            bytes: good[..header_len + 20].to_vec(),
            expect: "Truncated",
        },
        Vector {
            name: "err-truncated-header",
            comment: "cut in the middle of the header",
            bytes: good[..header_len / 2].to_vec(),
            expect: "Truncated",
        },
        Vector {
            name: "err-empty",
            comment: "zero bytes",
            bytes: Vec::new(),
            expect: "Empty",
        },
        Vector {
            name: "err-bad-magic",
            comment: "not a sesame file",
            bytes: raw(&valid_text.replacen("sesame-sealed", "sesame-sealer", 1)),
            expect: "BadMagic",
        },
        Vector {
            name: "err-future-version",
            comment: "version 2",
            bytes: raw(&valid_text.replacen("v1\n", "v2\n", 1)),
            expect: "UnsupportedVersion",
        },
        Vector {
            name: "err-missing-field",
            comment: "no generation",
            bytes: raw(&valid_text.replacen("generation: 1\n", "", 1)),
            expect: "MissingField",
        },
        Vector {
            name: "err-duplicate-stanza-field",
            comment: "mechanism twice in one stanza",
            bytes: raw(&valid_text.replacen(
                "mechanism: aes-gcm\n",
                "mechanism: aes-gcm\nmechanism: aes-gcm\n",
                1,
            )),
            expect: "DuplicateStanzaField",
        },
        Vector {
            name: "err-unknown-aead",
            comment: "payload cipher not known",
            bytes: raw(&valid_text.replacen("aes-256-gcm", "chacha20-poly1305", 1)),
            expect: "UnknownAead",
        },
        Vector {
            name: "err-no-stanza",
            comment: "header with no stanza",
            bytes: raw(
                &(valid_text[..valid_text.find("-> ").expect("stanza")].to_owned() + "---\n"),
            ),
            expect: "NoStanza",
        },
        Vector {
            name: "err-malformed-line",
            comment: "a field without the ': ' separator",
            bytes: raw(&valid_text.replacen("mechanism: aes-gcm", "mechanism=aes-gcm", 1)),
            expect: "MalformedLine",
        },
    ];

    std::fs::create_dir_all(dir).expect("create vector dir");
    for v in vectors {
        std::fs::write(dir.join(format!("{}.sealed", v.name)), &v.bytes).expect("write sealed");
        let key_hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
        let mut meta = format!(
            "comment = {:?}\nexpect = {:?}\ndata_key = {:?}\n",
            v.comment, v.expect, key_hex
        );
        if v.expect == "ok" {
            meta.push_str(&format!("payload = '{PAYLOAD}'\n"));
        }
        std::fs::write(dir.join(format!("{}.toml", v.name)), meta).expect("write meta");
    }
}
