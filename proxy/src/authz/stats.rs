//! Counters of authorization outcomes per rule (and `default`), shown under `authorization` in the
//! admin `/stats`. One instance lives for the whole process, so a policy update does not reset
//! them; a rule that disappears keeps its last counts.

use super::{Action, Decision};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct AuthzStats {
    rules: RwLock<BTreeMap<String, Arc<RuleCounters>>>,
}

#[derive(Debug, Default, Serialize)]
pub struct RuleCounters {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
}

impl AuthzStats {
    pub fn record(&self, decision: &Decision) {
        let counters = self.counters(&decision.rule);
        let counter = match decision.action {
            Action::Allow => &counters.allowed,
            Action::Deny => &counters.denied,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn counters(&self, rule: &str) -> Arc<RuleCounters> {
        if let Ok(rules) = self.rules.read() {
            if let Some(c) = rules.get(rule) {
                return c.clone();
            }
        }
        match self.rules.write() {
            Ok(mut rules) => rules.entry(rule.to_string()).or_default().clone(),
            // A poisoned lock only loses counts, never a decision.
            Err(_) => Arc::default(),
        }
    }

    /// `{rule: {allowed, denied}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let rules = match self.rules.read() {
            Ok(rules) => rules.clone(),
            Err(_) => BTreeMap::new(),
        };
        serde_json::to_value(rules).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_rule_and_action() {
        let stats = AuthzStats::default();
        let d = |action, rule: &str| Decision {
            action,
            rule: rule.into(),
        };
        stats.record(&d(Action::Allow, "a"));
        stats.record(&d(Action::Allow, "a"));
        stats.record(&d(Action::Deny, "default"));
        let json = stats.to_json();
        assert_eq!(json["a"]["allowed"], 2);
        assert_eq!(json["a"]["denied"], 0);
        assert_eq!(json["default"]["denied"], 1);
    }
}
