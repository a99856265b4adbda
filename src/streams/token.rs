//! Client-visible stream tokens, in Synapse's exact text formats
//! (`synapse/types/__init__.py`; reference §6): the room/events component
//! [`RoomStreamToken`] (`s5`, `t3-5`, `m5~2.7~3.9`), the vector clock
//! [`MultiWriterStreamToken`] used by receipts and device lists (`5` or
//! `m5~2.7`), and the `/sync` `next_batch`/`since` token [`StreamToken`]
//! (components joined by `_`), which `/messages` also accepts as `from`/`to`.
//! Tokens are opaque to clients but are read back from them, so parsing is
//! strict and total: any malformed input is a [`TokenError`] (a `400
//! M_INVALID_PARAM`), never a panic. Vector-clock entries name writers by their
//! small integer instance id ([`WriterId`]); mapping ids to instance names is
//! the caller's job. Ordering is a partial order (`is_before_or_eq`), because
//! two vector clocks can be incomparable.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A writer's integer instance id, as it appears inside `m…` tokens.
pub type WriterId = u32;

/// Longest slice of the offending input echoed back in an error message.
const MAX_ECHO_CHARS: usize = 64;

/// A token that cannot be parsed or used. The message is meant for the client:
/// map every variant to `400 M_INVALID_PARAM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a valid `s…`, `t…-…` or `m…` room stream token.
    #[error("Invalid room stream token {0:?}")]
    InvalidRoomStreamToken(String),
    /// Not a valid multi-writer or full (`_`-joined) stream token.
    #[error("Invalid stream token {0:?}")]
    InvalidStreamToken(String),
    /// A topological (`t…`) token was used where a live position is needed.
    #[error("Can't advance a topological room stream token")]
    TopologicalAdvance,
}

fn echo(input: &str) -> String {
    input.chars().take(MAX_ECHO_CHARS).collect()
}

/// A non-negative decimal made only of ASCII digits that fits an `i64`.
fn parse_pos(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_writer_id(s: &str) -> Option<WriterId> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses the part of an `m` token after the `m`: `{min}~{id}.{pos}~…`.
/// Empty parts are skipped (tolerates the legacy `m5~`); a position not above
/// the min, or a repeated writer id, is rejected.
fn parse_vector(body: &str) -> Option<MultiWriterStreamToken> {
    let mut parts = body.split('~');
    let stream = parse_pos(parts.next()?)?;
    let mut instance_map = BTreeMap::new();
    for part in parts {
        if part.is_empty() {
            continue;
        }
        let (id, pos) = part.split_once('.')?;
        let (id, pos) = (parse_writer_id(id)?, parse_pos(pos)?);
        if pos <= stream || instance_map.insert(id, pos).is_some() {
            return None;
        }
    }
    Some(MultiWriterStreamToken {
        stream,
        instance_map,
    })
}

/// A vector clock over a stream's writers: every writer is at `stream` unless
/// listed in the instance map, whose entries are always strictly above
/// `stream` (the type keeps this invariant). Text form: plain `{stream}`, or
/// `m{stream}~{id}.{pos}~…` when some writer is ahead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MultiWriterStreamToken {
    stream: i64,
    instance_map: BTreeMap<WriterId, i64>,
}

impl MultiWriterStreamToken {
    /// Every writer at `stream`.
    pub const fn new(stream: i64) -> Self {
        MultiWriterStreamToken {
            stream,
            instance_map: BTreeMap::new(),
        }
    }

    /// `stream` is the floor (normally the id generator's `persisted_upto`);
    /// `positions` are writer positions, of which only those above the floor
    /// are kept (a repeated id keeps its largest position). This is Synapse's
    /// `from_generator` once instance names are mapped to ids.
    pub fn from_positions(
        stream: i64,
        positions: impl IntoIterator<Item = (WriterId, i64)>,
    ) -> Self {
        let mut instance_map = BTreeMap::new();
        for (id, pos) in positions {
            if pos > stream {
                let entry = instance_map.entry(id).or_insert(pos);
                *entry = (*entry).max(pos);
            }
        }
        MultiWriterStreamToken {
            stream,
            instance_map,
        }
    }

    /// The minimum position: every writer is at least here.
    pub fn stream(&self) -> i64 {
        self.stream
    }

    /// The writers ahead of [`stream`](Self::stream), by id.
    pub fn instance_map(&self) -> &BTreeMap<WriterId, i64> {
        &self.instance_map
    }

    /// The position of writer `id` at this token.
    pub fn stream_pos_for_writer(&self, id: WriterId) -> i64 {
        self.instance_map.get(&id).copied().unwrap_or(self.stream)
    }

    /// The largest position mentioned by this token.
    pub fn max_stream_pos(&self) -> i64 {
        self.instance_map
            .values()
            .copied()
            .max()
            .unwrap_or(self.stream)
    }

    /// The least token at or after both: component-wise max, dropping entries
    /// no longer above the new minimum.
    pub fn copy_and_advance(&self, other: &Self) -> Self {
        let stream = self.stream.max(other.stream);
        let writers = self.instance_map.keys().chain(other.instance_map.keys());
        let positions: Vec<(WriterId, i64)> = writers
            .map(|&id| {
                let pos = self
                    .stream_pos_for_writer(id)
                    .max(other.stream_pos_for_writer(id));
                (id, pos)
            })
            .collect();
        Self::from_positions(stream, positions)
    }

    /// `self <= other` in every component. A partial order: `!(a <= b)` does
    /// not imply `b <= a`.
    pub fn is_before_or_eq(&self, other: &Self) -> bool {
        vector_le(
            self.stream,
            &self.instance_map,
            other.stream,
            &other.instance_map,
        )
    }

    /// Clamps every position to at most `max` (Synapse's `bound_stream_token`).
    pub fn bound(&self, max: i64) -> Self {
        if self.max_stream_pos() <= max {
            return self.clone();
        }
        let stream = self.stream.min(max);
        Self::from_positions(
            stream,
            self.instance_map
                .iter()
                .map(|(&id, &pos)| (id, pos.min(max))),
        )
    }

    fn fmt_vector(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.stream)?;
        for (id, pos) in &self.instance_map {
            write!(f, "~{id}.{pos}")?;
        }
        Ok(())
    }
}

fn vector_le(
    a_stream: i64,
    a_map: &BTreeMap<WriterId, i64>,
    b_stream: i64,
    b_map: &BTreeMap<WriterId, i64>,
) -> bool {
    if a_stream > b_stream {
        return false;
    }
    a_map.keys().chain(b_map.keys()).all(|id| {
        let a = a_map.get(id).copied().unwrap_or(a_stream);
        let b = b_map.get(id).copied().unwrap_or(b_stream);
        a <= b
    })
}

impl fmt::Display for MultiWriterStreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.instance_map.is_empty() {
            write!(f, "{}", self.stream)
        } else {
            self.fmt_vector(f)
        }
    }
}

impl FromStr for MultiWriterStreamToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = if s.starts_with(|c: char| c.is_ascii_digit()) {
            parse_pos(s).map(Self::new)
        } else if let Some(body) = s.strip_prefix('m') {
            parse_vector(body)
        } else {
            None
        };
        parsed.ok_or_else(|| TokenError::InvalidStreamToken(echo(s)))
    }
}

impl TryFrom<String> for MultiWriterStreamToken {
    type Error = TokenError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MultiWriterStreamToken> for String {
    fn from(token: MultiWriterStreamToken) -> String {
        token.to_string()
    }
}

/// A position in a room's event stream: the point just after an event.
///
/// * `Live` — by `stream_ordering`: `s{stream}`, or `m{min}~{id}.{pos}~…` when
///   some event persister is ahead of the minimum (vector clock).
/// * `Topological` — for `/messages` pagination, ordered by
///   `(depth, stream_ordering)`: `t{depth}-{stream}`. It never carries a vector
///   clock.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RoomStreamToken {
    Live(MultiWriterStreamToken),
    Topological { depth: i64, stream: i64 },
}

impl Default for RoomStreamToken {
    fn default() -> Self {
        Self::live(0)
    }
}

impl RoomStreamToken {
    /// `s{stream}`.
    pub const fn live(stream: i64) -> Self {
        RoomStreamToken::Live(MultiWriterStreamToken::new(stream))
    }

    /// `t{depth}-{stream}`.
    pub const fn topological(depth: i64, stream: i64) -> Self {
        RoomStreamToken::Topological { depth, stream }
    }

    /// A live token from a floor and writer positions; see
    /// [`MultiWriterStreamToken::from_positions`].
    pub fn from_positions(
        stream: i64,
        positions: impl IntoIterator<Item = (WriterId, i64)>,
    ) -> Self {
        RoomStreamToken::Live(MultiWriterStreamToken::from_positions(stream, positions))
    }

    /// The stream ordering (the minimum, for a vector clock).
    pub fn stream(&self) -> i64 {
        match self {
            RoomStreamToken::Live(clock) => clock.stream,
            RoomStreamToken::Topological { stream, .. } => *stream,
        }
    }

    /// The depth of a topological token.
    pub fn depth(&self) -> Option<i64> {
        match self {
            RoomStreamToken::Live(_) => None,
            RoomStreamToken::Topological { depth, .. } => Some(*depth),
        }
    }

    /// `(depth, stream)` of a topological token.
    pub fn as_historical_tuple(&self) -> Option<(i64, i64)> {
        match self {
            RoomStreamToken::Live(_) => None,
            RoomStreamToken::Topological { depth, stream } => Some((*depth, *stream)),
        }
    }

    /// The vector clock of a live token.
    pub fn as_live(&self) -> Option<&MultiWriterStreamToken> {
        match self {
            RoomStreamToken::Live(clock) => Some(clock),
            RoomStreamToken::Topological { .. } => None,
        }
    }

    fn parts(&self) -> (i64, Option<&BTreeMap<WriterId, i64>>) {
        match self {
            RoomStreamToken::Live(clock) => (clock.stream, Some(&clock.instance_map)),
            RoomStreamToken::Topological { stream, .. } => (*stream, None),
        }
    }

    /// The position of event persister `id` at this token (the stream
    /// ordering itself for a topological token).
    pub fn stream_pos_for_writer(&self, id: WriterId) -> i64 {
        match self {
            RoomStreamToken::Live(clock) => clock.stream_pos_for_writer(id),
            RoomStreamToken::Topological { stream, .. } => *stream,
        }
    }

    /// The largest stream ordering mentioned by this token.
    pub fn max_stream_pos(&self) -> i64 {
        match self {
            RoomStreamToken::Live(clock) => clock.max_stream_pos(),
            RoomStreamToken::Topological { stream, .. } => *stream,
        }
    }

    /// The least live token at or after both. Topological tokens cannot be
    /// advanced ([`TokenError::TopologicalAdvance`]).
    pub fn copy_and_advance(&self, other: &Self) -> Result<Self, TokenError> {
        match (self, other) {
            (RoomStreamToken::Live(a), RoomStreamToken::Live(b)) => {
                Ok(RoomStreamToken::Live(a.copy_and_advance(b)))
            }
            _ => Err(TokenError::TopologicalAdvance),
        }
    }

    /// `self <= other` by stream orderings, per writer (Synapse's comparison:
    /// the depth of a topological token is not consulted). A partial order.
    pub fn is_before_or_eq(&self, other: &Self) -> bool {
        let empty = BTreeMap::new();
        let (a_stream, a_map) = self.parts();
        let (b_stream, b_map) = other.parts();
        vector_le(
            a_stream,
            a_map.unwrap_or(&empty),
            b_stream,
            b_map.unwrap_or(&empty),
        )
    }

    /// Clamps every stream position to at most `max`. (Synapse only bounds
    /// live tokens; a topological token keeps its depth and has its stream
    /// ordering clamped.)
    pub fn bound(&self, max: i64) -> Self {
        match self {
            RoomStreamToken::Live(clock) => RoomStreamToken::Live(clock.bound(max)),
            RoomStreamToken::Topological { depth, stream } => RoomStreamToken::Topological {
                depth: *depth,
                stream: (*stream).min(max),
            },
        }
    }
}

impl fmt::Display for RoomStreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoomStreamToken::Topological { depth, stream } => write!(f, "t{depth}-{stream}"),
            RoomStreamToken::Live(clock) if clock.instance_map.is_empty() => {
                write!(f, "s{}", clock.stream)
            }
            RoomStreamToken::Live(clock) => clock.fmt_vector(f),
        }
    }
}

impl FromStr for RoomStreamToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = if let Some(body) = s.strip_prefix('s') {
            parse_pos(body).map(Self::live)
        } else if let Some(body) = s.strip_prefix('t') {
            let (depth, stream) = body.split_once('-').unwrap_or((body, ""));
            parse_pos(depth)
                .zip(parse_pos(stream))
                .map(|(depth, stream)| Self::topological(depth, stream))
        } else if let Some(body) = s.strip_prefix('m') {
            parse_vector(body).map(RoomStreamToken::Live)
        } else {
            None
        };
        parsed.ok_or_else(|| TokenError::InvalidRoomStreamToken(echo(s)))
    }
}

impl TryFrom<String> for RoomStreamToken {
    type Error = TokenError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RoomStreamToken> for String {
    fn from(token: RoomStreamToken) -> String {
        token.to_string()
    }
}

/// One component of a [`StreamToken`] with a new value, for
/// [`StreamToken::copy_and_advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamKey {
    Room(RoomStreamToken),
    Presence(i64),
    Typing(i64),
    Receipts(MultiWriterStreamToken),
    AccountData(i64),
    PushRules(i64),
    ToDevice(i64),
    DeviceLists(MultiWriterStreamToken),
}

/// The `/sync` token (`next_batch`, `since`), also `/messages` `start`/`end`:
/// one position per stream, joined by `_` in this order (the first eight of
/// Synapse's components, same order):
/// `{room}_{presence}_{typing}_{receipts}_{account_data}_{push_rules}_{to_device}_{device_lists}`,
/// e.g. `s2633508_17_338_6732159_1082514_541479_274711_265584`.
/// Parsing right-pads missing components with `0` (older, shorter tokens) and
/// rejects extra components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamToken {
    pub room: RoomStreamToken,
    pub presence: i64,
    pub typing: i64,
    pub receipts: MultiWriterStreamToken,
    pub account_data: i64,
    pub push_rules: i64,
    pub to_device: i64,
    pub device_lists: MultiWriterStreamToken,
}

/// `/messages` `from`/`to`: clients send either a full [`StreamToken`] or a
/// bare [`RoomStreamToken`]; both parse as a `StreamToken` (a bare room token
/// is a one-component token). Use [`parse_pagination`] for the room position.
pub type PaginationToken = StreamToken;

/// The room position of a `/messages` `from`/`to` value, given either as a
/// full `StreamToken` or as a bare `RoomStreamToken`.
pub fn parse_pagination(s: &str) -> Result<RoomStreamToken, TokenError> {
    s.parse::<StreamToken>().map(|token| token.room)
}

impl StreamToken {
    /// Number of `_`-separated components.
    pub const COMPONENTS: usize = 8;

    /// Every stream at 0.
    pub const START: StreamToken = StreamToken {
        room: RoomStreamToken::live(0),
        presence: 0,
        typing: 0,
        receipts: MultiWriterStreamToken::new(0),
        account_data: 0,
        push_rules: 0,
        to_device: 0,
        device_lists: MultiWriterStreamToken::new(0),
    };

    /// Advances one component if the new value is after the old one: vector
    /// components take the component-wise max, integers are replaced only by a
    /// larger value. Fails only for a topological room position.
    pub fn copy_and_advance(&self, key: StreamKey) -> Result<Self, TokenError> {
        let mut token = self.clone();
        match key {
            StreamKey::Room(room) => token.room = token.room.copy_and_advance(&room)?,
            StreamKey::Receipts(r) => token.receipts = token.receipts.copy_and_advance(&r),
            StreamKey::DeviceLists(d) => {
                token.device_lists = token.device_lists.copy_and_advance(&d)
            }
            StreamKey::Presence(v) => token.presence = token.presence.max(v),
            StreamKey::Typing(v) => token.typing = token.typing.max(v),
            StreamKey::AccountData(v) => token.account_data = token.account_data.max(v),
            StreamKey::PushRules(v) => token.push_rules = token.push_rules.max(v),
            StreamKey::ToDevice(v) => token.to_device = token.to_device.max(v),
        }
        Ok(token)
    }

    /// Replaces one component unconditionally.
    pub fn copy_and_replace(&self, key: StreamKey) -> Self {
        let mut token = self.clone();
        token.replace(key);
        token
    }

    /// Sets the component `key` is for, in place.
    pub fn replace(&mut self, key: StreamKey) {
        match key {
            StreamKey::Room(room) => self.room = room,
            StreamKey::Receipts(r) => self.receipts = r,
            StreamKey::DeviceLists(d) => self.device_lists = d,
            StreamKey::Presence(v) => self.presence = v,
            StreamKey::Typing(v) => self.typing = v,
            StreamKey::AccountData(v) => self.account_data = v,
            StreamKey::PushRules(v) => self.push_rules = v,
            StreamKey::ToDevice(v) => self.to_device = v,
        }
    }

    /// `self <= other` in every component except typing (the typing stream can
    /// reset). A partial order.
    pub fn is_before_or_eq(&self, other: &Self) -> bool {
        self.room.is_before_or_eq(&other.room)
            && self.presence <= other.presence
            && self.receipts.is_before_or_eq(&other.receipts)
            && self.account_data <= other.account_data
            && self.push_rules <= other.push_rules
            && self.to_device <= other.to_device
            && self.device_lists.is_before_or_eq(&other.device_lists)
    }
}

impl Default for StreamToken {
    fn default() -> Self {
        StreamToken::START
    }
}

impl fmt::Display for StreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{}_{}_{}_{}_{}_{}_{}",
            self.room,
            self.presence,
            self.typing,
            self.receipts,
            self.account_data,
            self.push_rules,
            self.to_device,
            self.device_lists,
        )
    }
}

impl FromStr for StreamToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || TokenError::InvalidStreamToken(echo(s));
        let mut parts = [""; StreamToken::COMPONENTS];
        let mut count = 0;
        for part in s.split('_') {
            let slot = parts.get_mut(count).ok_or_else(invalid)?;
            *slot = part;
            count += 1;
        }
        for slot in parts.iter_mut().skip(count) {
            *slot = "0";
        }
        let [room, presence, typing, receipts, account_data, push_rules, to_device, device_lists] =
            parts;
        let int = |p: &str| parse_pos(p).ok_or_else(invalid);
        Ok(StreamToken {
            room: room.parse().map_err(|_| invalid())?,
            presence: int(presence)?,
            typing: int(typing)?,
            receipts: receipts.parse().map_err(|_| invalid())?,
            account_data: int(account_data)?,
            push_rules: int(push_rules)?,
            to_device: int(to_device)?,
            device_lists: device_lists.parse().map_err(|_| invalid())?,
        })
    }
}

impl TryFrom<String> for StreamToken {
    type Error = TokenError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<StreamToken> for String {
    fn from(token: StreamToken) -> String {
        token.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic PRNG (xorshift64*) for property-style tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pos(&mut self) -> i64 {
            match self.below(4) {
                0 => 0,
                1 => i64::MAX - self.below(3) as i64,
                _ => self.below(10_000) as i64,
            }
        }
        fn clock(&mut self) -> MultiWriterStreamToken {
            let stream = self.pos();
            let n = self.below(4);
            let positions: Vec<(WriterId, i64)> = (0..n)
                .map(|_| {
                    let id = match self.below(3) {
                        0 => u32::MAX,
                        _ => self.below(6) as u32,
                    };
                    (id, stream.saturating_add(self.below(50) as i64))
                })
                .collect();
            MultiWriterStreamToken::from_positions(stream, positions)
        }
        fn room(&mut self) -> RoomStreamToken {
            match self.below(3) {
                0 => RoomStreamToken::topological(self.pos(), self.pos()),
                _ => RoomStreamToken::Live(self.clock()),
            }
        }
        fn stream_token(&mut self) -> StreamToken {
            StreamToken {
                room: self.room(),
                presence: self.pos(),
                typing: self.pos(),
                receipts: self.clock(),
                account_data: self.pos(),
                push_rules: self.pos(),
                to_device: self.pos(),
                device_lists: self.clock(),
            }
        }
    }

    fn room(s: &str) -> RoomStreamToken {
        match s.parse() {
            Ok(t) => t,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn multi(s: &str) -> MultiWriterStreamToken {
        match s.parse() {
            Ok(t) => t,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn stream(s: &str) -> StreamToken {
        match s.parse() {
            Ok(t) => t,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    #[test]
    fn room_forms_parse() {
        assert_eq!(room("s2633508"), RoomStreamToken::live(2633508));
        assert_eq!(
            room("t426-2633508"),
            RoomStreamToken::topological(426, 2633508)
        );
        let m = room("m56~2.58~3.59");
        assert_eq!(m.stream(), 56);
        assert_eq!(m.stream_pos_for_writer(2), 58);
        assert_eq!(m.stream_pos_for_writer(3), 59);
        assert_eq!(m.stream_pos_for_writer(7), 56);
        assert_eq!(m.max_stream_pos(), 59);
        assert_eq!(m.depth(), None);
        assert_eq!(room("t3-9").as_historical_tuple(), Some((3, 9)));
        assert_eq!(room("t3-9").max_stream_pos(), 9);
    }

    #[test]
    fn display_canonical_forms() {
        assert_eq!(RoomStreamToken::live(5).to_string(), "s5");
        assert_eq!(RoomStreamToken::topological(4, 5).to_string(), "t4-5");
        let m = RoomStreamToken::from_positions(5, [(3, 9), (2, 7), (4, 5), (1, 2)]);
        assert_eq!(m.to_string(), "m5~2.7~3.9");
        // Nobody ahead of the minimum: plain form.
        assert_eq!(
            RoomStreamToken::from_positions(5, [(1, 5), (2, 3)]).to_string(),
            "s5"
        );
        assert_eq!(
            MultiWriterStreamToken::from_positions(5, [(1, 4)]).to_string(),
            "5"
        );
        assert_eq!(
            MultiWriterStreamToken::from_positions(5, [(1, 6)]).to_string(),
            "m5~1.6"
        );
        assert_eq!(
            StreamToken::START.to_string(),
            "s0_0_0_0_0_0_0_0",
            "START is all zero"
        );
    }

    #[test]
    fn legacy_m_forms_tolerated() {
        assert_eq!(room("m5~"), RoomStreamToken::live(5));
        assert_eq!(room("m5~").to_string(), "s5");
        assert_eq!(room("m5"), RoomStreamToken::live(5));
        assert_eq!(room("m5~~2.7~"), room("m5~2.7"));
        assert_eq!(multi("m5~"), MultiWriterStreamToken::new(5));
        assert_eq!(multi("m5~").to_string(), "5");
    }

    #[test]
    fn malformed_room_tokens_are_errors() {
        let bad = [
            "",
            "x1",
            "s",
            "s-1",
            "s+1",
            "s 1",
            " s1",
            "s1 ",
            "s1.5",
            "S1",
            "t5",
            "t",
            "t-",
            "t5-",
            "t-5",
            "t5-3-2",
            "t-1-2",
            "t+5-3",
            "m",
            "m~",
            "m~1.2",
            "m5~1",
            "m5~1.",
            "m5~.7",
            "m5~1.7.8",
            "m5~a.7",
            "m5~1.a",
            "m5~1.5",
            "m5~1.4",
            "m5~1.7~1.8",
            "m-5~1.7",
            "s1_a",
            "s١",
            "sé",
            "s9223372036854775808",
            "s99999999999999999999999",
            "t9223372036854775808-1",
            "t1-9223372036854775808",
            "m5~4294967296.7",
            "m9223372036854775808",
            "m5~1.9223372036854775808",
        ];
        for input in bad {
            let parsed = input.parse::<RoomStreamToken>();
            assert!(parsed.is_err(), "{input:?} parsed as {parsed:?}");
        }
        assert_eq!(
            "x1".parse::<RoomStreamToken>(),
            Err(TokenError::InvalidRoomStreamToken("x1".into()))
        );
        assert_eq!(
            room("s9223372036854775807").stream(),
            i64::MAX,
            "largest position still parses"
        );
    }

    #[test]
    fn malformed_multi_writer_tokens_are_errors() {
        let bad = [
            "",
            "s1",
            "x1",
            "-1",
            "+1",
            "1a",
            "1~2.3",
            "m",
            "m~",
            "m5~2",
            "m5~2.5",
            "m5~2.7~2.9",
            "9223372036854775808",
            "1_2",
        ];
        for input in bad {
            let parsed = input.parse::<MultiWriterStreamToken>();
            assert!(parsed.is_err(), "{input:?} parsed as {parsed:?}");
        }
        assert_eq!(multi("0"), MultiWriterStreamToken::new(0));
        assert_eq!(multi("m5~2.7").stream_pos_for_writer(2), 7);
    }

    #[test]
    fn malformed_stream_tokens_are_errors() {
        let bad = [
            "",
            "_",
            "x1",
            "s",
            "s-1",
            "t5",
            "m~",
            "s1_a",
            "s1_",
            "s1__2",
            "s1_2_3_x4",
            "s1_2_3_4_5_6_7_8_9",
            "s1_2_3_4_5_6_7_8_",
            "s2633508_17_338_6732159_1082514_541479_274711_265584_1_379_4242_4141_4343",
            "s1_-2",
            "s1_2_3_s4",
            "s1_9223372036854775808",
            "s1_2_3_m4~1.3",
            "s1 _2",
        ];
        for input in bad {
            let parsed = input.parse::<StreamToken>();
            assert!(parsed.is_err(), "{input:?} parsed as {parsed:?}");
            assert!(parse_pagination(input).is_err(), "{input:?} as pagination");
        }
        assert_eq!(
            "s1_a".parse::<StreamToken>(),
            Err(TokenError::InvalidStreamToken("s1_a".into()))
        );
    }

    #[test]
    fn error_messages_are_client_safe() {
        let long = format!("x{}", "9".repeat(10_000));
        let err = long.parse::<StreamToken>().err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("Invalid stream token"), "{msg}");
        assert!(msg.len() < 100, "input echo is truncated: {msg}");
        let ctl = "s\u{0}\n".parse::<RoomStreamToken>().err();
        let msg = ctl.map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(msg, "Invalid room stream token \"s\\0\\n\"");
    }

    #[test]
    fn short_stream_tokens_are_padded() {
        let t = stream("s12_4_0_1");
        assert_eq!(t.room, RoomStreamToken::live(12));
        assert_eq!(t.presence, 4);
        assert_eq!(t.receipts, MultiWriterStreamToken::new(1));
        assert_eq!(t.device_lists, MultiWriterStreamToken::new(0));
        assert_eq!(t.to_string(), "s12_4_0_1_0_0_0_0");
        assert_eq!(stream("s0"), StreamToken::START);
        let full = stream("m5~2.7_17_338_m9~1.12_1082514_541479_274711_m3~4.5");
        assert_eq!(full.room.stream_pos_for_writer(2), 7);
        assert_eq!(full.typing, 338);
        assert_eq!(full.receipts.stream_pos_for_writer(1), 12);
        assert_eq!(full.to_device, 274711);
        assert_eq!(full.device_lists.stream_pos_for_writer(4), 5);
        assert_eq!(
            full.to_string(),
            "m5~2.7_17_338_m9~1.12_1082514_541479_274711_m3~4.5"
        );
    }

    #[test]
    fn pagination_accepts_full_and_bare_tokens() {
        assert_eq!(
            parse_pagination("t5-10"),
            Ok(RoomStreamToken::topological(5, 10))
        );
        assert_eq!(parse_pagination("s10"), Ok(RoomStreamToken::live(10)));
        assert_eq!(parse_pagination("m5~2.7"), Ok(room("m5~2.7")));
        assert_eq!(
            parse_pagination("t5-10_1_2_3_4_5_6_7"),
            Ok(RoomStreamToken::topological(5, 10))
        );
        let as_pagination: Result<PaginationToken, _> = "s3_1".parse();
        assert_eq!(as_pagination.map(|t| t.room), Ok(RoomStreamToken::live(3)));
    }

    #[test]
    fn every_form_round_trips() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let r = rng.room();
            let text = r.to_string();
            assert_eq!(text.parse::<RoomStreamToken>(), Ok(r.clone()), "{text}");
            assert_eq!(room(&text).to_string(), text);

            let m = rng.clock();
            let text = m.to_string();
            assert_eq!(
                text.parse::<MultiWriterStreamToken>(),
                Ok(m.clone()),
                "{text}"
            );

            let t = rng.stream_token();
            let text = t.to_string();
            assert_eq!(text.parse::<StreamToken>(), Ok(t.clone()), "{text}");
            assert_eq!(stream(&text).to_string(), text);
            assert_eq!(parse_pagination(&text), Ok(t.room.clone()));
        }
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet: Vec<char> = "smt0123456789~._- xé9".chars().collect();
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        for _ in 0..20_000 {
            let len = rng.below(14) as usize;
            let input: String = (0..len)
                .filter_map(|_| {
                    let i = rng.below(alphabet.len() as u64) as usize;
                    alphabet.get(i).copied()
                })
                .collect();
            // Whatever parses must re-serialise to something that parses to
            // the same token.
            if let Ok(t) = input.parse::<RoomStreamToken>() {
                assert_eq!(t.to_string().parse::<RoomStreamToken>(), Ok(t));
            }
            if let Ok(t) = input.parse::<MultiWriterStreamToken>() {
                assert_eq!(t.to_string().parse::<MultiWriterStreamToken>(), Ok(t));
            }
            if let Ok(t) = input.parse::<StreamToken>() {
                assert_eq!(t.to_string().parse::<StreamToken>(), Ok(t));
            }
            let _ = parse_pagination(&input);
        }
    }

    #[test]
    fn serde_uses_text_form() {
        // serde (de)serialises through exactly these conversions.
        fn is_serde<T: Serialize + for<'de> Deserialize<'de>>() {}
        is_serde::<StreamToken>();
        is_serde::<RoomStreamToken>();
        is_serde::<MultiWriterStreamToken>();
        assert_eq!(String::from(StreamToken::START), "s0_0_0_0_0_0_0_0");
        assert_eq!(String::from(room("m5~2.7")), "m5~2.7");
        assert_eq!(String::from(multi("m5~2.7")), "m5~2.7");
        assert_eq!(
            StreamToken::try_from("s1_2".to_string()),
            Ok(stream("s1_2"))
        );
        assert!(RoomStreamToken::try_from("s".to_string()).is_err());
        assert!(MultiWriterStreamToken::try_from("m".to_string()).is_err());
    }

    #[test]
    fn vector_ordering_is_partial() {
        let (a, b) = (room("m5~1.7"), room("m5~2.7"));
        assert!(
            !a.is_before_or_eq(&b) && !b.is_before_or_eq(&a),
            "incomparable"
        );
        assert!(a.is_before_or_eq(&a));
        assert!(room("s3").is_before_or_eq(&room("s5")));
        assert!(!room("s5").is_before_or_eq(&room("s3")));
        assert!(room("s5").is_before_or_eq(&a));
        assert!(!a.is_before_or_eq(&room("s6")), "writer 1 at 7 > 6");
        assert!(!room("s6").is_before_or_eq(&a), "min 6 > 5");
        assert!(a.is_before_or_eq(&room("s7")));
        assert!(a.is_before_or_eq(&room("m6~1.7")));
        assert!(room("m5~1.7~2.6").is_before_or_eq(&room("m6~1.8")));
        // Topological tokens compare by stream ordering only, as in Synapse.
        assert!(room("t9-3").is_before_or_eq(&room("t1-3")));
        assert!(room("t1-3").is_before_or_eq(&room("s3")));
        assert!(!room("t1-4").is_before_or_eq(&room("s3")));
        let (x, y) = (multi("m5~1.7"), multi("m5~2.7"));
        assert!(!x.is_before_or_eq(&y) && !y.is_before_or_eq(&x));
        assert!(multi("5").is_before_or_eq(&x));
    }

    #[test]
    fn stream_token_ordering_skips_typing() {
        let a = stream("s5_1_100_3_4_5_6_7");
        let b = stream("s5_1_0_3_4_5_6_7");
        assert!(a.is_before_or_eq(&b), "typing reset is ignored");
        assert!(b.is_before_or_eq(&a));
        for bigger in [
            "s6_1_0_3_4_5_6_7",
            "s5_2_0_3_4_5_6_7",
            "s5_1_0_m3~1.4_4_5_6_7",
            "s5_1_0_3_5_5_6_7",
            "s5_1_0_3_4_6_6_7",
            "s5_1_0_3_4_5_7_7",
            "s5_1_0_3_4_5_6_8",
        ] {
            let c = stream(bigger);
            assert!(a.is_before_or_eq(&c), "{bigger}");
            assert!(!c.is_before_or_eq(&a), "{bigger}");
        }
        let r1 = stream("m5~1.7_0_0_m3~2.4");
        let r2 = stream("m5~2.7_0_0_m3~1.4");
        assert!(!r1.is_before_or_eq(&r2) && !r2.is_before_or_eq(&r1));
        assert!(StreamToken::START.is_before_or_eq(&a));
    }

    #[test]
    fn copy_and_advance_vectors() {
        let merged = room("m5~1.7").copy_and_advance(&room("m6~2.8"));
        assert_eq!(merged, Ok(room("m6~1.7~2.8")));
        assert_eq!(room("m5~1.7").copy_and_advance(&room("s8")), Ok(room("s8")));
        assert_eq!(room("s8").copy_and_advance(&room("s3")), Ok(room("s8")));
        assert_eq!(
            room("t1-5").copy_and_advance(&room("s8")),
            Err(TokenError::TopologicalAdvance)
        );
        assert_eq!(
            room("s8").copy_and_advance(&room("t0-5")),
            Err(TokenError::TopologicalAdvance)
        );
        assert_eq!(
            multi("m3~4.9").copy_and_advance(&multi("m4~4.5~5.6")),
            multi("m4~4.9~5.6")
        );
        // Advancing never goes backwards.
        let mut rng = Rng(42);
        for _ in 0..2_000 {
            let (a, b) = (rng.clock(), rng.clock());
            let c = a.copy_and_advance(&b);
            assert!(
                a.is_before_or_eq(&c) && b.is_before_or_eq(&c),
                "{a} {b} {c}"
            );
            assert_eq!(c, b.copy_and_advance(&a));
        }
    }

    #[test]
    fn stream_token_copy_and_advance() {
        let t = stream("s5_1_9_m3~1.4_4_5_6_7");
        let up = t.copy_and_advance(StreamKey::Presence(3));
        assert_eq!(up.map(|u| u.presence), Ok(3));
        let same = t.copy_and_advance(StreamKey::ToDevice(2));
        assert_eq!(same.as_ref().map(|u| u.to_device), Ok(6), "never backwards");
        assert_eq!(
            t.copy_and_advance(StreamKey::Typing(0)).map(|u| u.typing),
            Ok(9)
        );
        let r = t.copy_and_advance(StreamKey::Receipts(multi("m3~2.5")));
        assert_eq!(
            r.map(|u| u.receipts.to_string()),
            Ok("m3~1.4~2.5".to_string())
        );
        let d = t.copy_and_advance(StreamKey::DeviceLists(multi("9")));
        assert_eq!(d.map(|u| u.device_lists), Ok(multi("9")));
        let room_up = t.copy_and_advance(StreamKey::Room(room("m5~2.6")));
        assert_eq!(
            room_up.map(|u| u.to_string()),
            Ok("m5~2.6_1_9_m3~1.4_4_5_6_7".to_string())
        );
        assert_eq!(
            t.copy_and_advance(StreamKey::Room(room("t2-9"))),
            Err(TokenError::TopologicalAdvance)
        );
        let replaced = t.copy_and_replace(StreamKey::Room(room("t2-9")));
        assert_eq!(replaced.to_string(), "t2-9_1_9_m3~1.4_4_5_6_7");
    }

    #[test]
    fn bound_clamps_positions() {
        let t = room("m5~1.7~2.9");
        assert_eq!(t.bound(10), t);
        assert_eq!(t.bound(9), t);
        assert_eq!(t.bound(8), room("m5~1.7~2.8"));
        assert_eq!(t.bound(7), room("m5~1.7~2.7"));
        assert_eq!(t.bound(5), room("s5"));
        assert_eq!(t.bound(4), room("s4"));
        assert_eq!(room("s12").bound(10), room("s10"));
        assert_eq!(room("t3-12").bound(10), room("t3-10"));
        assert_eq!(multi("m5~1.7").bound(6), multi("m5~1.6"));
        let mut rng = Rng(7);
        for _ in 0..2_000 {
            let a = rng.clock();
            let max = rng.pos();
            let b = a.bound(max);
            assert!(b.max_stream_pos() <= max);
            assert!(b.is_before_or_eq(&a));
        }
    }
}
