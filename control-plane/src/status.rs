//! What the control plane reports about itself: the applied config version, the last reload error
//! and recent NACKs. Published in a `watch` channel so tests and the admin port's `/status`
//! (`admin.rs`, which serializes it as JSON) read it without locking the serving path.
use std::collections::VecDeque;

/// How many NACKs are kept; older ones are dropped first.
pub const MAX_NACKS: usize = 32;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneStatus {
    /// The `system_version` of the snapshot being served; 0 until the first config is loaded.
    pub config_version: u64,
    /// The error of the last reload attempt, cleared by the next successful one.
    pub last_error: Option<String>,
    /// What the source left out of the applied config, with why (Kubernetes: invalid or
    /// conflicting TrafficPolicies). Empty for the YAML file, which applies whole or not at all.
    pub skipped: Vec<String>,
    /// The most recent NACKs, oldest first.
    pub nacks: Vec<NackRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NackRecord {
    pub node_id: String,
    pub type_url: String,
    pub nonce: String,
    pub message: String,
    /// When it was received (unix milliseconds), so an operator can tell an old NACK from a
    /// current one.
    pub received_unix_ms: u64,
}

impl ControlPlaneStatus {
    pub fn record_nack(&mut self, nack: NackRecord) {
        let mut nacks = VecDeque::from(std::mem::take(&mut self.nacks));
        nacks.push_back(nack);
        while nacks.len() > MAX_NACKS {
            nacks.pop_front();
        }
        self.nacks = nacks.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_nacks() {
        let mut status = ControlPlaneStatus::default();
        for i in 0..40 {
            status.record_nack(NackRecord {
                node_id: "n".into(),
                type_url: "t".into(),
                nonce: i.to_string(),
                message: "m".into(),
                received_unix_ms: 0,
            });
        }
        assert_eq!(status.nacks.len(), MAX_NACKS);
        assert_eq!(status.nacks[0].nonce, "8");
        assert_eq!(status.nacks[31].nonce, "39");
    }
}
