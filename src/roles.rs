//! The actors of each role (DESIGN §1). Each role is a module; the node's
//! supervisor starts the actors of the roles an instance runs, and every other
//! part of the code reaches them through mailboxes.

pub mod events;

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

    /// The roles that write a stream of their own name (`stream_writers`
    /// keys), and whether several instances may share that stream.
    pub const STREAM_WRITERS: [(Role, bool); 8] = [
        (Role::Events, true),
        (Role::Typing, false),
        (Role::ToDevice, false),
        (Role::AccountData, false),
        (Role::Receipts, true),
        (Role::Presence, false),
        (Role::PushRules, false),
        (Role::DeviceLists, true),
    ];

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
