//! RFC 2136 dynamic updates signed with TSIG (RFC 8945), over TCP to the zone's primary.
//!
//! Messages are built with `hickory-proto` and signed with its `TSigner`; the transport is a
//! plain length-prefixed TCP exchange (RFC 1035 §4.2.2), one connection per change, bounded
//! by a timeout. Responses to signed updates must be signed with the same key.

use crate::wire::{self, fqdn, hint, random_id, tsig_refusal};
use crate::{zone_of, CaaRecord, DnsError, DnsProvider};
use base64::Engine;
use gatehouse_caa::plan::Step;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{CAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// TTL of the records we write: short, so a removed challenge or a changed CAA is not cached.
const TTL: u32 = 60;
/// Seconds of clock difference the server may accept (RFC 8945 recommends 300).
const FUDGE: u16 = 300;

/// A TSIG key: its name as configured on the server, algorithm and secret.
#[derive(Clone)]
pub struct TsigKey {
    /// The key's name (`gatehouse-update`).
    pub name: String,
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub algorithm: String,
    /// The decoded secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// A key from the base64 secret as `tsig-keygen` / `keymgr` print it.
    pub fn from_base64(name: &str, algorithm: &str, secret_b64: &str) -> Result<TsigKey, DnsError> {
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_b64.trim())
            .map_err(|e| {
                DnsError::Config(format!("TSIG key {name:?}: secret is not base64: {e}"))
            })?;
        if secret.is_empty() {
            return Err(DnsError::Config(format!("TSIG key {name:?}: empty secret")));
        }
        let key = TsigKey {
            name: name.to_owned(),
            algorithm: algorithm.to_ascii_lowercase(),
            secret,
        };
        key.signer()?;
        Ok(key)
    }

    fn signer(&self) -> Result<TSigner, DnsError> {
        let algorithm = match self.algorithm.as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(DnsError::Config(format!(
                    "TSIG key {:?}: algorithm {other:?} unsupported (use hmac-sha256, hmac-sha384 or hmac-sha512)",
                    self.name
                )))
            }
        };
        let name = Name::from_ascii(&self.name)
            .map_err(|e| DnsError::Config(format!("TSIG key name {:?}: {e}", self.name)))?;
        TSigner::new(self.secret.clone(), algorithm, name, FUDGE)
            .map_err(|e| DnsError::Config(format!("TSIG key {:?}: {e}", self.name)))
    }
}

/// A zone primary taking TSIG-signed RFC 2136 updates.
#[derive(Debug, Clone)]
pub struct Rfc2136 {
    server: SocketAddr,
    zones: Vec<String>,
    key: Option<TsigKey>,
    timeout: Duration,
}

impl Rfc2136 {
    /// Updates go to `server` for names inside `zones`, signed with `key` (`None` only for
    /// servers that authorise by address, which production setups should not do).
    pub fn new(
        server: SocketAddr,
        zones: Vec<String>,
        key: Option<TsigKey>,
        timeout: Duration,
    ) -> Result<Rfc2136, DnsError> {
        if let Some(k) = &key {
            k.signer()?;
        }
        if zones.is_empty() {
            return Err(DnsError::Config("rfc2136: no zones configured".into()));
        }
        Ok(Rfc2136 {
            server,
            zones,
            key,
            timeout,
        })
    }

    fn zone(&self, name: &str) -> Result<Name, DnsError> {
        let zone = zone_of(name, &self.zones).ok_or_else(|| DnsError::NoZone {
            name: name.to_owned(),
            zones: self.zones.join(", "),
        })?;
        fqdn(zone)
    }

    /// Sends one update whose update section is `records` (already classed for add/delete).
    async fn update(&self, zone: Name, records: Vec<Record>) -> Result<(), DnsError> {
        let mut msg = wire::update_request(&zone, random_id());
        msg.authorities = records;
        let response = self.signed_exchange(msg).await?;
        let rcode = response.metadata.response_code;
        if rcode != ResponseCode::NoError {
            return Err(DnsError::Rejected {
                server: self.server.to_string(),
                zone: zone.to_string(),
                rcode: rcode.to_string(),
                hint: hint(rcode),
            });
        }
        Ok(())
    }

    /// Sends `msg` signed with the key (when one is configured) and returns the reply once it
    /// answers this question and, when signed, its signature verifies.
    async fn signed_exchange(&self, mut msg: Message) -> Result<Message, DnsError> {
        let mut verifier = None;
        if let Some(key) = &self.key {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            verifier = msg
                .finalize(&key.signer()?, now)
                .map_err(|e| DnsError::Config(format!("TSIG signing: {e}")))?;
        }
        let bytes = self.exchange(&msg).await?;
        let response = wire::read_reply(&msg, &bytes).map_err(|r| self.bad(r))?;
        let Some(key) = &self.key else {
            return Ok(response);
        };
        // The reply's signature first: a refusal that does not verify (servers send
        // BADKEY/BADSIG unsigned, RFC 8945 §5.3.2) is reported as the server's word only.
        let verified = match (&mut verifier, response.signature()) {
            (Some(v), Some(_)) => v.verify(&bytes).map(drop).map_err(|e| e.to_string()),
            _ => Err("unsigned".to_owned()),
        };
        let refused = |why: String| DnsError::TsigRefused {
            server: self.server.to_string(),
            key: key.name.clone(),
            why,
        };
        match (verified, tsig_refusal(&response)) {
            (Ok(()), None) => Ok(response),
            (Ok(()), Some(why)) => Err(refused(why)),
            (Err(_), Some(why)) => {
                Err(refused(format!("{why} (in an unsigned reply: unverified)")))
            }
            (Err(e), None) => Err(self.bad(format!(
                "response TSIG does not verify with key {:?}: {e}",
                key.name
            ))),
        }
    }

    /// A query (no recursion) for `name`/`rtype`, signed and its reply verified like an update
    /// when a key is configured: an on-path party cannot make the records we read differ from
    /// the zone's. The answer section; NXDOMAIN = empty.
    async fn query(&self, name: &str, rtype: RecordType) -> Result<Vec<Record>, DnsError> {
        let name = fqdn(name)?;
        let mut msg = Message::new(random_id(), MessageType::Query, OpCode::Query);
        let mut q = Query::new();
        q.set_name(name.clone()).set_query_type(rtype);
        msg.queries.push(q);
        let response = self.signed_exchange(msg).await?;
        match response.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => Ok(response.answers),
            rcode => Err(DnsError::Rejected {
                server: self.server.to_string(),
                zone: name.to_string(),
                rcode: rcode.to_string(),
                hint: hint(rcode),
            }),
        }
    }

    async fn exchange(&self, msg: &Message) -> Result<Vec<u8>, DnsError> {
        wire::exchange(self.server, msg, self.timeout).await
    }

    fn bad(&self, reason: String) -> DnsError {
        DnsError::BadResponse {
            server: self.server.to_string(),
            reason,
        }
    }
}

fn txt(name: &str, value: &str) -> Result<Record, DnsError> {
    Ok(Record::from_rdata(
        fqdn(name)?,
        TTL,
        RData::TXT(TXT::new(vec![value.to_owned()])),
    ))
}

fn caa(name: &str, r: &CaaRecord) -> Result<Record, DnsError> {
    // `CAA` is non-exhaustive: start from any value and set the raw fields, which is what
    // goes on the wire (our own parser judges values; hickory's is not trusted for that).
    let mut data = CAA::new_issue(false, None, Vec::new());
    data.issuer_critical = r.flags & 0x80 != 0;
    data.reserved_flags = r.flags & 0x7f;
    data.tag = r.tag.clone();
    data.value = r.value.clone();
    Ok(Record::from_rdata(fqdn(name)?, TTL, RData::CAA(data)))
}

/// RFC 2136 §2.5.4: delete an RR from an RRset = class NONE, TTL 0, the RR's data.
fn as_delete(mut r: Record) -> Record {
    r.dns_class = DNSClass::NONE;
    r.ttl = 0;
    r
}

#[async_trait::async_trait]
impl DnsProvider for Rfc2136 {
    fn describe(&self) -> String {
        match &self.key {
            Some(k) => format!("rfc2136 {} (TSIG key {})", self.server, k.name),
            None => format!("rfc2136 {} (unsigned)", self.server),
        }
    }

    async fn add_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        self.update(self.zone(name)?, vec![txt(name, value)?]).await
    }

    async fn remove_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        self.update(self.zone(name)?, vec![as_delete(txt(name, value)?)])
            .await
    }

    async fn list_caa(&self, name: &str) -> Result<Vec<CaaRecord>, DnsError> {
        let wanted = fqdn(name)?;
        Ok(self
            .query(name, RecordType::CAA)
            .await?
            .into_iter()
            .filter(|r| r.name == wanted)
            .filter_map(|r| match r.data {
                RData::CAA(c) => Some(CaaRecord {
                    flags: (u8::from(c.issuer_critical) << 7) | c.reserved_flags,
                    tag: c.tag,
                    value: c.value,
                }),
                _ => None,
            })
            .collect())
    }

    /// All steps in one update message: the server applies it atomically.
    async fn apply_caa(&self, name: &str, steps: &[Step]) -> Result<(), DnsError> {
        let records = steps
            .iter()
            .map(|s| match s {
                Step::Add(r) => caa(name, r),
                Step::Remove(r) => caa(name, r).map(as_delete),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.update(self.zone(name)?, records).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_never_printed() {
        let k = TsigKey::from_base64("k1", "hmac-sha256", "c2VjcmV0c2VjcmV0").unwrap();
        assert!(!format!("{k:?}").contains("c2VjcmV0"));
        assert!(!format!("{k:?}").contains("secret\""));
        let e = TsigKey::from_base64("k1", "hmac-md5", "c2VjcmV0").unwrap_err();
        assert!(e.to_string().contains("hmac-md5"), "{e}");
        let e = TsigKey::from_base64("k1", "hmac-sha256", "not base64!").unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
    }

    #[test]
    fn names_outside_the_zones_are_refused_before_any_traffic() {
        let p = Rfc2136::new(
            "127.0.0.1:1".parse().unwrap(),
            vec!["gw.test".into()],
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(matches!(
            p.zone("a.other.test"),
            Err(DnsError::NoZone { .. })
        ));
        assert_eq!(
            p.zone("_acme-challenge.gw.test").unwrap().to_string(),
            "gw.test."
        );
    }
}
