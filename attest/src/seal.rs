//! The TEE-derived sealer: AES-256-GCM (the item's name as associated data) under a key
//! that only this measured TEE can obtain.
//!
//! - dstack: the key the dstack KMS derives for this app (`GetKey`), via the guest agent;
//!   it survives restarts and upgrades the app's KMS policy allows.
//! - simulator: HKDF over the seed and the simulated measurements (MRTD, RTMR0-3). It changes
//!   when the measurements change, as a TEE key would, but anyone with the seed can derive it:
//!   the sealer's kind is `simulator`, and the gateway says it is insecure.
//! - bare TDX (configfs-tsm) has no sealing key source; the gateway refuses to start there
//!   unless the development sealer is chosen explicitly.

use crate::simulator::SimulatorConfig;
use crate::AttestError;
use aws_lc_rs::hkdf;
use gatehouse_store::AesGcmSealer;

/// The path the sealing key is requested under (versioned: a new path is a new key).
pub const DSTACK_KEY_PATH: &str = "gatehouse/sealing/v1";

fn expand(salt: &[u8], ikm: &[u8], info: &[u8]) -> Result<[u8; 32], AttestError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk
        .expand(&info, hkdf::HKDF_SHA256)
        .map_err(|_| AttestError::Seal("HKDF expand".into()))?;
    let mut key = [0u8; 32];
    okm.fill(&mut key)
        .map_err(|_| AttestError::Seal("HKDF fill".into()))?;
    Ok(key)
}

/// A sealer under the key the dstack KMS derives for this app.
pub async fn from_dstack(agent: &crate::dstack::DstackAgent) -> Result<AesGcmSealer, AttestError> {
    let root = agent.get_key(DSTACK_KEY_PATH, "sealing").await?;
    if root.len() < 32 {
        return Err(AttestError::Seal(format!(
            "the KMS key is {} bytes, need 32",
            root.len()
        )));
    }
    let key = expand(b"gatehouse-seal-dstack-v1", &root, b"aes-256-gcm")?;
    AesGcmSealer::from_key(&key, "tee").map_err(|e| AttestError::Seal(e.to_string()))
}

/// A sealer bound to the simulated measurements (insecure: the seed is enough to derive it).
pub fn from_simulator(config: &SimulatorConfig) -> Result<AesGcmSealer, AttestError> {
    let rtmr3 = crate::eventlog::replay(&config.events, 3)?;
    let mut ikm = config.seed.to_vec();
    ikm.extend_from_slice(&config.mrtd);
    for r in &config.rtmrs {
        ikm.extend_from_slice(r);
    }
    ikm.extend_from_slice(&rtmr3);
    let key = expand(b"gatehouse-seal-simulator-v1", &ikm, b"aes-256-gcm")?;
    AesGcmSealer::from_key(&key, "simulator").map_err(|e| AttestError::Seal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_store::Sealer;

    #[test]
    fn simulator_key_follows_the_measurements() {
        let config = SimulatorConfig::default();
        let a = from_simulator(&config).unwrap();
        let b = from_simulator(&config).unwrap();
        let sealed = a.seal("certs/x", b"secret").unwrap();
        assert_eq!(
            *b.unseal("certs/x", &sealed).unwrap(),
            b"secret",
            "same TD, same key"
        );
        assert!(b.unseal("certs/y", &sealed).is_err(), "the name is bound");
        assert_eq!(a.kind(), "simulator");

        let upgraded = SimulatorConfig {
            mrtd: [1; 48],
            ..config.clone()
        };
        assert!(from_simulator(&upgraded)
            .unwrap()
            .unseal("certs/x", &sealed)
            .is_err());
        let other_app = SimulatorConfig {
            events: vec![crate::eventlog::Event::runtime("app-id", b"other")],
            ..config
        };
        assert!(from_simulator(&other_app)
            .unwrap()
            .unseal("certs/x", &sealed)
            .is_err());
    }
}
