//! `X-Twilio-Signature` against an independent implementation: the official
//! `twilio` package from PyPI (its `RequestValidator`), installed in
//! `.venv-peers` by scripts/test. Random URLs and parameters (unicode,
//! repeated names, empty values, query strings, ports) are signed by Python;
//! ours must produce the same signature and accept it, Python must accept
//! ours, and any tampering must be refused.

use continuum_messaging::twilio::{
    Algorithm, SignatureError, signature, signature_with, validate, validate_with,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Reads cases from stdin, answers with Python's signature of each and
/// whether Python's `validate` accepts the signature we computed.
const PEER: &str = r#"
import json, sys
from twilio.request_validator import RequestValidator

class MultiDict(dict):
    """What Flask hands the validator: repeated names kept (getall)."""
    def __init__(self, pairs):
        super().__init__()
        self.pairs = pairs
        for k, v in pairs:
            self[k] = v
    def getall(self, name):
        return [v for k, v in self.pairs if k == name]

out = []
for case in json.load(sys.stdin):
    v = RequestValidator(case["secret"])
    params = MultiDict([tuple(p) for p in case["params"]])
    alg = case["algorithm"]
    out.append({
        "signature": v.compute_signature(case["url"], params, alg),
        "accepts_ours": v.validate(case["url"], params, case["ours"], alg),
    })
json.dump(out, sys.stdout)
"#;

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv-peers/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/test (it installs the twilio package into .venv-peers)",
        python.display()
    );
    python
}

fn run_peer(cases: &Value) -> Vec<Value> {
    let mut child = Command::new(python())
        .args(["-c", PEER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("python ran");
    assert!(out.status.success(), "the Python peer failed");
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("peer JSON")
        .as_array()
        .unwrap()
        .clone()
}

/// Characters that stress encoding and ordering: ASCII, form-encoding
/// metacharacters, accents, CJK, astral-plane emoji, control characters.
const ALPHABET: &[&str] = &[
    "a", "Z", "0", "9", " ", "+", "&", "=", "%", "?", "/", "#", ":", "é", "ß", "Ω", "中", "😀",
    "\u{0}", "\n", "\t", "~", "_", "-", ".", "Ü", "ü",
];

fn text(rng: &mut StdRng, max: usize) -> String {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| *ALPHABET.choose(rng).unwrap()).collect()
}

fn url(rng: &mut StdRng) -> String {
    let scheme = *["https", "http"].choose(rng).unwrap();
    let host = *[
        "care.example",
        "api.clinic.test",
        "localhost",
        "[::1]",
        "10.0.0.5",
    ]
    .choose(rng)
    .unwrap();
    let port = match rng.gen_range(0..4) {
        0 => ":8443".to_string(),
        1 if scheme == "https" => ":443".to_string(),
        _ => String::new(),
    };
    let path: String = (0..rng.gen_range(0..4))
        .map(|_| {
            let seg: String = (0..rng.gen_range(1..8))
                .map(|_| {
                    *["a", "b", "%20", "%E2%9C%93", "x-y", "1", "é"]
                        .choose(rng)
                        .unwrap()
                })
                .collect();
            format!("/{seg}")
        })
        .collect();
    let query = match rng.gen_range(0..3) {
        0 => String::new(),
        1 => "?foo=1&bar=2".to_string(),
        _ => format!("?t={}&e=&u=%C3%A9", rng.gen_range(0..1000)),
    };
    format!("{scheme}://{host}{port}{path}{query}")
}

fn params(rng: &mut StdRng) -> Vec<(String, String)> {
    const NAMES: &[&str] = &[
        "Body",
        "From",
        "To",
        "MessageSid",
        "MediaUrl0",
        "NumMedia",
        "ProfileName",
        "WaId",
        "body",
        "Ünïcode",
        "名前",
        "a",
        "A",
        "_",
        "",
    ];
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(0..10) {
        let name = NAMES.choose(rng).unwrap().to_string();
        let value = if rng.gen_bool(0.2) {
            String::new()
        } else {
            text(rng, 12)
        };
        out.push((name.clone(), value.clone()));
        // Repeated names, sometimes with the very same value.
        if rng.gen_bool(0.2) {
            let again = if rng.gen_bool(0.5) {
                value
            } else {
                text(rng, 6)
            };
            out.push((name, again));
        }
    }
    out.shuffle(rng);
    out
}

#[test]
fn signatures_match_twilio_python() {
    let seed: u64 = std::env::var("TWILIO_PEER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("TWILIO_PEER_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    struct Case {
        algorithm: Algorithm,
        secret: String,
        url: String,
        params: Vec<(String, String)>,
        ours: String,
    }
    let mut cases = Vec::new();
    for i in 0..400 {
        let algorithm = if i % 5 == 0 {
            Algorithm::HmacSha256
        } else {
            Algorithm::HmacSha1
        };
        let secret = format!("{:032x}", rng.r#gen::<u128>());
        let url = url(&mut rng);
        let params = params(&mut rng);
        let ours = signature_with(algorithm, &secret, &url, &params);
        cases.push(Case {
            algorithm,
            secret,
            url,
            params,
            ours,
        });
    }
    let request: Value = cases
        .iter()
        .map(|c| {
            json!({
                "algorithm": match c.algorithm {
                    Algorithm::HmacSha1 => "HMAC_SHA1",
                    Algorithm::HmacSha256 => "HMAC_SHA256",
                },
                "secret": c.secret,
                "url": c.url,
                "params": c.params,
                "ours": c.ours,
            })
        })
        .collect();
    let answers = run_peer(&request);
    assert_eq!(answers.len(), cases.len());

    for (c, a) in cases.iter().zip(&answers) {
        let theirs = a["signature"].as_str().unwrap();
        let ctx = || format!("url {:?} params {:?}", c.url, c.params);
        assert_eq!(
            c.ours,
            theirs,
            "signature differs from twilio-python: {}",
            ctx()
        );
        assert_eq!(
            a["accepts_ours"],
            true,
            "twilio-python refused our signature: {}",
            ctx()
        );
        let v = |url: &str, params: &[(String, String)], header: Option<&str>| {
            validate_with(c.algorithm, &c.secret, url, params, header)
        };
        assert_eq!(v(&c.url, &c.params, Some(theirs)), Ok(()), "{}", ctx());

        // Tampering: a changed or added parameter, another URL, another
        // secret, no header, a garbled header.
        let mut tampered = c.params.clone();
        match tampered.first_mut() {
            Some((_, value)) => value.push('x'),
            None => tampered.push(("Body".into(), "x".into())),
        }
        assert_eq!(
            v(&c.url, &tampered, Some(theirs)),
            Err(SignatureError::Mismatch),
            "tampered params accepted: {}",
            ctx()
        );
        let mut added = c.params.clone();
        added.push(("Injected".into(), "1".into()));
        assert_eq!(
            v(&c.url, &added, Some(theirs)),
            Err(SignatureError::Mismatch)
        );
        let other_url = format!("{}x", c.url);
        assert_eq!(
            v(&other_url, &c.params, Some(theirs)),
            Err(SignatureError::Mismatch),
            "wrong URL accepted: {}",
            ctx()
        );
        let other_host = c.url.replacen("://", "://evil.", 1);
        assert_eq!(
            v(&other_host, &c.params, Some(theirs)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            validate_with(
                c.algorithm,
                "not-the-secret",
                &c.url,
                &c.params,
                Some(theirs)
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(v(&c.url, &c.params, None), Err(SignatureError::Missing));
        assert!(matches!(
            v(&c.url, &c.params, Some(&theirs[1..])),
            Err(SignatureError::Malformed { .. })
        ));
        assert!(matches!(
            v(&c.url, &c.params, Some("!!not base64!!")),
            Err(SignatureError::Malformed { .. })
        ));
    }
}

/// Twilio's published example (its security documentation and every helper
/// library's tests): auth token 12345, this URL and these parameters.
#[test]
fn twilio_documentation_vector() {
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let params: Vec<(String, String)> = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675309"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let expected = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    assert_eq!(signature("12345", url, &params), expected);
    assert_eq!(validate("12345", url, &params, Some(expected)), Ok(()));

    // Python agrees on the same vector.
    let a = run_peer(&json!([{
        "algorithm": "HMAC_SHA1", "secret": "12345", "url": url,
        "params": params, "ours": expected,
    }]));
    assert_eq!(a[0]["signature"], expected);
    assert_eq!(a[0]["accepts_ours"], true);

    let mut tampered = params.clone();
    tampered[2].1 = "4321".into();
    assert_eq!(
        validate("12345", url, &tampered, Some(expected)),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        validate(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params,
            Some(expected)
        ),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        validate("12345", url, &params, None),
        Err(SignatureError::Missing)
    );
    assert_eq!(
        validate("12345", url, &params, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8")),
        Err(SignatureError::Malformed { expected_bytes: 20 })
    );
}
