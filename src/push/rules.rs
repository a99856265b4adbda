//! A user's push rules: what they changed ([`UserRules`], stored as JSON by
//! the `push_rules` writer of the user) on top of ruma's server defaults,
//! and the [`RulesetCache`] every instance keeps of the resulting rulesets.
//!
//! Rules are placed as Synapse places them (`priority_class`, then
//! priority): a user's rules of a kind come before the defaults of that
//! kind, except `.m.rule.master`, which stays first. Ruma's
//! [`Ruleset::insert`] implements that placement and `before`/`after`; this
//! module keeps the user's rules as ruma leaves them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use ruma::push::{
    Action, AnyPushRuleRef, ConditionalPushRule, InsertPushRuleError, NewConditionalPushRule,
    NewPatternedPushRule, NewPushRule, NewSimplePushRule, RemovePushRuleError, RuleKind, Ruleset,
};
use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::storage::{push_rules as stored, StorageResult};
use crate::streams::notifier::Notifier;
use crate::streams::push_rules::PUSH_RULES_STREAM;

/// The kinds of rule a ruleset has, in the order they are evaluated.
pub const RULE_KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// Users whose rulesets are cached before the cache starts over.
const MAX_CACHED_USERS: usize = 100_000;

/// Why a change to a user's rules is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RuleError {
    /// Not a kind of rule (`override`, `content`, `room`, `sender`, `underride`).
    #[error("unknown push rule kind `{0}`")]
    UnknownKind(String),
    /// A rule id with `/` or `\`, one starting with `.` for a new rule, or
    /// one that is not the room or user id a room or sender rule needs.
    #[error("invalid rule id: {0}")]
    InvalidRuleId(String),
    /// The rule does not exist.
    #[error("no push rule {0}")]
    NotFound(String),
    /// `before` or `after` names no rule of the user's, or places the rule
    /// relative to a server-default rule (Synapse's 400 `M_UNKNOWN`).
    #[error("{0}")]
    Placement(String),
    /// The body is not what the rule needs.
    #[error("{0}")]
    BadJson(String),
    /// Server-default rules may not be deleted.
    #[error("server-default rules cannot be deleted")]
    ServerDefault,
}

/// What a user changed of their push rules: their own rules (a ruleset of
/// only them, each kind in priority order) and their changes to the
/// server-default rules, by kind and rule id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserRules {
    #[serde(default)]
    pub own: Ruleset,
    #[serde(default)]
    pub defaults: BTreeMap<String, BTreeMap<String, DefaultChange>>,
}

/// A user's change to one server-default rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DefaultChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<Action>>,
}

/// A change to a user's rules, as the push rules endpoints ask for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleChange {
    /// `PUT /pushrules/global/{kind}/{ruleId}` with its body.
    Put {
        kind: String,
        rule_id: String,
        body: Value,
        before: Option<String>,
        after: Option<String>,
    },
    Delete {
        kind: String,
        rule_id: String,
    },
    SetEnabled {
        kind: String,
        rule_id: String,
        enabled: bool,
    },
    SetActions {
        kind: String,
        rule_id: String,
        actions: Value,
    },
}

/// `kind` as ruma's rule kind, if it is one of the spec's five.
pub fn parse_kind(kind: &str) -> Result<RuleKind, RuleError> {
    match kind {
        "override" => Ok(RuleKind::Override),
        "content" => Ok(RuleKind::Content),
        "room" => Ok(RuleKind::Room),
        "sender" => Ok(RuleKind::Sender),
        "underride" => Ok(RuleKind::Underride),
        other => Err(RuleError::UnknownKind(other.to_owned())),
    }
}

/// Refuses rule ids with `/` or `\` (the spec's words for `PUT`).
pub fn check_rule_id(rule_id: &str) -> Result<(), RuleError> {
    if rule_id.is_empty() || rule_id.contains('/') || rule_id.contains('\\') {
        return Err(RuleError::InvalidRuleId(
            "rule ids may not be empty or contain slashes".into(),
        ));
    }
    Ok(())
}

/// Actions as Synapse takes them (`check_actions`): `notify`,
/// `dont_notify`, `coalesce`, or `{"set_tweak": ...}` objects.
pub fn parse_actions(actions: &Value) -> Result<Vec<Action>, RuleError> {
    let Some(items) = actions.as_array() else {
        return Err(RuleError::BadJson("`actions` must be an array".into()));
    };
    for item in items {
        let known = match item {
            Value::String(name) => ["notify", "dont_notify", "coalesce"].contains(&name.as_str()),
            Value::Object(object) => object.get("set_tweak").is_some_and(Value::is_string),
            _ => false,
        };
        if !known {
            return Err(RuleError::BadJson(format!("unrecognised action {item}")));
        }
    }
    serde_json::from_value(actions.clone())
        .map_err(|e| RuleError::BadJson(format!("invalid actions: {e}")))
}

impl UserRules {
    /// Reads stored rules; rules that no longer read are left out (logged).
    pub fn from_stored(user_id: &str, stored: Value) -> UserRules {
        serde_json::from_value(stored).unwrap_or_else(|error| {
            tracing::error!(user_id, error = %error, "stored push rules do not read: using the defaults");
            UserRules::default()
        })
    }

    pub fn to_stored(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| json!({}))
    }

    /// The user's whole ruleset: the server defaults with these changes.
    pub fn ruleset(&self, user_id: &UserId) -> Ruleset {
        let mut ruleset = Ruleset::server_default(user_id);
        for (kind, changes) in &self.defaults {
            let Ok(kind) = parse_kind(kind) else { continue };
            for (rule_id, change) in changes {
                if let Some(enabled) = change.enabled {
                    let _ = ruleset.set_enabled(kind.clone(), rule_id, enabled);
                }
                if let Some(actions) = &change.actions {
                    let _ = ruleset.set_actions(kind.clone(), rule_id, actions.clone());
                }
            }
        }
        // Each kind's own rules, the least important first: each goes to
        // the top of its kind (after `.m.rule.master`), so they end in order.
        let own = &self.own;
        let mut placed: Vec<(NewPushRule, RuleKind, String, bool)> = Vec::new();
        for rule in own.override_.iter() {
            placed.push((
                NewPushRule::Override(conditional(rule)),
                RuleKind::Override,
                rule.rule_id.clone(),
                rule.enabled,
            ));
        }
        for rule in own.content.iter() {
            placed.push((
                NewPushRule::Content(NewPatternedPushRule::new(
                    rule.rule_id.clone(),
                    rule.pattern.clone(),
                    rule.actions.clone(),
                )),
                RuleKind::Content,
                rule.rule_id.clone(),
                rule.enabled,
            ));
        }
        for rule in own.room.iter() {
            placed.push((
                NewPushRule::Room(NewSimplePushRule::new(
                    rule.rule_id.clone(),
                    rule.actions.clone(),
                )),
                RuleKind::Room,
                rule.rule_id.to_string(),
                rule.enabled,
            ));
        }
        for rule in own.sender.iter() {
            placed.push((
                NewPushRule::Sender(NewSimplePushRule::new(
                    rule.rule_id.clone(),
                    rule.actions.clone(),
                )),
                RuleKind::Sender,
                rule.rule_id.to_string(),
                rule.enabled,
            ));
        }
        for rule in own.underride.iter() {
            placed.push((
                NewPushRule::Underride(conditional(rule)),
                RuleKind::Underride,
                rule.rule_id.clone(),
                rule.enabled,
            ));
        }
        // Reversed within each kind (kinds do not interact).
        for (rule, kind, rule_id, enabled) in placed.into_iter().rev() {
            if ruleset.insert(rule, None, None).is_ok() && !enabled {
                let _ = ruleset.set_enabled(kind, &rule_id, false);
            }
        }
        ruleset
    }

    /// Applies `change` for `user_id`, or says why not (then nothing changed).
    pub fn apply(&mut self, user_id: &UserId, change: RuleChange) -> Result<(), RuleError> {
        let mut ruleset = self.ruleset(user_id);
        match change {
            RuleChange::Put {
                kind,
                rule_id,
                body,
                before,
                after,
            } => {
                let kind = parse_kind(&kind)?;
                check_rule_id(&rule_id)?;
                if rule_id.starts_with('.') {
                    return Err(RuleError::InvalidRuleId(
                        "rule ids starting with `.` are reserved for server-default rules".into(),
                    ));
                }
                let rule = new_rule(kind, rule_id, &body)?;
                ruleset
                    .insert(rule, after.as_deref(), before.as_deref())
                    .map_err(|error| insert_error(error, before, after))?;
            }
            RuleChange::Delete { kind, rule_id } => {
                let kind = parse_kind(&kind)?;
                ruleset
                    .remove(kind.clone(), &rule_id)
                    .map_err(|error| match error {
                        RemovePushRuleError::ServerDefault => RuleError::ServerDefault,
                        _ => RuleError::NotFound(format!("{kind}/{rule_id}")),
                    })?;
            }
            RuleChange::SetEnabled {
                kind,
                rule_id,
                enabled,
            } => {
                let parsed = parse_kind(&kind)?;
                ruleset
                    .set_enabled(parsed, &rule_id, enabled)
                    .map_err(|_| RuleError::NotFound(format!("{kind}/{rule_id}")))?;
                if rule_id.starts_with('.') {
                    self.defaults
                        .entry(kind)
                        .or_default()
                        .entry(rule_id)
                        .or_default()
                        .enabled = Some(enabled);
                    return Ok(());
                }
            }
            RuleChange::SetActions {
                kind,
                rule_id,
                actions,
            } => {
                let parsed = parse_kind(&kind)?;
                let actions = parse_actions(&actions)?;
                ruleset
                    .set_actions(parsed, &rule_id, actions.clone())
                    .map_err(|_| RuleError::NotFound(format!("{kind}/{rule_id}")))?;
                if rule_id.starts_with('.') {
                    self.defaults
                        .entry(kind)
                        .or_default()
                        .entry(rule_id)
                        .or_default()
                        .actions = Some(actions);
                    return Ok(());
                }
            }
        }
        self.own = own_rules(&ruleset);
        Ok(())
    }
}

fn conditional(rule: &ConditionalPushRule) -> NewConditionalPushRule {
    NewConditionalPushRule::new(
        rule.rule_id.clone(),
        rule.conditions.clone(),
        rule.actions.clone(),
    )
}

/// The user's own rules of `ruleset` (those that are not server defaults),
/// in their order.
fn own_rules(ruleset: &Ruleset) -> Ruleset {
    let mut own = Ruleset::new();
    own.override_ = ruleset
        .override_
        .iter()
        .filter(|r| !r.default)
        .cloned()
        .collect();
    own.content = ruleset
        .content
        .iter()
        .filter(|r| !r.default)
        .cloned()
        .collect();
    own.room = ruleset
        .room
        .iter()
        .filter(|r| !r.default)
        .cloned()
        .collect();
    own.sender = ruleset
        .sender
        .iter()
        .filter(|r| !r.default)
        .cloned()
        .collect();
    own.underride = ruleset
        .underride
        .iter()
        .filter(|r| !r.default)
        .cloned()
        .collect();
    own
}

/// The rule a `PUT` body describes (Synapse's `_rule_tuple_from_request_object`).
fn new_rule(kind: RuleKind, rule_id: String, body: &Value) -> Result<NewPushRule, RuleError> {
    let Some(body) = body.as_object() else {
        return Err(RuleError::BadJson("the body must be a JSON object".into()));
    };
    let actions = parse_actions(
        body.get("actions")
            .ok_or_else(|| RuleError::BadJson("no `actions`".into()))?,
    )?;
    Ok(match kind {
        RuleKind::Override | RuleKind::Underride => {
            let conditions = match body.get("conditions") {
                None => Vec::new(),
                Some(conditions) => serde_json::from_value(conditions.clone())
                    .map_err(|e| RuleError::BadJson(format!("invalid conditions: {e}")))?,
            };
            let rule = NewConditionalPushRule::new(rule_id, conditions, actions);
            if kind == RuleKind::Override {
                NewPushRule::Override(rule)
            } else {
                NewPushRule::Underride(rule)
            }
        }
        RuleKind::Content => {
            let pattern = body
                .get("pattern")
                .and_then(Value::as_str)
                .ok_or_else(|| RuleError::BadJson("a content rule needs a `pattern`".into()))?;
            NewPushRule::Content(NewPatternedPushRule::new(
                rule_id,
                pattern.to_owned(),
                actions,
            ))
        }
        RuleKind::Room => {
            let room_id = ruma::OwnedRoomId::try_from(rule_id).map_err(|_| {
                RuleError::InvalidRuleId("a room rule's id is the room's id".into())
            })?;
            NewPushRule::Room(NewSimplePushRule::new(room_id, actions))
        }
        RuleKind::Sender => {
            let user_id = ruma::OwnedUserId::try_from(rule_id).map_err(|_| {
                RuleError::InvalidRuleId("a sender rule's id is the sender's user id".into())
            })?;
            NewPushRule::Sender(NewSimplePushRule::new(user_id, actions))
        }
        other => return Err(RuleError::UnknownKind(other.to_string())),
    })
}

fn insert_error(
    error: InsertPushRuleError,
    before: Option<String>,
    after: Option<String>,
) -> RuleError {
    let named = before.or(after).unwrap_or_default();
    match error {
        InsertPushRuleError::ServerDefaultRuleId | InsertPushRuleError::InvalidRuleId => {
            RuleError::InvalidRuleId(error.to_string())
        }
        InsertPushRuleError::UnknownRuleId => {
            RuleError::Placement(format!("before/after rule not found: {named}"))
        }
        other => RuleError::Placement(other.to_string()),
    }
}

/// A ruleset as the spec shows it: every kind present, as Synapse sends
/// them (ruma leaves out empty kinds; clients index into all five).
pub fn ruleset_json(ruleset: &Ruleset) -> Value {
    let mut value = serde_json::to_value(ruleset).unwrap_or_else(|_| json!({}));
    if let Some(kinds) = value.as_object_mut() {
        for kind in RULE_KINDS {
            kinds.entry(kind).or_insert_with(|| json!([]));
        }
    }
    value
}

/// One rule as the spec shows it.
pub fn rule_json(rule: AnyPushRuleRef<'_>) -> Value {
    match rule {
        AnyPushRuleRef::Override(r) | AnyPushRuleRef::Underride(r) => json!(r),
        AnyPushRuleRef::Content(r) => json!(r),
        AnyPushRuleRef::Room(r) => json!(r),
        AnyPushRuleRef::Sender(r) => json!(r),
        _ => json!({}),
    }
}

/// Every instance's cache of users' rulesets. An entry is used while the
/// user's rules have not changed since it was read (the notifier's change
/// cache of the `push_rules` stream: local writes and rows from other
/// writers both record there), so it needs no invalidation of its own.
#[derive(Default)]
pub struct RulesetCache {
    entries: Mutex<HashMap<String, CachedRuleset>>,
}

struct CachedRuleset {
    read_at: i64,
    ruleset: Arc<Ruleset>,
}

impl RulesetCache {
    /// The rulesets of `user_ids`, in their order: from the cache where
    /// fresh, the others read in one query.
    pub async fn rulesets(
        &self,
        pool: &Pool,
        notifier: &Notifier,
        user_ids: &[&UserId],
    ) -> StorageResult<Vec<Arc<Ruleset>>> {
        let mut found: Vec<Option<Arc<Ruleset>>> = vec![None; user_ids.len()];
        let mut missing: Vec<usize> = Vec::new();
        {
            let entries = self.entries.lock().ok();
            for (index, user_id) in user_ids.iter().enumerate() {
                match entries.as_ref().and_then(|e| e.get(user_id.as_str())) {
                    Some(entry)
                        if !notifier.has_changed_since(
                            PUSH_RULES_STREAM,
                            user_id.as_str(),
                            entry.read_at,
                        ) =>
                    {
                        found[index] = Some(Arc::clone(&entry.ruleset));
                    }
                    _ => missing.push(index),
                }
            }
        }
        if !missing.is_empty() {
            // Read the position first: a change after it marks the entry
            // stale whether or not the query below saw it.
            let read_at = notifier.position(PUSH_RULES_STREAM);
            let names: Vec<&str> = missing.iter().map(|&i| user_ids[i].as_str()).collect();
            let mut stored: HashMap<String, Value> = stored::rules_of_users(pool, &names)
                .await?
                .into_iter()
                .collect();
            let mut entries = self.entries.lock().ok();
            if let Some(entries) = entries.as_mut() {
                if entries.len() + missing.len() > MAX_CACHED_USERS {
                    entries.clear();
                }
            }
            for index in missing {
                let user_id = user_ids[index];
                let rules = stored
                    .remove(user_id.as_str())
                    .map(|value| UserRules::from_stored(user_id.as_str(), value))
                    .unwrap_or_default();
                let ruleset = Arc::new(rules.ruleset(user_id));
                if let Some(entries) = entries.as_mut() {
                    let cached = CachedRuleset {
                        read_at,
                        ruleset: Arc::clone(&ruleset),
                    };
                    entries.insert(user_id.to_string(), cached);
                }
                found[index] = Some(ruleset);
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// The ruleset of one user.
    pub async fn ruleset(
        &self,
        pool: &Pool,
        notifier: &Notifier,
        user_id: &UserId,
    ) -> StorageResult<Arc<Ruleset>> {
        let found = self.rulesets(pool, notifier, &[user_id]).await?;
        Ok(found
            .into_iter()
            .next()
            .unwrap_or_else(|| Arc::new(Ruleset::server_default(user_id))))
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    fn put(
        rules: &mut UserRules,
        kind: &str,
        id: &str,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<(), RuleError> {
        rules.apply(
            user_id!("@a:x"),
            RuleChange::Put {
                kind: kind.into(),
                rule_id: id.into(),
                body: json!({ "actions": ["notify"], "pattern": "cake", "conditions": [] }),
                before: before.map(str::to_owned),
                after: after.map(str::to_owned),
            },
        )
    }

    fn ids(ruleset: &Ruleset, kind: &str) -> Vec<String> {
        ruleset_json(ruleset)[kind]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["rule_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn own_rules_keep_their_placement_through_storage() {
        let mut rules = UserRules::default();
        put(&mut rules, "override", "a", None, None).expect("a");
        put(&mut rules, "override", "b", None, None).expect("b");
        put(&mut rules, "override", "c", None, Some("b")).expect("c");
        put(&mut rules, "content", "x", None, None).expect("x");
        let stored = UserRules::from_stored("@a:x", rules.to_stored());
        let ruleset = stored.ruleset(user_id!("@a:x"));
        let overrides = ids(&ruleset, "override");
        assert_eq!(&overrides[..4], [".m.rule.master", "b", "c", "a"]);
        assert_eq!(ids(&ruleset, "content")[0], "x");
        assert_eq!(
            put(&mut rules, "override", "d", None, Some("nope")),
            Err(RuleError::Placement(
                "before/after rule not found: nope".into()
            ))
        );
        assert!(put(&mut rules, "override", "a/b", None, None).is_err());
        assert!(put(&mut rules, "override", ".m.mine", None, None).is_err());
    }

    #[test]
    fn changes_to_defaults_survive_storage() {
        let mut rules = UserRules::default();
        rules
            .apply(
                user_id!("@a:x"),
                RuleChange::SetEnabled {
                    kind: "underride".into(),
                    rule_id: ".m.rule.message".into(),
                    enabled: false,
                },
            )
            .expect("disabled");
        let stored = UserRules::from_stored("@a:x", rules.to_stored());
        let ruleset = stored.ruleset(user_id!("@a:x"));
        let rule = ruleset
            .get(RuleKind::Underride, ".m.rule.message")
            .expect("rule");
        assert!(!rule.enabled());
        assert_eq!(
            rules.apply(
                user_id!("@a:x"),
                RuleChange::Delete {
                    kind: "underride".into(),
                    rule_id: ".m.rule.message".into()
                }
            ),
            Err(RuleError::ServerDefault)
        );
    }
}
