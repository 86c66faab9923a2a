//! One DNS exchange over TCP (RFC 1035 §4.2.2 framing), bounded by a timeout, and how a
//! reply is read (public for the fuzz targets: every byte of a reply comes from outside).

use crate::DnsError;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `msg` to `server` and returns the raw response.
pub(crate) async fn exchange(
    server: SocketAddr,
    msg: &Message,
    timeout: Duration,
) -> Result<Vec<u8>, DnsError> {
    let wire = msg
        .to_vec()
        .map_err(|e| DnsError::Config(format!("encoding the DNS message: {e}")))?;
    let io = |reason: String| DnsError::Io {
        server: server.to_string(),
        reason,
    };
    let talk = async {
        let mut s = TcpStream::connect(server).await?;
        let mut framed = Vec::with_capacity(wire.len() + 2);
        framed.extend_from_slice(&(wire.len() as u16).to_be_bytes());
        framed.extend_from_slice(&wire);
        s.write_all(&framed).await?;
        let len = s.read_u16().await? as usize;
        let mut body = vec![0; len];
        s.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    match tokio::time::timeout(timeout, talk).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(io(e.to_string())),
        Err(_) => Err(io(format!("no answer within {timeout:?}"))),
    }
}

/// An UPDATE for `zone` (its zone section: `zone` SOA IN) with message id `id`; the caller
/// fills the update section.
pub fn update_request(zone: &Name, id: u16) -> Message {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Update);
    let mut z = Query::new();
    z.set_name(zone.clone())
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    msg.queries.push(z);
    msg
}

/// Reads a reply to `request` from its wire bytes: a DNS message that is a response to this
/// request (see [`check_pairs`]), or why not.
pub fn read_reply(request: &Message, bytes: &[u8]) -> Result<Message, String> {
    let reply = Message::from_vec(bytes).map_err(|e| e.to_string())?;
    check_pairs(request, &reply)?;
    Ok(reply)
}

/// The TSIG error the server reported, if the reply carries one.
pub fn tsig_refusal(response: &Message) -> Option<String> {
    let tsig = response.signature()?;
    let error = tsig.data.error.as_ref()?;
    Some(match error {
        TsigError::BadKey => "BADKEY: the server does not know this key".into(),
        TsigError::BadSig => "BADSIG: the signature did not verify (wrong secret?)".into(),
        TsigError::BadTime => "BADTIME: clocks differ by more than the fudge".into(),
        other => format!("{other:?}"),
    })
}

/// Asks `server` (no recursion) for `name`/`rtype`; the answer section. NXDOMAIN = empty.
pub(crate) async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Vec<Record>, DnsError> {
    let mut msg = Message::new(random_id(), MessageType::Query, OpCode::Query);
    let mut q = Query::new();
    q.set_name(name.clone()).set_query_type(rtype);
    msg.queries.push(q);
    let bytes = exchange(server, &msg, timeout).await?;
    let response = read_reply(&msg, &bytes).map_err(|reason| DnsError::BadResponse {
        server: server.to_string(),
        reason,
    })?;
    match response.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(response.answers),
        rcode => Err(DnsError::Rejected {
            server: server.to_string(),
            zone: name.to_string(),
            rcode: rcode.to_string(),
            hint: hint(rcode),
        }),
    }
}

/// Whether `response` answers `request`: a response, the same id, and the same question (name
/// compared case-insensitively, type and class), so an answer for another question on the
/// same connection is never taken for this one.
pub fn check_pairs(request: &Message, response: &Message) -> Result<(), String> {
    if response.metadata.message_type != MessageType::Response {
        return Err("the reply is not a response".into());
    }
    if response.metadata.id != request.metadata.id {
        return Err("response id does not match the query".into());
    }
    let same = response.queries.len() == request.queries.len()
        && response.queries.iter().zip(&request.queries).all(|(a, b)| {
            // hickory's `Name` equality ignores case
            a.name() == b.name()
                && a.query_type() == b.query_type()
                && a.query_class() == b.query_class()
        });
    match same {
        true => Ok(()),
        false => Err("the response's question is not the query's".into()),
    }
}

/// What usually causes an error code.
pub(crate) fn hint(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::Refused => " (the server's ACL does not allow this; for updates: this key may not update the zone)",
        ResponseCode::NotAuth => " (the server is not the primary for this zone, or the update is not authorised: unsigned, or a key its ACL does not allow)",
        ResponseCode::NotZone => " (the name is outside the zone)",
        ResponseCode::ServFail => " (the server failed; see its log)",
        _ => "",
    }
}

/// `name` as an absolute DNS name.
pub(crate) fn fqdn(name: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_ascii(name.trim_end_matches('.'))
        .map_err(|e| DnsError::Config(format!("{name:?} is not a DNS name: {e}")))?;
    n.set_fqdn(true);
    Ok(n)
}

/// A message id. It only pairs a response with its request on a fresh TCP connection, so
/// unpredictability is not needed; a clock-derived value avoids reusing ids across retries.
pub(crate) fn random_id() -> u16 {
    (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0)
        & 0xffff) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_for(name: &str, rtype: RecordType) -> Message {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        let mut q = Query::new();
        q.set_name(fqdn(name).unwrap()).set_query_type(rtype);
        m.queries.push(q);
        m
    }

    /// Issue 18 §5: a reply with the right id but another question is not an answer.
    #[test]
    fn cert_lifecycle_replies_must_carry_the_query_question() {
        let request = query_for("gw.test", RecordType::CAA);
        let mut reply = request.clone();
        reply.metadata.message_type = MessageType::Response;
        assert_eq!(check_pairs(&request, &reply), Ok(()));
        let mut upper = reply.clone();
        upper.queries = query_for("GW.test", RecordType::CAA).queries;
        assert_eq!(
            check_pairs(&request, &upper),
            Ok(()),
            "names compare case-insensitively"
        );
        let mut other = reply.clone();
        other.queries = query_for("evil.test", RecordType::CAA).queries;
        assert!(check_pairs(&request, &other)
            .unwrap_err()
            .contains("question"));
        let mut other_type = reply.clone();
        other_type.queries = query_for("gw.test", RecordType::TXT).queries;
        assert!(check_pairs(&request, &other_type).is_err());
        assert!(check_pairs(&request, &request)
            .unwrap_err()
            .contains("not a response"));
        let mut wrong_id = reply.clone();
        wrong_id.metadata.id = 8;
        assert!(check_pairs(&request, &wrong_id).unwrap_err().contains("id"));
    }
}
