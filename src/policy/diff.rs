//! What an import changes: rules compared by their stable id.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::rule::Rule;

/// Rules added, changed (old, new) and removed between two rule sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDiff {
    /// In the new set only (new set's order).
    pub added: Vec<Rule>,
    /// In both with any field or source (file, line) different: (old, new), new set's order.
    pub changed: Vec<(Rule, Rule)>,
    /// In the old set only (old set's order).
    pub removed: Vec<Rule>,
}

impl RuleDiff {
    /// Whether applying the new set would change nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Compares two rule sets by id.
pub fn diff(old: &[Rule], new: &[Rule]) -> RuleDiff {
    let old_by_id: HashMap<&str, &Rule> = old.iter().map(|r| (r.id.as_str(), r)).collect();
    let new_by_id: HashMap<&str, &Rule> = new.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut out = RuleDiff::default();
    for rule in new {
        match old_by_id.get(rule.id.as_str()) {
            None => out.added.push(rule.clone()),
            Some(previous) if *previous != rule => {
                out.changed.push(((*previous).clone(), rule.clone()))
            }
            Some(_) => {}
        }
    }
    out.removed = old
        .iter()
        .filter(|r| !new_by_id.contains_key(r.id.as_str()))
        .cloned()
        .collect();
    out
}
