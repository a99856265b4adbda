//! Evaluates a new event against the push rules of its room's members, as
//! Synapse's `BulkPushRuleEvaluator` does: once per event, for every local
//! member but the sender at once, on the instance where the send entered
//! the server, before the event goes to its persister. What it costs: the
//! room's members, display names, power levels and creators (one query,
//! kept until the notifier says the room's state changed);
//! the members' rulesets from [`RulesetCache`] (one query for those not
//! cached); the event flattened once; then ruma's rule matching per member.
//! Only members the event notifies or highlights get a row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use deadpool_postgres::Pool;
use ruma::power_levels::NotificationPowerLevels;
use ruma::push::{
    Action, AnyPushRuleRef, FlattenedJson, PredefinedContentRuleId, PredefinedOverrideRuleId,
    PushCondition, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset,
};
use ruma::room_version_rules::RoomPowerLevelsRules;
use ruma::serde::Raw;
use ruma::{Int, OwnedUserId, RoomVersionId, UInt, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::rules::RulesetCache;
use crate::roles::events::SendEvent;
use crate::storage::push_actions::{self, RoomPushContext};
use crate::storage::StorageResult;
use crate::streams::events::{state_changes_key, EVENTS_STREAM};
use crate::streams::notifier::Notifier;
use crate::streams::push_rules::PUSH_RULES_STREAM;

/// Rooms whose push context is kept before the cache starts over.
const MAX_CACHED_ROOMS: usize = 10_000;

/// The thread id of events in no thread (Synapse's `MAIN_TIMELINE`).
pub const MAIN_TIMELINE: &str = "main";

/// What an event does for the members it notifies or highlights: it travels
/// with the send to the persister, which stores it with the event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushActions {
    /// The event's thread root, or `main`.
    pub thread_id: String,
    pub users: Vec<UserActions>,
}

/// One member's actions for an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserActions {
    pub user_id: String,
    pub notify: bool,
    pub highlight: bool,
    /// The matching rule's actions, for pushers.
    pub actions: Value,
}

/// The thread an event with `content` is in: its `m.thread` relation's
/// root, else the main timeline.
pub fn thread_id(content: &Value) -> String {
    let relation = content.get("m.relates_to");
    match (
        relation
            .and_then(|r| r.get("rel_type"))
            .and_then(Value::as_str),
        relation
            .and_then(|r| r.get("event_id"))
            .and_then(Value::as_str),
    ) {
        (Some("m.thread"), Some(root)) => root.to_owned(),
        _ => MAIN_TIMELINE.to_owned(),
    }
}

/// The evaluator of one instance: the rulesets it caches, and what its
/// evaluations cost (in its `observe` counters).
pub struct PushEvaluator {
    pub rules: RulesetCache,
    /// Each room as its evaluations need it, with the events position it
    /// was read at.
    rooms: Mutex<HashMap<String, (i64, Arc<PreparedRoom>)>>,
    server_name: String,
    events_evaluated: AtomicU64,
    members_evaluated: AtomicU64,
    evaluation_micros: AtomicU64,
    /// Of which reading the room (members, names, power levels).
    room_read_micros: AtomicU64,
    room_reads: AtomicU64,
}

/// A room as evaluations need it: its local members parsed once, and its
/// power levels in ruma's form, for every event until its state changes.
struct PreparedRoom {
    /// The joined members of this server and their display names.
    local_members: Vec<(OwnedUserId, String)>,
    /// Every joined member, local or not (`room_member_count`).
    member_count: usize,
    power_levels: Option<PushConditionPowerLevelsCtx>,
}

impl PreparedRoom {
    fn new(room: &RoomPushContext, server_name: &str) -> PreparedRoom {
        PreparedRoom {
            local_members: room
                .members
                .iter()
                .filter_map(|(user_id, name)| {
                    let user_id = OwnedUserId::try_from(user_id.as_str()).ok()?;
                    (user_id.server_name().as_str() == server_name).then(|| (user_id, name.clone()))
                })
                .collect(),
            member_count: room.members.len(),
            power_levels: power_levels_ctx(room),
        }
    }
}

impl PushEvaluator {
    pub fn new(server_name: &str, notifier: &Notifier) -> PushEvaluator {
        // The ruleset cache asks the notifier whether a user's rules changed
        // since an entry was read; a stream it has no record of counts as
        // changed for everyone. From here on every change is recorded.
        notifier.forget_changes_until(PUSH_RULES_STREAM, notifier.position(PUSH_RULES_STREAM));
        PushEvaluator {
            rules: RulesetCache::default(),
            rooms: Mutex::default(),
            server_name: server_name.to_owned(),
            events_evaluated: AtomicU64::new(0),
            members_evaluated: AtomicU64::new(0),
            evaluation_micros: AtomicU64::new(0),
            room_read_micros: AtomicU64::new(0),
            room_reads: AtomicU64::new(0),
        }
    }

    /// What evaluations cost so far on this instance.
    pub fn observe(&self) -> Value {
        let events = self.events_evaluated.load(Ordering::Relaxed);
        let micros = self.evaluation_micros.load(Ordering::Relaxed);
        json!({
            "events_evaluated": events,
            "members_evaluated": self.members_evaluated.load(Ordering::Relaxed),
            "evaluation_micros": micros,
            "room_read_micros": self.room_read_micros.load(Ordering::Relaxed),
            "room_reads": self.room_reads.load(Ordering::Relaxed),
            "micros_per_event": micros.checked_div(events).unwrap_or(0),
        })
    }

    /// The actions `request` makes for its room's members, None when it
    /// notifies nobody (or the room is not known: the persister refuses it).
    pub async fn evaluate(
        &self,
        pool: &Pool,
        notifier: &Notifier,
        request: &SendEvent,
    ) -> StorageResult<Option<PushActions>> {
        let started = Instant::now();
        let Some(room) = self
            .room_context(pool, notifier, request.room_id.as_str())
            .await?
        else {
            return Ok(None);
        };
        let mut recipients: Vec<(OwnedUserId, String)> = room
            .local_members
            .iter()
            .filter(|(user_id, _)| *user_id != request.sender)
            .cloned()
            .collect();
        // An invite notifies its invitee (`.m.rule.invite_for_me`).
        if request.kind == "m.room.member"
            && request.content.get("membership").and_then(Value::as_str) == Some("invite")
        {
            if let Some(invitee) = request
                .state_key
                .as_deref()
                .and_then(|key| OwnedUserId::try_from(key).ok())
                .filter(|u| u.server_name().as_str() == self.server_name)
            {
                if !recipients.iter().any(|(u, _)| *u == invitee) {
                    recipients.push((invitee, String::new()));
                }
            }
        }
        if recipients.is_empty() {
            return Ok(None);
        }
        let user_ids: Vec<&UserId> = recipients.iter().map(|(u, _)| u.as_ref()).collect();
        let rulesets = self.rules.rulesets(pool, notifier, &user_ids).await?;
        let event = flattened(request);
        let mut power_levels = room.power_levels.clone();
        let member_count = UInt::try_from(room.member_count as u64).unwrap_or_default();
        let mut users = Vec::new();
        let mut conditions = ConditionMemo::new(&event);
        // One context for the room, its member fields set for each member.
        let mut context: Option<PushConditionRoomCtx> = None;
        for ((user_id, display_name), ruleset) in recipients.iter().zip(&rulesets) {
            let context = match &mut context {
                Some(context) => {
                    context.user_id = user_id.clone();
                    context.user_display_name = display_name.clone();
                    context
                }
                None => {
                    let mut new = PushConditionRoomCtx::new(
                        request.room_id.clone(),
                        member_count,
                        user_id.clone(),
                        display_name.clone(),
                    );
                    if let Some(power_levels) = power_levels.take() {
                        new = new.with_power_levels(power_levels);
                    }
                    context.insert(new)
                }
            };
            let actions = conditions
                .matching_actions(ruleset, context, display_name)
                .await;
            let notify = actions.iter().any(Action::should_notify);
            let highlight = actions.iter().any(Action::is_highlight);
            if notify || highlight {
                users.push(UserActions {
                    user_id: user_id.to_string(),
                    notify,
                    highlight,
                    actions: serde_json::to_value(actions).unwrap_or_else(|_| json!([])),
                });
            }
        }
        self.events_evaluated.fetch_add(1, Ordering::Relaxed);
        self.members_evaluated
            .fetch_add(recipients.len() as u64, Ordering::Relaxed);
        self.evaluation_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if users.is_empty() {
            return Ok(None);
        }
        Ok(Some(PushActions {
            thread_id: thread_id(&request.content),
            users,
        }))
    }
}

impl PushEvaluator {
    /// `room_id`'s push context: from the cache while the notifier says
    /// the room's state has not changed since it was read, else read (and
    /// kept). The position is taken before the read, so a state event the
    /// read missed is one the notifier reports as a change.
    async fn room_context(
        &self,
        pool: &Pool,
        notifier: &Notifier,
        room_id: &str,
    ) -> StorageResult<Option<Arc<PreparedRoom>>> {
        let state_key = state_changes_key(room_id);
        if let Ok(rooms) = self.rooms.lock() {
            if let Some((read_at, context)) = rooms.get(room_id) {
                if !notifier.has_changed_since(EVENTS_STREAM, &state_key, *read_at) {
                    return Ok(Some(context.clone()));
                }
            }
        }
        let started = Instant::now();
        let read_at = notifier.position(EVENTS_STREAM);
        let Some(context) = push_actions::room_push_context(pool, room_id).await? else {
            return Ok(None);
        };
        self.room_reads.fetch_add(1, Ordering::Relaxed);
        self.room_read_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let context = Arc::new(PreparedRoom::new(&context, &self.server_name));
        if let Ok(mut rooms) = self.rooms.lock() {
            if rooms.len() >= MAX_CACHED_ROOMS {
                rooms.clear();
            }
            match rooms.get(room_id) {
                // A concurrent read that saw more is kept.
                Some((other, _)) if *other > read_at => {}
                _ => {
                    rooms.insert(room_id.to_owned(), (read_at, context.clone()));
                }
            }
        }
        Ok(Some(context))
    }
}

/// The rules' answers for one event, shared by every member it is
/// evaluated for. Members' rulesets are mostly the same server defaults, so
/// most conditions are asked once per member with the same key and pattern;
/// ruma's matching lowercases the event's value and the pattern on every
/// call. Answers are remembered by what the condition asks: the event's own
/// fields, the room's member count and power levels are the same for every
/// member, and the one per-member input, the display name, is part of the
/// key. Each first answer is ruma's own (`PushCondition::applies`,
/// `AnyPushRuleRef::applies`), so the memo cannot disagree with it.
struct ConditionMemo<'a> {
    event: &'a FlattenedJson,
    /// Whether the event has `m.mentions` (which turns the legacy mention
    /// rules off).
    has_mentions: bool,
    /// `event_match` (key, pattern) answers; room and sender rules as
    /// matches of `room_id` and `sender`, content rules of `content.body`.
    matches: foldhash::HashMap<(&'a str, &'a str), bool>,
    /// `contains_display_name` answers by display name.
    display_names: foldhash::HashMap<&'a str, bool>,
}

impl<'a> ConditionMemo<'a> {
    fn new(event: &'a FlattenedJson) -> Self {
        ConditionMemo {
            event,
            has_mentions: event.contains_mentions(),
            matches: foldhash::HashMap::default(),
            display_names: foldhash::HashMap::default(),
        }
    }

    /// The actions of the first rule of `ruleset` that applies, as ruma's
    /// `Ruleset::get_actions` finds them.
    async fn matching_actions(
        &mut self,
        ruleset: &'a Ruleset,
        context: &PushConditionRoomCtx,
        display_name: &'a str,
    ) -> &'a [Action] {
        // No rule applies to a user's own events.
        if self.event.get_str("sender") == Some(context.user_id.as_str()) {
            return &[];
        }
        for rule in ruleset {
            if self.rule_applies(rule, context, display_name).await {
                return rule.actions();
            }
        }
        &[]
    }

    async fn rule_applies(
        &mut self,
        rule: AnyPushRuleRef<'a>,
        context: &PushConditionRoomCtx,
        display_name: &'a str,
    ) -> bool {
        match rule {
            AnyPushRuleRef::Override(conditional) | AnyPushRuleRef::Underride(conditional) => {
                if !conditional.enabled {
                    return false;
                }
                #[allow(deprecated)]
                let legacy_mention = conditional.rule_id
                    == PredefinedOverrideRuleId::RoomNotif.as_str()
                    || conditional.rule_id
                        == PredefinedOverrideRuleId::ContainsDisplayName.as_str();
                if legacy_mention && self.has_mentions {
                    return false;
                }
                for condition in &conditional.conditions {
                    if !self
                        .condition_applies(condition, context, display_name)
                        .await
                    {
                        return false;
                    }
                }
                true
            }
            AnyPushRuleRef::Content(patterned) => {
                #[allow(deprecated)]
                let legacy_mention =
                    patterned.rule_id == PredefinedContentRuleId::ContainsUserName.as_str();
                if !patterned.enabled || (legacy_mention && self.has_mentions) {
                    return false;
                }
                let key = ("content.body", patterned.pattern.as_str());
                self.remembered_match(key, rule, context).await
            }
            AnyPushRuleRef::Room(simple) => {
                let key = ("room_id", simple.rule_id.as_str());
                simple.enabled && self.remembered_match(key, rule, context).await
            }
            AnyPushRuleRef::Sender(simple) => {
                let key = ("sender", simple.rule_id.as_str());
                simple.enabled && self.remembered_match(key, rule, context).await
            }
            other => other.applies(self.event, context).await,
        }
    }

    /// Whether `rule` (a content, room or sender rule: one pattern matched
    /// against one field) applies, remembered under `key`.
    async fn remembered_match(
        &mut self,
        key: (&'a str, &'a str),
        rule: AnyPushRuleRef<'a>,
        context: &PushConditionRoomCtx,
    ) -> bool {
        if let Some(&answer) = self.matches.get(&key) {
            return answer;
        }
        let answer = rule.applies(self.event, context).await;
        self.matches.insert(key, answer);
        answer
    }

    async fn condition_applies(
        &mut self,
        condition: &'a PushCondition,
        context: &PushConditionRoomCtx,
        display_name: &'a str,
    ) -> bool {
        match condition {
            PushCondition::EventMatch(data) => {
                let key = (data.key.as_str(), data.pattern.as_str());
                if let Some(&answer) = self.matches.get(&key) {
                    return answer;
                }
                let answer = condition.applies(self.event, context).await;
                self.matches.insert(key, answer);
                answer
            }
            #[allow(deprecated)]
            PushCondition::ContainsDisplayName => {
                if let Some(&answer) = self.display_names.get(display_name) {
                    return answer;
                }
                let answer = condition.applies(self.event, context).await;
                self.display_names.insert(display_name, answer);
                answer
            }
            _ => condition.applies(self.event, context).await,
        }
    }
}

/// The event as the rules see it (it has no id yet: no default rule
/// looks at one), serialised straight from the request.
fn flattened(request: &SendEvent) -> FlattenedJson {
    #[derive(Serialize)]
    struct EventForRules<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        content: &'a Value,
        sender: &'a str,
        room_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        state_key: Option<&'a str>,
    }
    let event = EventForRules {
        kind: &request.kind,
        content: &request.content,
        sender: request.sender.as_str(),
        room_id: request.room_id.as_str(),
        state_key: request.state_key.as_deref(),
    };
    let raw: Raw<Value> = serde_json::value::to_raw_value(&event)
        .map(Raw::from_json)
        .unwrap_or_else(|_| Raw::from_json(Default::default()));
    FlattenedJson::from_raw(&raw)
}

/// The power levels of the room for `sender_notification_permission`
/// (what ruma's `From<RoomPowerLevels>` gives, read from the content).
fn power_levels_ctx(room: &RoomPushContext) -> Option<PushConditionPowerLevelsCtx> {
    let version = RoomVersionId::try_from(room.room_version.as_str()).ok()?;
    let rules = version.rules()?;
    let mut creators: HashSet<OwnedUserId> = HashSet::new();
    if let Some(creator) = room
        .create_sender
        .as_deref()
        .and_then(|c| OwnedUserId::try_from(c).ok())
    {
        creators.insert(creator);
    }
    if let Some(additional) = room
        .create_content
        .as_ref()
        .and_then(|c| c.get("additional_creators"))
        .and_then(Value::as_array)
    {
        creators.extend(
            additional
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|c| OwnedUserId::try_from(c).ok()),
        );
    }
    let level = |value: &Value| -> Option<Int> {
        match value {
            Value::Number(n) => n.as_i64().and_then(|n| Int::try_from(n).ok()),
            Value::String(s) => s.parse::<i64>().ok().and_then(|n| Int::try_from(n).ok()),
            _ => None,
        }
    };
    let (users, users_default, notifications) = match &room.power_levels {
        Some(content) => {
            let users: BTreeMap<OwnedUserId, Int> = content
                .get("users")
                .and_then(Value::as_object)
                .map(|users| {
                    users
                        .iter()
                        .filter_map(|(u, l)| {
                            Some((OwnedUserId::try_from(u.as_str()).ok()?, level(l)?))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let users_default = content
                .get("users_default")
                .and_then(level)
                .unwrap_or_default();
            let notifications = content
                .get("notifications")
                .and_then(|n| serde_json::from_value::<NotificationPowerLevels>(n.clone()).ok())
                .unwrap_or_default();
            (users, users_default, notifications)
        }
        // Without power levels the creator has 100, everyone else 0.
        None => (
            creators
                .iter()
                .map(|c| (c.clone(), Int::from(100u8)))
                .collect(),
            Int::default(),
            NotificationPowerLevels::default(),
        ),
    };
    Some(PushConditionPowerLevelsCtx::new(
        users,
        users_default,
        notifications,
        RoomPowerLevelsRules::new(&rules.authorization, creators),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memo answers as ruma's `Ruleset::get_actions` does for each
    /// member, whichever member asked first.
    #[tokio::test]
    async fn the_memo_agrees_with_ruma_for_every_member() {
        use ruma::push::{NewPushRule, NewSimplePushRule};
        use ruma::{owned_room_id, owned_user_id};

        let room_id = owned_room_id!("!room:example.org");
        let alice = owned_user_id!("@alice:example.org");
        let bob = owned_user_id!("@bob:example.org");
        let mut bobs = Ruleset::server_default(&bob);
        bobs.insert(
            NewPushRule::Room(NewSimplePushRule::new(room_id.clone(), vec![])),
            None,
            None,
        )
        .expect("test data");
        let members = [
            (
                alice.clone(),
                "Alice".to_owned(),
                Ruleset::server_default(&alice),
            ),
            (bob.clone(), "Bob".to_owned(), bobs),
        ];
        let events = [
            json!({ "type": "m.room.message", "sender": "@carol:example.org", "room_id": room_id,
                    "content": { "msgtype": "m.text", "body": "hello Alice and bob" } }),
            json!({ "type": "m.room.message", "sender": "@carol:example.org", "room_id": room_id,
                    "content": { "msgtype": "m.text", "body": "hello Alice",
                                 "m.mentions": { "user_ids": ["@bob:example.org"] } } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org", "room_id": room_id,
                    "content": { "msgtype": "m.text", "body": "@room Bob" } }),
            json!({ "type": "m.reaction", "sender": "@carol:example.org", "room_id": room_id,
                    "content": {} }),
        ];
        for value in events {
            let raw: Raw<Value> = Raw::new(&value).expect("test data");
            let event = FlattenedJson::from_raw(&raw);
            for order in [[0, 1], [1, 0]] {
                let mut memo = ConditionMemo::new(&event);
                for index in order {
                    let (user_id, name, ruleset) = &members[index];
                    let context = PushConditionRoomCtx::new(
                        room_id.clone(),
                        UInt::from(3u8),
                        user_id.clone(),
                        name.clone(),
                    );
                    let expected = ruleset.get_actions(&raw, &context).await;
                    let got = memo.matching_actions(ruleset, &context, name).await;
                    assert_eq!(
                        serde_json::to_value(got).expect("test data"),
                        serde_json::to_value(expected).expect("test data"),
                        "{user_id} on {value}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_thread_reply_is_in_its_roots_thread() {
        let reply = json!({ "m.relates_to": { "rel_type": "m.thread", "event_id": "$root" } });
        assert_eq!(thread_id(&reply), "$root");
        let edit = json!({ "m.relates_to": { "rel_type": "m.replace", "event_id": "$e" } });
        assert_eq!(thread_id(&edit), MAIN_TIMELINE);
        assert_eq!(thread_id(&json!({})), MAIN_TIMELINE);
    }
}
