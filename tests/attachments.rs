//! Store-and-forward over real sockets: a patient's photo uploaded, stored
//! sealed without its GPS, reviewed by a clinician, downloaded (audited);
//! bad uploads refused with nothing kept; tenants and grants kept apart;
//! MMS media fetched from the provider and stored the same way.

mod common;
#[path = "../crates/blob/tests/moto/mod.rs"]
mod moto;

use common::providers::{StandIn, twilio_signature};
use common::sipp::eventually;
use common::{Opts, Server, tempdir};
use serde_json::{Value, json};
use sha2::Digest;

const PATIENT: &str = "+14155550100";
const CLINIC: &str = "+14155559999";

fn opts(extra: &[(&str, &str)]) -> Opts {
    Opts {
        env: common::providers::local_providers_env(extra),
        ..Default::default()
    }
}

/// A TIFF with Make and a GPS IFD (latitude 48°51'24"N).
fn exif_with_gps() -> Vec<u8> {
    fn entry(t: &mut Vec<u8>, tag: u16, typ: u16, count: u32, value: u32) {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&typ.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(&value.to_le_bytes());
    }
    let (gps, make, lat) = (38u32, 64u32, 80u32);
    let mut t = b"II\x2a\0".to_vec();
    t.extend_from_slice(&8u32.to_le_bytes());
    t.extend_from_slice(&2u16.to_le_bytes());
    entry(&mut t, 0x010F, 2, 12, make);
    entry(&mut t, 0x8825, 4, 1, gps);
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(t.len() as u32, gps);
    t.extend_from_slice(&1u16.to_le_bytes());
    entry(&mut t, 2, 5, 3, lat);
    t.extend_from_slice(&0u32.to_le_bytes());
    t.resize(make as usize, 0);
    t.extend_from_slice(b"SecretPhone\0");
    t.resize(lat as usize, 0);
    t.extend_from_slice(&latitude());
    t
}

fn latitude() -> Vec<u8> {
    [(48u32, 1u32), (51, 1), (2400, 100)]
        .iter()
        .flat_map(|(n, d)| [n.to_le_bytes(), d.to_le_bytes()].concat())
        .collect()
}

/// A real JPEG (64×48) with that Exif right after SOI.
fn jpeg_with_gps() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
    });
    let mut plain = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 90)
        .encode_image(&img)
        .unwrap();
    let payload = [b"Exif\0\0".as_slice(), &exif_with_gps()].concat();
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    app1.extend_from_slice(&payload);
    [&plain[..2], &app1, &plain[2..]].concat()
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn upload(s: &Server, token: &str, conv: &str, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    // A connection of its own: the server closes one after refusing an
    // upload (413 before the body ends), and a pooled connection it closed
    // would fail the next request with IncompleteMessage.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = client
        .post(s.url(&format!(
            "/v1/conversations/{conv}/attachments?filename={name}"
        )))
        .bearer_auth(token)
        .header("content-type", "image/jpeg")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every file under the attachments directory, but the temp area.
fn stored_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("attachments")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != ".tmp") {
                    stack.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_patients_photo_is_stored_sealed_without_gps_reviewed_and_downloaded() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts(&[]));
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, PATIENT).await;
    let patient = s.mint(&key, "pat", "patient", &[&conv]).await;
    let nurse = s.mint(&key, "nurse-1", "clinician", &[&conv]).await;
    let photo = jpeg_with_gps();
    assert!(find(&photo, &latitude()));
    let (st, a) = upload(&s, &patient, &conv, "rash.jpg", photo.clone()).await;
    assert_eq!(st, 201, "{a}");
    assert_eq!(a["content_type"], "image/jpeg");
    assert_eq!(a["metadata_stripped"], true);
    assert_eq!(a["review"], "pending");
    assert_eq!(a["filename"], "rash.jpg");
    assert_eq!(a["uploaded_by"]["type"], "patient");
    let id = a["id"].as_str().unwrap().to_owned();

    // On disk: sealed (neither the JPEG's bytes nor its name in clear).
    let files = stored_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let raw = std::fs::read(&files[0]).unwrap();
    assert!(
        !find(&raw, &photo[200..232]) && !find(&raw, b"JFIF"),
        "stored in clear"
    );

    // Downloaded by the nurse: the picture, without Make or GPS.
    let r = s
        .client
        .get(s.url(&format!("/v1/attachments/{id}/content")))
        .bearer_auth(&nurse)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let got = r.bytes().await.unwrap();
    assert_eq!(got.len() as u64, a["size"].as_u64().unwrap());
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&got)),
        a["sha256"].as_str().unwrap()
    );
    assert!(
        !find(&got, &latitude()) && !find(&got, b"SecretPhone"),
        "GPS came back"
    );
    let decoded = image::load_from_memory(&got).expect("still a JPEG");
    assert_eq!((decoded.width(), decoded.height()), (64, 48));

    // The timeline has it; the review queue has it until the nurse reviews it.
    let events = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            None,
        )
        .await;
    let ev = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "attachment")
        .cloned()
        .unwrap();
    assert_eq!(ev["meta"]["attachment_id"], id.as_str());
    assert_eq!(ev["actor"]["type"], "patient");
    let queue = s
        .ok("GET", "/v1/attachments?review=pending", &key, None)
        .await;
    assert_eq!(queue.as_array().unwrap().len(), 1);
    let (st, _) = s
        .call(
            "POST",
            &format!("/v1/attachments/{id}/review"),
            &patient,
            Some(json!({"note": "x"})),
        )
        .await;
    assert_eq!(st, 403, "patients do not review");
    let reviewed = s
        .ok(
            "POST",
            &format!("/v1/attachments/{id}/review"),
            &nurse,
            Some(json!({"note": "Contact dermatitis; no infection."})),
        )
        .await;
    assert_eq!(reviewed["review"], "reviewed");
    assert_eq!(reviewed["reviewed_by"], "nurse-1");
    let (st, _) = s
        .call(
            "POST",
            &format!("/v1/attachments/{id}/review"),
            &nurse,
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 409);
    let queue = s
        .ok("GET", "/v1/attachments?review=pending", &key, None)
        .await;
    assert!(queue.as_array().unwrap().is_empty());
    // The review note is staff-only: the patient's timeline hides it.
    let theirs = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/events"),
            &patient,
            None,
        )
        .await;
    assert!(!theirs.to_string().contains("Contact dermatitis"));
    let audit = s
        .ok("GET", "/v1/audit?limit=500", &key, None)
        .await
        .to_string();
    for action in [
        "attachment.create",
        "attachment.download",
        "attachment.review",
    ] {
        assert!(audit.contains(action), "{action} not audited");
    }
}

#[tokio::test]
async fn bad_uploads_are_refused_clearly_and_nothing_is_kept() {
    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        opts(&[("CONTINUUM_ATTACHMENTS__MAX_BYTES", "20000")]),
    );
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, PATIENT).await;
    // An executable named .jpg, sent as image/jpeg.
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.resize(4096, 0);
    let (st, v) = upload(&s, &key, &conv, "holiday.jpg", elf).await;
    assert_eq!(st, 415, "{v}");
    assert_eq!(v["error"]["code"], "attachment_type_not_allowed");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("ELF"),
        "{v}"
    );
    // Too large (declared, and streamed without a length).
    let (st, v) = upload(&s, &key, &conv, "big.jpg", vec![0xFF; 30_000]).await;
    assert_eq!(st, 413, "{v}");
    let mut big = jpeg_with_gps();
    big.resize(40_000, 0);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(4096).map(|c| Ok(c.to_vec())).collect();
    let r = s
        .client
        .post(s.url(&format!("/v1/conversations/{conv}/attachments")))
        .bearer_auth(&key)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    // The server answers 413 as soon as the limit is passed and closes the
    // connection: a client still writing may see that as a broken pipe.
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    // Empty.
    let (st, v) = upload(&s, &key, &conv, "empty.jpg", vec![]).await;
    assert_eq!(st, 400, "{v}");
    // Truncated: the client's stream breaks off mid-upload.
    let photo = jpeg_with_gps();
    let half = photo[..photo.len() / 2].to_vec();
    let broken = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(half),
        Err(std::io::Error::other("connection lost")),
    ]);
    let sent = s
        .client
        .post(s.url(&format!("/v1/conversations/{conv}/attachments")))
        .bearer_auth(&key)
        .body(reqwest::Body::wrap_stream(broken))
        .send()
        .await;
    if let Ok(r) = sent {
        assert_eq!(r.status(), 400);
    }
    // An unknown conversation: 404 before reading.
    let (st, _) = upload(
        &s,
        &key,
        "01a00000-0000-7000-8000-000000000000",
        "x.jpg",
        jpeg_with_gps(),
    )
    .await;
    assert_eq!(st, 404);
    // Nothing stored, nothing on the timeline.
    let after = eventually(&s, &key, "/v1/attachments", |v| {
        v.as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert!(after.as_array().unwrap().is_empty(), "{after}");
    assert!(
        stored_files(dir.path()).is_empty(),
        "{:?}",
        stored_files(dir.path())
    );
    let events = s
        .ok(
            "GET",
            &format!("/v1/conversations/{conv}/events"),
            &key,
            None,
        )
        .await;
    assert!(!events.to_string().contains("\"attachment\""));
}

#[tokio::test]
async fn attachments_keep_tenants_and_grants_apart() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts(&[]));
    let a = s.key().to_owned();
    let b = common::second_tenant(dir.path(), "clinic-b");
    let (_, conv) = s.patient_conversation(&a, PATIENT).await;
    let (_, other) = s.patient_conversation(&a, "+14155550111").await;
    let (st, att) = upload(&s, &a, &conv, "a.jpg", jpeg_with_gps()).await;
    assert_eq!(st, 201, "{att}");
    let id = att["id"].as_str().unwrap().to_owned();
    let elsewhere = s.mint(&a, "dr-other", "clinician", &[&other]).await;
    for token in [&b, &elsewhere] {
        for (method, path, body) in [
            ("GET", format!("/v1/attachments/{id}"), None),
            ("GET", format!("/v1/attachments/{id}/content"), None),
            (
                "POST",
                format!("/v1/attachments/{id}/review"),
                Some(json!({})),
            ),
        ] {
            let (st, v) = s.call(method, &path, token, body).await;
            assert_eq!(st, 404, "{method} {path}: {v}");
        }
        let (st, _) = upload(&s, token, &conv, "x.jpg", jpeg_with_gps()).await;
        assert_eq!(st, 404);
    }
    let (st, v) = s.call("GET", "/v1/attachments", &b, None).await;
    assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(0)), "{v}");
    let (st, _) = s.call("GET", "/v1/attachments", &elsewhere, None).await;
    assert_eq!(st, 422, "a limited token must name its conversation");
    let (st, _) = s
        .call(
            "GET",
            &format!("/v1/attachments?conversation={conv}"),
            &elsewhere,
            None,
        )
        .await;
    assert_eq!(st, 404);
    let r = s
        .client
        .get(s.url(&format!("/v1/attachments/{id}/content")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn mms_media_is_fetched_through_the_guard_and_stored_sealed() {
    use axum::routing::get;
    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        opts(&[("CONTINUUM_ATTACHMENTS__ALLOW_PRIVATE_MEDIA", "true")]),
    );
    let key = s.key().to_owned();
    // Twilio's media host: serves the photo to the account's Basic auth only.
    let photo = jpeg_with_gps();
    let served = photo.clone();
    let media = axum::Router::new().route(
        "/media/ME1",
        get(move |h: axum::http::HeaderMap| {
            let served = served.clone();
            async move {
                let ok = h
                    .get("authorization")
                    .is_some_and(|v| v.to_str().unwrap().starts_with("Basic "));
                if ok {
                    (axum::http::StatusCode::OK, served).into_response()
                } else {
                    axum::http::StatusCode::UNAUTHORIZED.into_response()
                }
            }
        }),
    );
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let media_base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, media).await.unwrap() });
    let stand_in = StandIn::start().await;
    let p = s
        .ok(
            "POST",
            "/v1/messaging/providers",
            &key,
            Some(json!({"name": "twilio", "kind": "twilio", "channels": ["sms"], "senders": [CLINIC],
                "spec": {"account_sid": "AC1", "base_url": stand_in.base}, "credentials": {"auth_token": "tok"}})),
        )
        .await;
    let (_, conv) = s.patient_conversation(&key, PATIENT).await;
    let url = p["inbound_url"].as_str().unwrap().to_owned();
    let good = format!("{media_base}/media/ME1");
    let missing = format!("{media_base}/media/NOPE");
    let params = [
        ("From", PATIENT),
        ("To", CLINIC),
        ("Body", "Here is the rash"),
        ("MessageSid", "MM00000000000000000000000000000001"),
        ("NumMedia", "2"),
        ("MediaUrl0", good.as_str()),
        ("MediaContentType0", "image/jpeg"),
        ("MediaUrl1", missing.as_str()),
        ("MediaContentType1", "image/png"),
    ];
    let sig = twilio_signature("tok", &url, &params);
    let r = s
        .client
        .post(&url)
        .header("x-twilio-signature", sig)
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        let list = v["events"].as_array().unwrap();
        list.iter().any(|e| e["kind"] == "attachment") && list.iter().any(|e| e["kind"] == "note")
    })
    .await;
    let list = events["events"].as_array().unwrap();
    let att = list
        .iter()
        .find(|e| e["kind"] == "attachment")
        .expect("the photo stored");
    assert_eq!(att["channel"], "sms");
    assert_eq!(att["meta"]["source"], "mms");
    assert_eq!(att["body"], "Here is the rash");
    let note = list
        .iter()
        .find(|e| e["kind"] == "note")
        .expect("the failed fetch explained");
    assert!(
        note["body"]
            .as_str()
            .unwrap()
            .contains("could not be stored"),
        "{note}"
    );
    let id = att["meta"]["attachment_id"].as_str().unwrap();
    let got = s
        .client
        .get(s.url(&format!("/v1/attachments/{id}/content")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(!find(&got, &latitude()), "GPS came back from an MMS");
}

#[tokio::test]
async fn media_urls_to_private_addresses_are_refused_by_default() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), opts(&[]));
    let key = s.key().to_owned();
    let stand_in = StandIn::start().await;
    let p = s
        .ok(
            "POST",
            "/v1/messaging/providers",
            &key,
            Some(json!({"name": "twilio", "kind": "twilio", "channels": ["sms"], "senders": [CLINIC],
                "spec": {"account_sid": "AC1", "base_url": stand_in.base}, "credentials": {"auth_token": "tok"}})),
        )
        .await;
    let (_, conv) = s.patient_conversation(&key, PATIENT).await;
    let url = p["inbound_url"].as_str().unwrap().to_owned();
    // A forged-or-compromised provider pointing us at the metadata service.
    let params = [
        ("From", PATIENT),
        ("To", CLINIC),
        ("Body", ""),
        ("MessageSid", "MM00000000000000000000000000000002"),
        ("NumMedia", "1"),
        ("MediaUrl0", "http://localhost:9/latest/meta-data"),
    ];
    let sig = twilio_signature("tok", &url, &params);
    let r = s
        .client
        .post(&url)
        .header("x-twilio-signature", sig)
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = eventually(&s, &key, &format!("/v1/conversations/{conv}/events"), |v| {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "note")
    })
    .await;
    let note = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "note")
        .cloned()
        .unwrap();
    assert!(
        note["body"]
            .as_str()
            .unwrap()
            .contains("could not be stored"),
        "{note}"
    );
    assert!(!events.to_string().contains("\"attachment\""));
}

#[tokio::test]
async fn attachments_can_live_in_an_s3_compatible_bucket() {
    let moto = moto::moto().await;
    let endpoint = format!("http://{}", moto.addr);
    let dir = tempdir();
    let s = Server::start_with(
        dir.path(),
        opts(&[
            ("CONTINUUM_ATTACHMENTS__S3__ENDPOINT", endpoint.as_str()),
            ("CONTINUUM_ATTACHMENTS__S3__BUCKET", moto::BUCKET),
            ("CONTINUUM_ATTACHMENTS__S3__REGION", "us-east-1"),
            ("CONTINUUM_ATTACHMENTS__S3__ACCESS_KEY_ID", "testing"),
            ("CONTINUUM_ATTACHMENTS__S3__SECRET_ACCESS_KEY", "testing"),
            ("CONTINUUM_ATTACHMENTS__S3__ALLOW_HTTP", "true"),
        ]),
    );
    let key = s.key().to_owned();
    let (_, conv) = s.patient_conversation(&key, PATIENT).await;
    let (st, a) = upload(&s, &key, &conv, "knee.jpg", jpeg_with_gps()).await;
    assert_eq!(st, 201, "{a}");
    assert!(
        stored_files(dir.path()).is_empty(),
        "nothing in the local directory"
    );
    let id = a["id"].as_str().unwrap();
    let got = s
        .client
        .get(s.url(&format!("/v1/attachments/{id}/content")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let got = got.bytes().await.unwrap();
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&got)),
        a["sha256"].as_str().unwrap()
    );
    assert!(!find(&got, &latitude()));
}
