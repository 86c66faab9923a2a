//! A gateway node on the etcd backend joining its cluster: the join listener bound, the
//! cluster sealing key obtained (restored, founded, or handed over by an attested member;
//! see `gatehouse_cluster::key`), then served to the nodes that join later.

use crate::acme::State;
use crate::app::StartError;
use crate::attestation::Attestor;
use gatehouse_cluster::{Attested, Obtain};
use gatehouse_config::Config;
use std::sync::Arc;

/// What joining gave: the address other nodes join through.
#[derive(Debug)]
pub struct Joined {
    /// The advertised join listener (`host:port`).
    pub join: String,
}

/// Binds `[cluster] listen`, obtains the cluster key and replaces `state`'s sealer with it
/// (every shared secret is sealed under the cluster key; this node's own TEE sealer keeps
/// only its copy of that key), then serves joins for as long as the runtime runs.
pub async fn join(
    config: &Config,
    state: &mut State,
    attestor: &Attestor,
    node: &str,
) -> Result<Joined, StartError> {
    let c = &config.cluster;
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .map_err(|e| StartError::Acme(format!("cluster.listen {}: {e}", c.listen)))?;
    let bound = listener.local_addr()?;
    let advertise = match &c.advertise {
        Some(a) => a.clone(),
        None if !bound.ip().is_unspecified() => bound.to_string(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}:{}", host.trim(), bound.port())
        }
    };
    let policy = match &c.policy_file {
        Some(path) => gatehouse_attest::policy::Policy::load(path)
            .map_err(|e| StartError::Tee(format!("cluster.policy_file: {e}")))?,
        None => gatehouse_cluster::join::own_policy(attestor.provider().as_ref()).await?,
    };
    let cert = gatehouse_attest::ratls_cert::RotatingCert::new(
        attestor.provider().clone(),
        "gatehouse-cluster-join",
    )
    .await
    .map_err(|e| StartError::Tee(format!("cluster RA-TLS certificate: {e}")))?;
    let attested = Arc::new(Attested {
        policy,
        collateral: attestor.collateral_source().clone(),
        cert,
    });
    let key = Obtain {
        store: state.store.as_ref(),
        local: state.sealer.as_ref(),
        dir: &state.dir,
        node,
        attested: &attested,
        timeout: c.join_timeout,
    }
    .run()
    .await?;
    state.sealer = Arc::new(key.sealer()?);
    crate::upstream::own::register(bound);
    println!(
        "gatehouse: cluster join listener on {bound} (mutual RA-TLS), advertised as {advertise}"
    );
    tokio::spawn(gatehouse_cluster::join::serve(
        listener,
        Arc::new(key),
        attested,
    ));
    Ok(Joined { join: advertise })
}

/// For commands that read the shared store beside a running node: replaces `state`'s sealer
/// with the cluster key from this node's sealed copy (they do not join).
pub fn use_local_copy(config: &Config, state: &mut State) -> Result<(), StartError> {
    if config.store.backend != gatehouse_config::StoreBackend::Etcd {
        return Ok(());
    }
    let key = gatehouse_cluster::ClusterKey::load(&state.dir, state.sealer.as_ref())?.ok_or_else(
        || {
            StartError::Tee(format!(
                "no cluster key in {} (this node never joined the cluster)",
                state.dir.display()
            ))
        },
    )?;
    state.sealer = Arc::new(key.sealer()?);
    Ok(())
}
