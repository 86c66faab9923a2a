//! One DNS exchange over TCP (RFC 1035 §4.2.2 framing), bounded by a timeout.

use crate::DnsError;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
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
    let response = Message::from_vec(&bytes).map_err(|e| DnsError::BadResponse {
        server: server.to_string(),
        reason: e.to_string(),
    })?;
    if response.metadata.id != msg.metadata.id {
        return Err(DnsError::BadResponse {
            server: server.to_string(),
            reason: "response id does not match the query".into(),
        });
    }
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
