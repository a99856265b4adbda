//! The `device_lists` section: users whose devices changed since `since`
//! (`changed`) and users the user no longer shares an encrypted room with
//! (`left`). There is no device lists stream yet: both lists are empty.

use serde_json::{json, Value};

use super::SyncContext;
use crate::error::ApiResult;

/// User ids whose device lists the client should refresh or drop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceLists {
    pub changed: Vec<String>,
    pub left: Vec<String>,
}

impl DeviceLists {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }

    /// The `device_lists` object.
    pub fn into_json(self) -> Value {
        json!({ "changed": self.changed, "left": self.left })
    }
}

/// The device list changes for this answer.
pub async fn device_lists(_ctx: &SyncContext<'_>) -> ApiResult<DeviceLists> {
    Ok(DeviceLists::default())
}
