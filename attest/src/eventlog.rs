//! Runtime measurement events (RTMR3) and their replay.
//!
//! The JSON shape is the dstack guest agent's (`imr`, `event_type`, `digest`, `event`,
//! `event_payload`, hex for bytes), so its event logs replay with this code. A runtime event's
//! digest is `SHA-384(event_type as u32 LE ‖ ":" ‖ name ‖ ":" ‖ payload)` (dstack's v1), and
//! an RTMR is `SHA-384(rtmr ‖ digest)` folded over its events from 48 zero bytes.

use crate::AttestError;
use serde::{Deserialize, Serialize};

/// The event type of runtime events extended into RTMR3.
pub const RUNTIME_EVENT_TYPE: u32 = 0x0800_0001;

/// One measured event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Which RTMR it was extended into (0-3).
    pub imr: u32,
    /// TCG event type.
    pub event_type: u32,
    /// The 48-byte digest extended into the RTMR.
    #[serde(with = "crate::hex::serde")]
    pub digest: Vec<u8>,
    /// The event's name (runtime events).
    #[serde(default)]
    pub event: String,
    /// The measured payload (runtime events).
    #[serde(default, with = "crate::hex::serde")]
    pub event_payload: Vec<u8>,
    /// The runtime-event digest format: 1 (binary, the default) or 2 (JCS JSON), as dstack
    /// writes it.
    #[serde(default = "v1", skip_serializing_if = "is_v1")]
    pub version: u32,
}

fn v1() -> u32 {
    1
}

fn is_v1(v: &u32) -> bool {
    *v == 1
}

impl Event {
    /// A runtime event for RTMR3, its digest computed from name and payload.
    pub fn runtime(name: &str, payload: &[u8]) -> Event {
        Event {
            imr: 3,
            event_type: RUNTIME_EVENT_TYPE,
            digest: runtime_digest(1, name, payload)
                .expect("version 1")
                .to_vec(),
            event: name.to_owned(),
            event_payload: payload.to_vec(),
            version: 1,
        }
    }

    /// Whether this is a runtime event: the only kind whose name and payload are measured
    /// (its digest is recomputed from them), so the only kind a policy's name pin can match.
    pub fn is_runtime(&self) -> bool {
        self.imr == 3 && self.event_type == RUNTIME_EVENT_TYPE
    }

    /// The digest extended into the RTMR. A runtime event's digest is always recomputed from
    /// its name and payload (a digest sent beside them must be that one; dstack's agent sends
    /// it stripped); its version must be one we know. Other events are extended as given:
    /// their name and payload mean nothing to the replay.
    fn extended_digest(&self) -> Result<Vec<u8>, AttestError> {
        if self.event_type != RUNTIME_EVENT_TYPE {
            return Ok(self.digest.clone());
        }
        let label = || format!("event:{}", self.event);
        let computed =
            runtime_digest(self.version, &self.event, &self.event_payload).ok_or_else(|| {
                AttestError::policy(
                    label(),
                    format!("unknown runtime-event version {}", self.version),
                )
            })?;
        if !self.digest.is_empty() && self.digest != computed {
            return Err(AttestError::policy(
                label(),
                "the event's digest is not the digest of its payload",
            ));
        }
        Ok(computed.to_vec())
    }
}

/// v1: `SHA-384(type LE ‖ ":" ‖ name ‖ ":" ‖ payload)`; v2: `SHA-384(JCS({"name", "payload":
/// hex, "type"}))`; `None` for a version we do not know.
fn runtime_digest(version: u32, name: &str, payload: &[u8]) -> Option<[u8; 48]> {
    let event_type = RUNTIME_EVENT_TYPE;
    Some(match version {
        2 => {
            let v = serde_json::json!({
                "name": name,
                "payload": crate::hex::encode(payload),
                "type": event_type,
            });
            crate::sha384(&[&crate::jcs::canonical(&v)?])
        }
        1 => crate::sha384(&[
            &event_type.to_le_bytes(),
            b":",
            name.as_bytes(),
            b":",
            payload,
        ]),
        _ => return None,
    })
}

/// Folds the events of `imr` into an RTMR value.
pub fn replay(events: &[Event], imr: u32) -> Result<[u8; 48], AttestError> {
    let mut rtmr = [0u8; 48];
    for e in events.iter().filter(|e| e.imr == imr) {
        let digest = e.extended_digest()?;
        if digest.len() != 48 {
            return Err(AttestError::malformed(
                "event log",
                format!("event {:?} has a {}-byte digest", e.event, digest.len()),
            ));
        }
        rtmr = crate::sha384(&[&rtmr, &digest]);
    }
    Ok(rtmr)
}

/// Checks that the IMR-3 events replay to `rtmr3`, each runtime event's digest recomputed
/// from its name and payload: then each runtime payload is as measured as the quote itself.
pub fn check_rtmr3(events: &[Event], rtmr3: &[u8; 48]) -> Result<(), AttestError> {
    let replayed = replay(events, 3)?;
    if &replayed != rtmr3 {
        return Err(AttestError::policy(
            "rtmr3",
            format!(
                "the event log replays to {}, the quote has {}",
                crate::hex::encode(&replayed),
                crate::hex::encode(rtmr3)
            ),
        ));
    }
    Ok(())
}

/// The one runtime event named `name`, for a policy pin: events of other types never match
/// (their names are not measured), and a name that appears twice is ambiguous and refused.
pub fn pinned_event<'a>(events: &'a [Event], name: &str) -> Result<&'a Event, AttestError> {
    let label = || format!("event:{name}");
    let mut found = events.iter().filter(|e| e.is_runtime() && e.event == name);
    match (found.next(), found.next()) {
        (None, _) => Err(AttestError::policy(label(), "not in the event log")),
        (Some(_), Some(_)) => Err(AttestError::policy(
            label(),
            "ambiguous: the event log has this runtime event more than once",
        )),
        (Some(e), None) => Ok(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_folds_in_order_and_checks_payloads() {
        let events = vec![Event::runtime("a", b"1"), Event::runtime("b", b"2")];
        let rtmr = replay(&events, 3).unwrap();
        let step1 = crate::sha384(&[&[0u8; 48], &events[0].digest]);
        assert_eq!(rtmr, crate::sha384(&[&step1, &events[1].digest]));
        check_rtmr3(&events, &rtmr).unwrap();

        let swapped = vec![events[1].clone(), events[0].clone()];
        assert!(check_rtmr3(&swapped, &rtmr).is_err(), "order matters");

        let mut forged = events.clone();
        forged[1].event_payload = b"3".to_vec();
        let e = check_rtmr3(&forged, &rtmr).unwrap_err();
        assert!(e.to_string().contains("event:b"), "{e}");
    }

    /// A real dstack guest-agent response: its stripped runtime events replay to the RTMR3
    /// of its (real) quote.
    #[test]
    fn recorded_dstack_event_log_replays_to_its_quote() {
        let (quote, events) = crate::dstack::tests::recorded();
        let parsed = dcap_qvl::quote::Quote::parse(&quote).unwrap();
        let rtmr3 = parsed.report.as_td10().unwrap().rt_mr3;
        check_rtmr3(&events, &rtmr3).unwrap();
        let names: Vec<_> = events
            .iter()
            .filter(|e| e.imr == 3)
            .map(|e| e.event.as_str())
            .collect();
        assert!(names.contains(&"compose-hash"), "{names:?}");
        let mut tampered = events.clone();
        let i = tampered
            .iter()
            .position(|e| e.event == "compose-hash")
            .unwrap();
        tampered[i].event_payload[0] ^= 1;
        assert!(check_rtmr3(&tampered, &rtmr3).is_err());
    }

    /// Issue 16 §1: an event really extended (digest kept, RTMR3 replays) but relabelled to
    /// another type with a pinned name and payload must not satisfy the pin.
    #[test]
    fn security_relabelled_event_cannot_satisfy_a_pin() {
        let real = vec![Event::runtime("app-id", b"evil"), Event::runtime("x", b"1")];
        let rtmr3 = replay(&real, 3).unwrap();
        let mut relabelled = real.clone();
        relabelled[0].event_type = 0;
        relabelled[0].event_payload = b"good".to_vec();
        check_rtmr3(&relabelled, &rtmr3).expect("the digest as given still replays");
        let e = pinned_event(&relabelled, "app-id").unwrap_err();
        assert!(e.to_string().contains("not in the event log"), "{e}");
        // Relabelled with the runtime type, the digest is recomputed: replay fails.
        relabelled[0].event_type = RUNTIME_EVENT_TYPE;
        let e = check_rtmr3(&relabelled, &rtmr3).unwrap_err();
        assert!(e.to_string().contains("event:app-id"), "{e}");
        // A stripped digest is recomputed too, so the payload must be the measured one.
        relabelled[0].digest.clear();
        assert!(check_rtmr3(&relabelled, &rtmr3).is_err());
    }

    #[test]
    fn security_duplicate_pinned_name_is_ambiguous() {
        let events = vec![
            Event::runtime("app-id", b"a"),
            Event::runtime("app-id", b"b"),
        ];
        check_rtmr3(&events, &replay(&events, 3).unwrap()).unwrap();
        let e = pinned_event(&events, "app-id").unwrap_err();
        assert!(e.to_string().contains("ambiguous"), "{e}");
        assert_eq!(
            pinned_event(&events[..1], "app-id").unwrap().event_payload,
            b"a"
        );
    }

    #[test]
    fn security_unknown_event_version_is_refused() {
        let mut e = Event::runtime("app-id", b"a");
        e.version = 3;
        let err = replay(std::slice::from_ref(&e), 3).unwrap_err();
        assert!(
            err.to_string().contains("unknown runtime-event version 3"),
            "{err}"
        );
        e.digest.clear();
        assert!(replay(std::slice::from_ref(&e), 3).is_err());
    }

    #[test]
    fn v2_digests_are_over_canonical_json() {
        let mut e = Event::runtime("app-id", b"\x01");
        e.version = 2;
        e.digest.clear(); // stripped, as dstack sends runtime events
        let rtmr = replay(std::slice::from_ref(&e), 3).unwrap();
        let canonical = br#"{"name":"app-id","payload":"01","type":134217729}"#;
        let want = crate::sha384(&[&[0u8; 48], &crate::sha384(&[canonical])]);
        assert_eq!(rtmr, want);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["version"], 2, "written only when not 1");
        assert!(serde_json::to_value(Event::runtime("a", b""))
            .unwrap()
            .get("version")
            .is_none());
    }

    #[test]
    fn json_shape_is_dstacks() {
        let e = Event::runtime("app-id", &[0xab]);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["event_type"], 134217729);
        assert_eq!(json["event_payload"], "ab");
        assert_eq!(json["digest"].as_str().unwrap().len(), 96);
    }
}
