//! The actors of each role (DESIGN §1). Each role is a module; the node
//! starts the actors of the roles an instance runs from one table,
//! [`ACTORS`], and every other part of the code reaches them through
//! [`Mailboxes`], local or remote by shard (`lattice_actors::Placement`).
//! A new role adds a module and a row, not fields and methods on `Node`.

pub mod account_data;
pub mod device_lists;
pub mod events;
pub mod presence;
pub mod push_rules;
pub mod receipts;
pub mod to_device;
pub mod typing;

mod mailboxes;

pub use mailboxes::{ActorStart, Mailboxes, StartedActor};

/// A sharded actor kind: the role that hosts it, the stream whose
/// `stream_writers` places it (its placement kind), and how to start it.
pub struct ActorRow {
    pub role: Role,
    /// The placement kind: the stream it writes.
    pub kind: &'static str,
    pub start: for<'a> fn(&'a ActorStart) -> Result<StartedActor, String>,
}

/// Every actor kind a role hosts.
pub const ACTORS: &[ActorRow] = &[
    ActorRow {
        role: Role::Events,
        kind: events::EVENTS_STREAM,
        start: events::start,
    },
    ActorRow {
        role: Role::Receipts,
        kind: receipts::RECEIPTS_STREAM,
        start: receipts::start,
    },
    ActorRow {
        role: Role::AccountData,
        kind: account_data::ACCOUNT_DATA_STREAM,
        start: account_data::start,
    },
    ActorRow {
        role: Role::Typing,
        kind: typing::TYPING_STREAM,
        start: typing::start,
    },
    ActorRow {
        role: Role::PushRules,
        kind: push_rules::PUSH_RULES_STREAM,
        start: push_rules::start,
    },
    ActorRow {
        role: Role::Presence,
        kind: presence::PRESENCE_STREAM,
        start: presence::start,
    },
    ActorRow {
        role: Role::DeviceLists,
        kind: device_lists::DEVICE_LISTS_STREAM,
        start: device_lists::start,
    },
    ActorRow {
        role: Role::ToDevice,
        kind: to_device::TO_DEVICE_STREAM,
        start: to_device::start,
    },
];

/// The roles of DESIGN §1: kinds of work an instance can host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Sync,
    Events,
    Typing,
    ToDevice,
    AccountData,
    Receipts,
    Presence,
    DeviceLists,
    PushRules,
    Pusher,
    FederationSender,
    FederationReader,
    Media,
    Background,
}

impl Role {
    pub const ALL: [Role; 15] = [
        Role::Client,
        Role::Sync,
        Role::Events,
        Role::Typing,
        Role::ToDevice,
        Role::AccountData,
        Role::Receipts,
        Role::Presence,
        Role::DeviceLists,
        Role::PushRules,
        Role::Pusher,
        Role::FederationSender,
        Role::FederationReader,
        Role::Media,
        Role::Background,
    ];

    /// The role that writes the stream `stream` (a role writes the stream
    /// of its own name), if any.
    pub fn writing(stream: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == stream)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Sync => "sync",
            Role::Events => "events",
            Role::Typing => "typing",
            Role::ToDevice => "to_device",
            Role::AccountData => "account_data",
            Role::Receipts => "receipts",
            Role::Presence => "presence",
            Role::DeviceLists => "device_lists",
            Role::PushRules => "push_rules",
            Role::Pusher => "pusher",
            Role::FederationSender => "federation_sender",
            Role::FederationReader => "federation_reader",
            Role::Media => "media",
            Role::Background => "background",
        }
    }

    /// Parses `--roles`. Empty means every role (the monolith).
    pub fn parse_list(names: &[String]) -> Result<Vec<Role>, RoleError> {
        let mut roles = Vec::new();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let role = Role::ALL
                .into_iter()
                .find(|r| r.name() == name)
                .ok_or_else(|| RoleError::Unknown(name.to_owned()))?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        if roles.is_empty() {
            return Ok(Role::ALL.to_vec());
        }
        Ok(roles)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("--roles: unknown role `{0}` (known: client, sync, events, typing, to_device, account_data, receipts, presence, device_lists, push_rules, pusher, federation_sender, federation_reader, media, background)")]
    Unknown(String),
}

/// Why a writer refused or failed a write (the events writer's sends and
/// createRoom; the typing and receipts writers to come). It crosses the
/// mailbox as the error of a writer's reply, so it is serialisable; it
/// becomes a Matrix error in one place, `From<WriteError> for ApiError` in
/// `src/error.rs`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum WriteError {
    /// The sender may not do this: the auth rules, or what else a writer
    /// checks (who may redact what).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The room or event the write names is not known here.
    #[error("not found: {0}")]
    NotFound(String),
    /// The content is not what the write needs.
    #[error("bad json: {0}")]
    BadJson(String),
    /// A value the writer cannot take: NUL characters, over-long event
    /// types or state keys, an event of another room.
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// A room version this server does not support (the version).
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(String),
    /// The event is larger than the spec allows.
    #[error("event too large")]
    TooLarge,
    /// Storage failed: the server's fault, not the request's.
    #[error("storage failed: {0}")]
    Storage(String),
    /// Any other failure that is the server's fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// This writer does not own the shard of what was asked (any more): the
    /// caller reads who does and asks again (`crate::shards`).
    #[error("not the owner of shard {0} here")]
    NotOwner(i32),
}

/// What a writer answers when it refuses: says whether it refused because
/// it does not own the shard of what was asked (then the caller asks the
/// owner, `Node::call_owner`).
pub trait WriterRefusal {
    fn not_owner(&self) -> bool;
}

impl WriterRefusal for WriteError {
    fn not_owner(&self) -> bool {
        matches!(self, WriteError::NotOwner(_))
    }
}

impl WriteError {
    /// A writer's failed write: `NotOwner` when it was fenced off (its
    /// shard moved; the caller asks the new owner), otherwise a storage
    /// failure, logged, saying `what` could not be stored.
    pub fn from_storage(error: crate::storage::StorageError, what: &str) -> WriteError {
        if let crate::storage::StorageError::Fenced { shard, .. } = error {
            return WriteError::NotOwner(shard);
        }
        tracing::error!(error = %error, "storing {what} failed");
        WriteError::Storage(format!("{what} could not be stored"))
    }

    /// A request its writer's batch returned no answer for.
    pub fn not_answered() -> Self {
        WriteError::Internal("request was not answered".into())
    }
}

/// A writer's batch, kept to what this writer owns: runs `batch` on the
/// requests all of whose shard keys (`keys`: room or user ids) are in
/// shards held here, and answers `NotOwner` to the others (the caller asks
/// the owner), every answer in the order of `requests`.
pub async fn owned_only<R, T, E, Fut>(
    shards: &crate::shards::ShardMap,
    requests: Vec<R>,
    keys: impl Fn(&R) -> Vec<String>,
    batch: impl FnOnce(Vec<R>) -> Fut,
) -> Vec<Result<T, E>>
where
    E: From<WriteError>,
    Fut: std::future::Future<Output = Vec<Result<T, E>>>,
{
    let keys: Vec<Vec<String>> = requests.iter().map(keys).collect();
    let flat: Vec<&str> = keys.iter().flatten().map(String::as_str).collect();
    let refusals = shards.refusals(&flat).await;
    let mut refused = refusals.into_iter();
    let mut answers: Vec<Option<Result<T, E>>> = Vec::with_capacity(requests.len());
    let mut kept = Vec::with_capacity(requests.len());
    for (request, keys) in requests.into_iter().zip(&keys) {
        let not_held = refused.by_ref().take(keys.len()).flatten().next();
        match not_held {
            Some(shard) => answers.push(Some(Err(WriteError::NotOwner(shard).into()))),
            None => {
                kept.push(request);
                answers.push(None);
            }
        }
    }
    let mut written = if kept.is_empty() {
        Vec::new()
    } else {
        batch(kept).await
    }
    .into_iter();
    answers
        .into_iter()
        .map(|answer| match answer {
            Some(refused) => refused,
            None => written
                .next()
                .unwrap_or_else(|| Err(WriteError::not_answered().into())),
        })
        .collect()
}

/// The answer to a batch of one request (a writer's `handle`, which runs
/// the batch path with one message).
pub fn sole_answer<T>(mut answers: Vec<Result<T, WriteError>>) -> Result<T, WriteError> {
    answers
        .pop()
        .unwrap_or_else(|| Err(WriteError::not_answered()))
}
