//! The replication protocol's commands (DESIGN §4, Synapse's grammar from
//! `reference/synapse-workers.md` §2.2-2.3): after committing, a writer
//! publishes `RDATA <stream> <instance> <token|batch> <json>` per row and
//! `POSITION <stream> <instance> <prev> <new>`; a process that connects
//! publishes `REPLICATE` and writers answer with their positions. One pub/sub
//! message is one command, as readable text, so `redis-cli subscribe` shows
//! the traffic.
//!
//! With a `replication_secret`, every line is prefixed by `SIG <hex hmac> `
//! over the rest of the line (the same HMAC as mailbox envelopes); a reader
//! with a secret drops and counts lines whose signature is missing or wrong,
//! so nothing they say is applied.

use std::fmt;

use lattice_actors::HmacKey;

/// One replication command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A row of a stream; `token` is `None` for all but the last row of a
    /// batch sharing one position.
    Rdata {
        stream: String,
        instance: String,
        token: Option<i64>,
        row: serde_json::Value,
    },
    /// The writer `instance` has advanced `stream` from `prev` to `new`.
    Position {
        stream: String,
        instance: String,
        prev: i64,
        new: i64,
    },
    /// Sent by a process that (re)connects: every writer answers with POSITIONs.
    Replicate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown replication command `{0}`")]
    Unknown(String),
    #[error("malformed {command}: {reason}")]
    Malformed {
        command: &'static str,
        reason: String,
    },
    #[error("replication line is not signed or its signature is wrong")]
    BadSignature,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Rdata {
                stream,
                instance,
                token,
                row,
            } => {
                let token = token.map_or_else(|| "batch".to_owned(), |t| t.to_string());
                write!(f, "RDATA {stream} {instance} {token} {row}")
            }
            Command::Position {
                stream,
                instance,
                prev,
                new,
            } => {
                write!(f, "POSITION {stream} {instance} {prev} {new}")
            }
            Command::Replicate => f.write_str("REPLICATE "),
        }
    }
}

impl Command {
    /// Parses one line. Blank lines are `Ok(None)`, as in Synapse.
    pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let (name, rest) = line.split_once(' ').unwrap_or((line, ""));
        match name {
            "RDATA" => {
                let malformed = |reason: &str| ParseError::Malformed {
                    command: "RDATA",
                    reason: reason.to_owned(),
                };
                let mut parts = rest.splitn(4, ' ');
                let (Some(stream), Some(instance), Some(token), Some(row)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(malformed("expected <stream> <instance> <token> <json>"));
                };
                let token = match token {
                    "batch" => None,
                    number => Some(
                        number
                            .parse::<i64>()
                            .map_err(|_| malformed("token is not a number"))?,
                    ),
                };
                let row = serde_json::from_str(row).map_err(|_| malformed("row is not JSON"))?;
                Ok(Some(Command::Rdata {
                    stream: stream.to_owned(),
                    instance: instance.to_owned(),
                    token,
                    row,
                }))
            }
            "POSITION" => {
                let malformed = |reason: &str| ParseError::Malformed {
                    command: "POSITION",
                    reason: reason.to_owned(),
                };
                let parts: Vec<&str> = rest.split(' ').collect();
                let [stream, instance, prev, new] = parts.as_slice() else {
                    return Err(malformed("expected <stream> <instance> <prev> <new>"));
                };
                let number = |text: &str| {
                    text.parse::<i64>()
                        .map_err(|_| malformed("positions must be numbers"))
                };
                Ok(Some(Command::Position {
                    stream: (*stream).to_owned(),
                    instance: (*instance).to_owned(),
                    prev: number(prev)?,
                    new: number(new)?,
                }))
            }
            "REPLICATE" => Ok(Some(Command::Replicate)),
            other => Err(ParseError::Unknown(other.chars().take(32).collect())),
        }
    }

    /// The line to publish, signed when a key is given.
    pub fn to_line(&self, key: Option<&HmacKey>) -> String {
        let line = self.to_string();
        match key {
            Some(key) => format!("SIG {} {line}", key.compute_bytes(line.as_bytes())),
            None => line,
        }
    }

    /// Reads a published line: with a key, only correctly signed lines pass.
    pub fn from_line(line: &str, key: Option<&HmacKey>) -> Result<Option<Command>, ParseError> {
        let Some(key) = key else {
            return Command::parse(line);
        };
        let Some((signature, rest)) = line.strip_prefix("SIG ").and_then(|l| l.split_once(' '))
        else {
            return Err(ParseError::BadSignature);
        };
        if !key.verify_bytes(rest.as_bytes(), signature) {
            return Err(ParseError::BadSignature);
        }
        Command::parse(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_round_trip_in_synapse_grammar() {
        let commands = [
            Command::Rdata {
                stream: "events".into(),
                instance: "events1".into(),
                token: Some(42),
                row: json!(["$ev", "!room:x", "m.room.message", "with spaces inside"]),
            },
            Command::Rdata {
                stream: "caches".into(),
                instance: "main".into(),
                token: None,
                row: json!({}),
            },
            Command::Position {
                stream: "events".into(),
                instance: "events1".into(),
                prev: 40,
                new: 42,
            },
            Command::Replicate,
        ];
        for command in commands {
            let line = command.to_string();
            assert_eq!(Command::parse(&line), Ok(Some(command.clone())), "{line}");
        }
        assert_eq!(Command::Replicate.to_string(), "REPLICATE ");
        assert_eq!(
            Command::Position {
                stream: "events".into(),
                instance: "w1".into(),
                prev: 1,
                new: 2
            }
            .to_string(),
            "POSITION events w1 1 2"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Command::parse("   "), Ok(None));
        for line in [
            "RDATA",
            "RDATA events",
            "RDATA events main x {}",
            "RDATA events main 1 {",
            "POSITION a b 1",
            "POSITION a b c d",
            "NOPE 1",
        ] {
            assert!(Command::parse(line).is_err(), "{line}");
        }
    }

    #[test]
    fn signed_lines_verify_and_tampered_or_unsigned_ones_do_not() {
        let key = HmacKey::new("secret").expect("key");
        let other = HmacKey::new("another secret").expect("key");
        let command = Command::Position {
            stream: "events".into(),
            instance: "main".into(),
            prev: 1,
            new: 9,
        };
        let line = command.to_line(Some(&key));
        assert!(line.starts_with("SIG "));
        assert_eq!(
            Command::from_line(&line, Some(&key)),
            Ok(Some(command.clone()))
        );
        assert_eq!(
            Command::from_line(&line, Some(&other)),
            Err(ParseError::BadSignature)
        );
        assert_eq!(
            Command::from_line(&line.replace(" 9", " 99"), Some(&key)),
            Err(ParseError::BadSignature)
        );
        assert_eq!(
            Command::from_line(&command.to_string(), Some(&key)),
            Err(ParseError::BadSignature)
        );
    }
}
