use super::*;
use crate::keys::{KeySet, Rotation};
use gatehouse_store::{AesGcmSealer, Embedded};

const NOW: u64 = 1_800_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    keys: KeySet,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(&dir.path().join("state.redb")).unwrap();
    let sealer = AesGcmSealer::from_key(&[1; 32], "test").unwrap();
    let keys = KeySet::load(&store, &sealer, Rotation::default(), NOW)
        .await
        .unwrap();
    Fixture { _dir: dir, keys }
}

fn request(marker: &str, at: u64) -> bhttp::Message {
    let mut m = bhttp::Message::request(
        b"POST".to_vec(),
        b"https".to_vec(),
        b"web.gw.test".to_vec(),
        b"/submit".to_vec(),
    );
    let date = httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at));
    m.put_header("date", date);
    m.put_header("content-type", "text/plain");
    m.write_content(marker);
    m
}

fn sealed(f: &Fixture, m: &bhttp::Message) -> (Vec<u8>, ohttp::ClientResponse) {
    seal_request(&f.keys.ohttp_keys(NOW).unwrap(), m).unwrap()
}

#[tokio::test]
async fn encrypted_channel_round_trip_opens_the_request_and_only_its_context_opens_the_response() {
    let f = fixture().await;
    let gate = Gate::new(60);
    let (body, client) = sealed(&f, &request("marker-1", NOW));
    assert!(
        !body.windows(8).any(|w| w == b"marker-1"),
        "the marker travels sealed"
    );
    let opened = gate.open(&f.keys, &body, NOW).unwrap();
    assert_eq!(opened.request.content(), b"marker-1");
    assert_eq!(opened.request.control().path(), Some(&b"/submit"[..]));
    assert_eq!(opened.key_id, f.keys.current().id);

    let mut answer = bhttp::Message::response(bhttp::StatusCode::try_from(200u16).unwrap());
    answer.write_content("reply-1");
    let sealed_answer = seal_response(opened.response, &answer).unwrap();
    assert!(!sealed_answer.windows(7).any(|w| w == b"reply-1"));

    // Another request's context does not open it.
    let (body2, other_client) = sealed(&f, &request("marker-2", NOW));
    let _ = gate.open(&f.keys, &body2, NOW).unwrap();
    let err = open_response(other_client, &sealed_answer)
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("the answer to another request"),
        "{err}"
    );
    let back = open_response(client, &sealed_answer).unwrap();
    assert_eq!(back.content(), b"reply-1");
    assert_eq!(back.control().status().map(|s| s.code()), Some(200));
}

#[tokio::test]
async fn encrypted_channel_refuses_a_tampered_ciphertext_by_name() {
    let f = fixture().await;
    let gate = Gate::new(60);
    let (mut body, _) = sealed(&f, &request("x", NOW));
    let last = body.len() - 1;
    body[last] ^= 1;
    let err = gate.open(&f.keys, &body, NOW).unwrap_err();
    assert!(
        matches!(err, ChannelError::Tampered(id) if id == f.keys.current().id),
        "{err}"
    );
    assert_eq!(err.status(), 400);
    // A flipped byte of the key share is tampering too, not a crash.
    let (mut body, _) = sealed(&f, &request("x", NOW));
    body[HEADER_LEN] ^= 0x40;
    assert!(gate.open(&f.keys, &body, NOW).is_err());
}

#[tokio::test]
async fn encrypted_channel_refuses_an_unknown_key_id_and_garbage() {
    let f = fixture().await;
    let gate = Gate::new(60);
    let (mut body, _) = sealed(&f, &request("x", NOW));
    body[0] = body[0].wrapping_add(9);
    let err = gate.open(&f.keys, &body, NOW).unwrap_err();
    assert!(matches!(err, ChannelError::UnknownKey(_)), "{err}");
    assert!(err.to_string().starts_with("unknown channel key id"));
    for junk in [&b""[..], b"\x01", &[f.keys.current().id; 64]] {
        let err = gate.open(&f.keys, junk, NOW).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
    }
}

#[tokio::test]
async fn encrypted_channel_refuses_a_replayed_request_and_one_outside_the_window() {
    let f = fixture().await;
    let gate = Gate::new(60);
    let (body, _) = sealed(&f, &request("x", NOW));
    gate.open(&f.keys, &body, NOW).unwrap();
    let err = gate.open(&f.keys, &body, NOW + 30).unwrap_err();
    assert!(matches!(err, ChannelError::Replayed), "{err}");
    // Still refused after the memory's generation turns over (every 2 × window), while its
    // date is acceptable...
    let (late, _) = sealed(&f, &request("y", NOW + 110));
    gate.open(&f.keys, &late, NOW + 110).unwrap();
    let err = gate.open(&f.keys, &late, NOW + 125).unwrap_err();
    assert!(matches!(err, ChannelError::Replayed), "{err}");
    // ...and past it, by its date.
    let err = gate.open(&f.keys, &body, NOW + 61).unwrap_err();
    assert!(
        matches!(
            err,
            ChannelError::Stale {
                skew: -61,
                window: 60
            }
        ),
        "{err}"
    );
    let (early, _) = sealed(&f, &request("x", NOW + 120));
    assert!(matches!(
        gate.open(&f.keys, &early, NOW).unwrap_err(),
        ChannelError::Stale { skew: 120, .. }
    ));
    let mut undated = bhttp::Message::request(
        b"GET".to_vec(),
        b"https".to_vec(),
        b"web.gw.test".to_vec(),
        b"/".to_vec(),
    );
    undated.put_header("accept", "*/*");
    let (body, _) = sealed(&f, &undated);
    assert!(matches!(
        gate.open(&f.keys, &body, NOW).unwrap_err(),
        ChannelError::NoDate
    ));
}

#[tokio::test]
async fn encrypted_channel_refuses_new_requests_rather_than_forget_old_ones() {
    let f = fixture().await;
    let gate = Gate::with_memory(60, 2);
    for i in 0..2 {
        let (body, _) = sealed(&f, &request(&format!("m{i}"), NOW));
        gate.open(&f.keys, &body, NOW).unwrap();
    }
    let (body, _) = sealed(&f, &request("m3", NOW));
    let err = gate.open(&f.keys, &body, NOW).unwrap_err();
    assert!(matches!(err, ChannelError::Busy), "{err}");
    assert_eq!(err.status(), 503);
    // Once the window has passed, the memory is free again.
    let (body, _) = sealed(&f, &request("m4", NOW + 500));
    gate.open(&f.keys, &body, NOW + 500).unwrap();
}
