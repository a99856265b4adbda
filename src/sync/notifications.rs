//! Unread counts of `/sync`: each joined room's `unread_notifications`
//! (`notification_count`, `highlight_count`) and, when the filter sets
//! `room.timeline.unread_thread_notifications`, `unread_thread_notifications`
//! by thread root (then `unread_notifications` counts the main timeline
//! only). Counted from the push actions stored with each event after the
//! user's read receipts, in one query for all the rooms of an answer.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::SyncContext;
use crate::error::ApiResult;
use crate::push::evaluator::MAIN_TIMELINE;
use crate::storage::push_actions::{self, Counts};

/// The counts of each of `room_ids`: what each room's section adds.
pub async fn unread(
    ctx: &SyncContext<'_>,
    room_ids: &[&str],
) -> ApiResult<HashMap<String, Map<String, Value>>> {
    let counts =
        push_actions::unread_counts(&ctx.node.pool, ctx.user_id(), room_ids, ctx.upto_events())
            .await?;
    let by_thread = ctx.filter.room.timeline.unread_thread_notifications;
    let mut sections = HashMap::with_capacity(room_ids.len());
    for room_id in room_ids {
        let threads = counts.get(*room_id);
        let mut section = Map::new();
        let main = if by_thread {
            let mut per_thread = Map::new();
            for (thread_id, counts) in threads.into_iter().flatten() {
                if thread_id != MAIN_TIMELINE {
                    per_thread.insert(thread_id.clone(), counts_json(*counts));
                }
            }
            section.insert(
                "unread_thread_notifications".into(),
                Value::Object(per_thread),
            );
            threads
                .and_then(|t| t.get(MAIN_TIMELINE))
                .copied()
                .unwrap_or_default()
        } else {
            threads
                .into_iter()
                .flat_map(|t| t.values())
                .fold(Counts::default(), |sum, c| Counts {
                    notifications: sum.notifications + c.notifications,
                    highlights: sum.highlights + c.highlights,
                })
        };
        section.insert("unread_notifications".into(), counts_json(main));
        sections.insert((*room_id).to_owned(), section);
    }
    Ok(sections)
}

fn counts_json(counts: Counts) -> Value {
    json!({
        "notification_count": counts.notifications,
        "highlight_count": counts.highlights,
    })
}
