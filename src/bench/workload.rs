//! The named workloads and the plan each one becomes: who exists, which rooms
//! they are in, who keeps a `/sync` loop open, and the operations (messages or
//! joins) the measured phase performs, each with the room whose recipients
//! must see it.

use clap::ValueEnum;

use crate::bench::tracker::{RoomIndex, UserIndex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Many small rooms, everyone sending.
    Chat,
    /// `chat`, with a typing notification before and a read receipt after
    /// every message: the ephemeral streams under the same load.
    ChatEphemeral,
    /// `chat`, with every message also sent as a to-device message to the
    /// other members' devices (an encrypted room's key sharing).
    #[value(name = "chat-todevice")]
    ChatToDevice,
    /// One room with many members: fan-out of every message to all of them.
    BigRoom,
    /// Many long-polling clients held open while a few send: memory per
    /// connection and wake-up latency.
    Idle,
    /// Many users joining one room at once, watched by its first members.
    JoinStorm,
    /// The content repository: concurrent 10 MB and 1 MB uploads, their
    /// downloads and thumbnails, against a plain file copy, with the
    /// server's memory while 20 uploads of 10 MB are in flight
    /// (`--messages`: uploads of each size; `--scratch-dir`: where the copy runs).
    Media,
    /// Not a workload: reads the JSON lines of earlier runs (`--json-in`) and
    /// prints a markdown table, with ratios between servers when there are two.
    Summary,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Chat => "chat",
            Workload::ChatEphemeral => "chat-ephemeral",
            Workload::ChatToDevice => "chat-todevice",
            Workload::BigRoom => "big-room",
            Workload::Idle => "idle",
            Workload::JoinStorm => "join-storm",
            Workload::Media => "media",
            Workload::Summary => "summary",
        }
    }

    /// The shape of each workload; every field can be overridden.
    pub fn default_shape(self) -> Shape {
        match self {
            Workload::Chat
            | Workload::ChatEphemeral
            | Workload::ChatToDevice
            | Workload::Summary => Shape {
                users: 500,
                rooms: 50,
                per_room: 10,
                senders: 500,
                messages: 20,
            },
            Workload::BigRoom => Shape {
                users: 1000,
                rooms: 1,
                per_room: 1000,
                senders: 10,
                messages: 20,
            },
            Workload::Idle => Shape {
                users: 10_000,
                rooms: 1,
                per_room: 100,
                senders: 5,
                messages: 20,
            },
            Workload::JoinStorm => Shape {
                users: 1000,
                rooms: 1,
                per_room: 10,
                senders: 0,
                messages: 0,
            },
            Workload::Media => Shape {
                users: 1,
                rooms: 1,
                per_room: 1,
                senders: 1,
                messages: 40,
            },
        }
    }

    pub fn default_load(self) -> Load {
        match self {
            // Everyone sending: 200 of the 500 users with a message in
            // flight. Fewer measure one write batch's round trip rather than
            // what the server can carry (64 in flight cap a server at 64
            // divided by its send latency).
            Workload::Chat
            | Workload::ChatEphemeral
            | Workload::ChatToDevice
            | Workload::Summary => Load::Closed { concurrency: 200 },
            Workload::BigRoom => Load::Closed { concurrency: 10 },
            // A trickle: wake-up latency, not throughput.
            Workload::Idle => Load::Open { rate: 10.0 },
            Workload::JoinStorm => Load::Closed { concurrency: 100 },
            Workload::Media => Load::Closed { concurrency: 20 },
        }
    }
}

/// How many users, rooms and messages a run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub users: usize,
    pub rooms: usize,
    /// Members per room (for `join-storm`: members before the storm, who watch it).
    pub per_room: usize,
    pub senders: usize,
    /// Messages per sender.
    pub messages: usize,
}

/// How operations are issued in the measured phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `concurrency` requests in flight; the next leaves when one returns.
    Closed { concurrency: usize },
    /// A fixed arrival rate (operations per second) however slow the answers,
    /// so queueing shows in the latencies instead of hiding in fewer requests.
    Open { rate: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Message { sender: UserIndex, room: RoomIndex },
    Join { user: UserIndex, room: RoomIndex },
}

impl Operation {
    pub fn room(self) -> RoomIndex {
        match self {
            Operation::Message { room, .. } | Operation::Join { room, .. } => room,
        }
    }

    pub fn user(self) -> UserIndex {
        match self {
            Operation::Message { sender, .. } => sender,
            Operation::Join { user, .. } => user,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub users: usize,
    /// Members of each room in the order they join during set-up; the first
    /// one creates the room.
    pub rooms: Vec<Vec<UserIndex>>,
    /// Who keeps a `/sync` loop running.
    pub syncing: Vec<UserIndex>,
    /// Per room, who must see each of its operations in their sync.
    pub recipients: Vec<Vec<UserIndex>>,
    pub operations: Vec<Operation>,
}

impl Plan {
    /// Lays the shape out. Room `r` holds users `r*K .. r*K+K` (wrapping
    /// around, so rooms overlap when R×K exceeds N); senders are taken one
    /// room at a time so they spread over every room; sender `s` sends its
    /// `m`th message to the `m`th of its rooms, round-robin; the operation
    /// list interleaves senders so that every room is busy from the start.
    pub fn new(workload: Workload, shape: Shape) -> Result<Plan, String> {
        let Shape {
            users,
            rooms,
            per_room,
            senders,
            messages,
        } = shape;
        if users == 0 {
            return Err("--users must be at least 1".into());
        }
        if per_room == 0 || per_room > users {
            return Err(format!(
                "--per-room must be between 1 and --users ({users}), not {per_room}"
            ));
        }
        if workload == Workload::JoinStorm {
            if per_room == users {
                return Err("join-storm needs more --users than --per-room (the watchers)".into());
            }
            let watchers: Vec<UserIndex> = (0..per_room as UserIndex).collect();
            return Ok(Plan {
                users,
                rooms: vec![watchers.clone()],
                syncing: watchers.clone(),
                recipients: vec![watchers],
                operations: (per_room..users)
                    .map(|user| Operation::Join {
                        user: user as UserIndex,
                        room: 0,
                    })
                    .collect(),
            });
        }
        if rooms == 0 {
            return Err("--rooms must be at least 1".into());
        }
        let members: Vec<Vec<UserIndex>> = (0..rooms)
            .map(|room| {
                (0..per_room)
                    .map(|j| ((room * per_room + j) % users) as UserIndex)
                    .collect()
            })
            .collect();
        let mut rooms_of: Vec<Vec<RoomIndex>> = vec![Vec::new(); users];
        for (room, list) in members.iter().enumerate() {
            for &user in list {
                rooms_of[user as usize].push(room as RoomIndex);
            }
        }
        let mut sender_list = Vec::with_capacity(senders);
        let mut chosen = vec![false; users];
        'pick: for j in 0..per_room {
            for list in &members {
                if sender_list.len() == senders {
                    break 'pick;
                }
                let user = list[j];
                if !chosen[user as usize] {
                    chosen[user as usize] = true;
                    sender_list.push(user);
                }
            }
        }
        if sender_list.len() < senders {
            return Err(format!(
                "--senders ({senders}) exceeds the {} users who are in a room",
                sender_list.len()
            ));
        }
        let mut operations = Vec::with_capacity(senders * messages);
        for m in 0..messages {
            for &sender in &sender_list {
                let own = &rooms_of[sender as usize];
                operations.push(Operation::Message {
                    sender,
                    room: own[m % own.len()],
                });
            }
        }
        Ok(Plan {
            users,
            recipients: members.clone(),
            rooms: members,
            syncing: (0..users as UserIndex).collect(),
            operations,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn shape(
        users: usize,
        rooms: usize,
        per_room: usize,
        senders: usize,
        messages: usize,
    ) -> Shape {
        Shape {
            users,
            rooms,
            per_room,
            senders,
            messages,
        }
    }

    #[test]
    fn chat_puts_everyone_in_one_room_of_ten() {
        let plan = Plan::new(Workload::Chat, Workload::Chat.default_shape()).unwrap();
        assert_eq!(plan.rooms.len(), 50);
        assert!(plan.rooms.iter().all(|m| m.len() == 10));
        let mut everyone: Vec<_> = plan.rooms.concat();
        everyone.sort();
        assert_eq!(everyone, (0..500).collect::<Vec<_>>());
        assert_eq!(plan.operations.len(), 500 * 20);
        assert_eq!(plan.syncing.len(), 500);
        assert_eq!(plan.recipients, plan.rooms);
    }

    #[test]
    fn every_operation_goes_to_a_room_its_sender_is_in() {
        let plan = Plan::new(Workload::Chat, shape(7, 4, 3, 5, 6)).unwrap();
        for operation in &plan.operations {
            assert!(plan.rooms[operation.room() as usize].contains(&operation.user()));
        }
        // 4 rooms of 3 over 7 users: users sit in one or two rooms, and the
        // ones in two send alternately to both.
        assert_eq!(plan.rooms[2], vec![6, 0, 1]);
        let user0_rooms: Vec<_> = plan
            .operations
            .iter()
            .filter(|o| o.user() == 0)
            .map(|o| o.room())
            .collect();
        assert_eq!(user0_rooms, vec![0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn senders_spread_over_rooms_before_doubling_up() {
        let plan = Plan::new(Workload::Chat, shape(500, 50, 10, 50, 1)).unwrap();
        let mut rooms: Vec<_> = plan.operations.iter().map(|o| o.room()).collect();
        rooms.sort();
        rooms.dedup();
        assert_eq!(rooms.len(), 50, "one sender in each room");
    }

    #[test]
    fn big_room_fans_out_to_every_member() {
        let plan = Plan::new(Workload::BigRoom, Workload::BigRoom.default_shape()).unwrap();
        assert_eq!(plan.rooms.len(), 1);
        assert_eq!(plan.recipients[0].len(), 1000);
        assert_eq!(plan.operations.len(), 10 * 20);
        assert!(plan.operations.iter().all(|o| o.room() == 0));
    }

    #[test]
    fn idle_users_outside_the_room_still_sync() {
        let plan = Plan::new(Workload::Idle, Workload::Idle.default_shape()).unwrap();
        assert_eq!(plan.syncing.len(), 10_000);
        assert_eq!(plan.recipients, vec![(0..100).collect::<Vec<_>>()]);
        assert_eq!(plan.operations.len(), 100);
    }

    #[test]
    fn join_storm_watchers_see_every_join() {
        let plan = Plan::new(Workload::JoinStorm, shape(25, 1, 5, 0, 0)).unwrap();
        assert_eq!(plan.rooms, vec![vec![0, 1, 2, 3, 4]]);
        assert_eq!(plan.syncing, vec![0, 1, 2, 3, 4]);
        assert_eq!(plan.operations.len(), 20);
        assert_eq!(plan.operations[0], Operation::Join { user: 5, room: 0 });
    }

    #[test]
    fn impossible_shapes_are_refused_with_the_flag_to_fix() {
        let error = Plan::new(Workload::Chat, shape(10, 2, 11, 1, 1)).unwrap_err();
        assert!(error.contains("--per-room"), "{error}");
        let error = Plan::new(Workload::Chat, shape(10, 1, 3, 4, 1)).unwrap_err();
        assert!(error.contains("--senders"), "{error}");
        let error = Plan::new(Workload::JoinStorm, shape(5, 1, 5, 0, 0)).unwrap_err();
        assert!(error.contains("--per-room"), "{error}");
    }
}
