//! Messages that may cross a process boundary.
//!
//! Every message that an actor accepts through a [`Mailbox`](crate::Mailbox)
//! implements [`RemoteMessage`]: it is serialisable (so the same value can be
//! handed to a local actor by move or shipped to another process as JSON),
//! names its reply type, and carries a stable, versioned wire name that the
//! receiving side uses to pick the decoder and handler. Local delivery never
//! serialises anything; the bounds only guarantee that remote delivery is
//! always possible, so where an actor runs is purely a deployment decision.

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A boxed, sendable future: the currency of the object-safe traits in this
/// crate ([`Transport`](crate::Transport), [`Subscription`](crate::Subscription)).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message that can be delivered to an actor in this process or in another.
///
/// ```
/// use lattice_actors::RemoteMessage;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct PersistEvent { room_id: String, event_json: String }
///
/// #[derive(Serialize, Deserialize)]
/// struct Persisted { stream_ordering: i64 }
///
/// impl RemoteMessage for PersistEvent {
///     type Reply = Persisted;
///     const WIRE_NAME: &'static str = "events.persist.v1";
/// }
/// ```
pub trait RemoteMessage: Serialize + DeserializeOwned + Send + 'static {
    /// What the handler answers with.
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// Stable name on the wire, versioned (`"events.persist.v1"`). Changing a
    /// message's shape incompatibly means a new wire name, so mixed-version
    /// deployments fail loudly (`Decode`) instead of mis-decoding.
    const WIRE_NAME: &'static str;
}
