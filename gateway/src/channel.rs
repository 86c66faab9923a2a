//! The encrypted channel's keys in the running gateway (crate `gatehouse-channel`): loaded or
//! made at start from the store, sealed; checked every minute for rotation (the store's
//! compare-and-swap makes one node of a cluster rotate and the others read its keys); the
//! public keys published in the attestation claims. The requests themselves are served by
//! [`crate::http::channel`].

use crate::app::StartError;
use crate::conn::Shared;
use arc_swap::ArcSwap;
use gatehouse_attest::bundle::{ChannelClaim, CHANNEL_PATH};
use gatehouse_channel::{Gate, KeySet, Rotation};
use gatehouse_config::ChannelConfig;
use gatehouse_store::{Sealer, Store};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The channel's keys and replay memory.
pub struct Channel {
    keys: ArcSwap<KeySet>,
    gate: Gate,
    /// `[proxy.http.channel]`.
    pub config: ChannelConfig,
    store: Arc<dyn Store>,
    sealer: Arc<dyn Sealer>,
    /// When the keys were last read because a request named an unknown id.
    asked: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Channel(key {})", self.keys.load().current().id)
    }
}

impl Channel {
    fn rotation(&self) -> Rotation {
        Rotation {
            every: self.config.rotate,
            grace: self.config.grace,
        }
    }

    /// Loads (or makes) the keys, publishes the channel in `shared` and starts the rotation
    /// loop on the current runtime.
    pub async fn start(
        config: &ChannelConfig,
        store: Arc<dyn Store>,
        sealer: Arc<dyn Sealer>,
        shared: &Shared,
    ) -> Result<Arc<Channel>, StartError> {
        let rotation = Rotation {
            every: config.rotate,
            grace: config.grace,
        };
        let keys = KeySet::load(
            store.as_ref(),
            sealer.as_ref(),
            rotation,
            gatehouse_attest::unix_now(),
        )
        .await
        .map_err(|e| StartError::Channel(e.to_string()))?;
        tracing::info!(
            key_id = keys.current().id,
            path = CHANNEL_PATH,
            "encrypted channel on (key in the attestation claims)"
        );
        let channel = Arc::new(Channel {
            keys: ArcSwap::from_pointee(keys),
            gate: Gate::new(config.replay_window.as_secs()),
            config: config.clone(),
            store,
            sealer,
            asked: Mutex::new(None),
        });
        let _ = shared.channel.set(channel.clone());
        let every = (config.rotate / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let weak = Arc::downgrade(&channel);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(channel) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = channel.reload().await {
                    tracing::warn!("encrypted channel keys not refreshed: {e}");
                }
            }
        });
        Ok(channel)
    }

    /// Reads the keys again, rotating them first when due.
    async fn reload(&self) -> Result<(), gatehouse_channel::ChannelError> {
        let now = gatehouse_attest::unix_now();
        let keys = KeySet::load(
            self.store.as_ref(),
            self.sealer.as_ref(),
            self.rotation(),
            now,
        )
        .await?;
        if keys.version() != self.keys.load().version() {
            tracing::info!(key_id = keys.current().id, "encrypted channel keys changed");
            self.keys.store(Arc::new(keys));
        }
        Ok(())
    }

    /// The keys now; when `id` is not among them (another node rotated a moment ago), read
    /// from the store first, at most once a second.
    pub async fn keys_for(&self, id: u8) -> Arc<KeySet> {
        let now = gatehouse_attest::unix_now();
        let keys = self.keys.load_full();
        if keys.get(id, now).is_some() {
            return keys;
        }
        let due = {
            let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
            let due = asked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                *asked = Some(Instant::now());
            }
            due
        };
        if due {
            if let Err(e) = self.reload().await {
                tracing::warn!("encrypted channel keys not read: {e}");
            }
        }
        self.keys.load_full()
    }

    /// The replay window and memory.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The public keys as `application/ohttp-keys`.
    pub fn ohttp_keys(&self) -> Result<Vec<u8>, gatehouse_channel::ChannelError> {
        self.keys.load().ohttp_keys(gatehouse_attest::unix_now())
    }

    /// The claim the attestation bundle carries.
    pub fn claim(&self) -> Option<ChannelClaim> {
        use base64::Engine;
        match self.ohttp_keys() {
            Ok(list) => Some(ChannelClaim {
                ohttp_keys: base64::engine::general_purpose::STANDARD.encode(list),
                path: CHANNEL_PATH.into(),
            }),
            Err(e) => {
                tracing::error!("encrypted channel keys left out of the claims: {e}");
                None
            }
        }
    }
}
