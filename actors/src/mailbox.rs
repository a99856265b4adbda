//! [`Mailbox`]: the one handle code uses to talk to an actor, wherever it runs.
//!
//! A mailbox is either *local* (it moves the message into the inbox of an
//! actor in this process; nothing is serialised) or *remote* (it serialises
//! the message into an [`Envelope`], hands it to a [`Transport`] for a
//! destination address and decodes the reply envelope). Both variants have
//! the same failure vocabulary, [`MailboxError`], and the same deadline
//! semantics: the caller waits at most `deadline`, and a message whose
//! deadline passed before the actor got to it is not handled at all.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::envelope::{deadline_after, Envelope, ReplyBody, ReplyErrorKind, REPLY_SUFFIX};
use crate::message::RemoteMessage;
use crate::transport::{Transport, TransportError};

/// Why a call or tell produced no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    /// The deadline passed before a reply arrived (or before the actor got to
    /// the message, in which case it was not handled).
    #[error("deadline exceeded")]
    Timeout,
    /// The destination could not be reached (transport down, actor behind a
    /// remote endpoint gone).
    #[error("destination unreachable")]
    Unreachable,
    /// A request or reply did not (de)serialise, or the far side does not
    /// know the wire name.
    #[error("decode error: {0}")]
    Decode(String),
    /// The handler answered with an error, or failed while handling.
    #[error("remote error: {0}")]
    Remote(String),
    /// The actor has stopped for good (or this process's transport is closed).
    #[error("mailbox closed")]
    Closed,
}

impl MailboxError {
    /// A short stable name of the variant, for metric labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MailboxError::Timeout => "timeout",
            MailboxError::Unreachable => "unreachable",
            MailboxError::Decode(_) => "decode",
            MailboxError::Remote(_) => "remote",
            MailboxError::Closed => "closed",
        }
    }
}

impl From<TransportError> for MailboxError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Unreachable(reason) => {
                tracing::debug!(%reason, "transport unreachable");
                MailboxError::Unreachable
            }
            TransportError::Closed => MailboxError::Closed,
        }
    }
}

/// Something in this process that accepts `M` into an actor inbox.
pub(crate) trait LocalTarget<M: RemoteMessage>: Send + Sync + 'static {
    /// Queue `msg`; `reply` receives the answer (or an error) unless `None`.
    fn enqueue(
        &self,
        msg: M,
        reply: Option<oneshot::Sender<Result<M::Reply, MailboxError>>>,
        deadline: Option<Instant>,
    ) -> Result<(), MailboxError>;

    /// For `Debug`.
    fn describe(&self) -> String;
}

struct RemoteTarget {
    transport: Arc<dyn Transport>,
    destination: String,
}

enum Inner<M: RemoteMessage> {
    Local(Arc<dyn LocalTarget<M>>),
    Remote(Arc<RemoteTarget>),
}

/// A cloneable handle to an actor accepting `M`, local or remote.
pub struct Mailbox<M: RemoteMessage> {
    inner: Inner<M>,
}

impl<M: RemoteMessage> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        let inner = match &self.inner {
            Inner::Local(t) => Inner::Local(Arc::clone(t)),
            Inner::Remote(t) => Inner::Remote(Arc::clone(t)),
        };
        Self { inner }
    }
}

impl<M: RemoteMessage> fmt::Debug for Mailbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Local(t) => write!(f, "Mailbox<{}>({})", M::WIRE_NAME, t.describe()),
            Inner::Remote(t) => write!(f, "Mailbox<{}>(remote:{})", M::WIRE_NAME, t.destination),
        }
    }
}

impl<M: RemoteMessage> Mailbox<M> {
    pub(crate) fn local(target: impl LocalTarget<M>) -> Self {
        Self {
            inner: Inner::Local(Arc::new(target)),
        }
    }

    /// A mailbox that reaches the actor serving `destination` through
    /// `transport` (see [`Endpoint`](crate::Endpoint)).
    pub fn remote(transport: Arc<dyn Transport>, destination: impl Into<String>) -> Self {
        Self {
            inner: Inner::Remote(Arc::new(RemoteTarget {
                transport,
                destination: destination.into(),
            })),
        }
    }

    /// Whether this mailbox delivers in-process.
    pub fn is_local(&self) -> bool {
        matches!(self.inner, Inner::Local(_))
    }

    /// The transport destination, for a remote mailbox.
    pub fn destination(&self) -> Option<&str> {
        match &self.inner {
            Inner::Local(_) => None,
            Inner::Remote(t) => Some(&t.destination),
        }
    }

    /// Send `msg` and wait at most `deadline` for the reply.
    pub async fn call(&self, msg: M, deadline: Duration) -> Result<M::Reply, MailboxError> {
        match &self.inner {
            Inner::Local(target) => call_local(target.as_ref(), msg, deadline).await,
            Inner::Remote(target) => call_remote(target, msg, deadline).await,
        }
    }

    /// Fire-and-forget: queue `msg` without waiting for it to be handled.
    /// Errors only if it could not even be queued. Messages told through one
    /// mailbox are handled in order. Told messages have no deadline, but
    /// over an authenticated Redis transport one of its replay window
    /// ([`RedisTransportConfig::replay_window`](crate::RedisTransportConfig::replay_window)).
    pub fn tell(&self, msg: M) -> Result<(), MailboxError> {
        match &self.inner {
            Inner::Local(target) => target.enqueue(msg, None, None),
            Inner::Remote(target) => {
                let envelope = encode_request(&msg, target.transport.instance(), None)?;
                target
                    .transport
                    .post(&target.destination, envelope)
                    .map_err(MailboxError::from)
            }
        }
    }
}

pub(crate) async fn call_local<M, T>(
    target: &T,
    msg: M,
    deadline: Duration,
) -> Result<M::Reply, MailboxError>
where
    M: RemoteMessage,
    T: LocalTarget<M> + ?Sized,
{
    let (tx, rx) = oneshot::channel();
    let at = Instant::now().checked_add(deadline);
    target.enqueue(msg, Some(tx), at)?;
    let outcome = match at {
        Some(at) => match tokio::time::timeout_at(at, rx).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(MailboxError::Timeout),
        },
        None => rx.await,
    };
    // A dropped reply channel without an answer means the actor went away.
    outcome.unwrap_or(Err(MailboxError::Closed))
}

fn encode_request<M: RemoteMessage>(
    msg: &M,
    sender: &str,
    deadline_unix_ms: Option<u64>,
) -> Result<Envelope, MailboxError> {
    let body = serde_json::to_value(msg)
        .map_err(|e| MailboxError::Decode(format!("cannot encode {}: {e}", M::WIRE_NAME)))?;
    Ok(Envelope::request(
        M::WIRE_NAME,
        sender,
        deadline_unix_ms,
        body,
    ))
}

/// A remote call, timed into the transport's
/// [`CallLatency`](crate::CallLatency): the proxy is where the caller waits,
/// so that is where its wait is measured.
async fn call_remote<M: RemoteMessage>(
    target: &RemoteTarget,
    msg: M,
    deadline: Duration,
) -> Result<M::Reply, MailboxError> {
    let started = Instant::now();
    let result = call_remote_untimed(target, msg, deadline).await;
    if let Some(calls) = target.transport.call_latency() {
        calls.record(
            M::WIRE_NAME,
            &target.destination,
            result.as_ref().map(|_| ()),
            started.elapsed(),
        );
    }
    result
}

async fn call_remote_untimed<M: RemoteMessage>(
    target: &RemoteTarget,
    msg: M,
    deadline: Duration,
) -> Result<M::Reply, MailboxError> {
    let envelope = encode_request(
        &msg,
        target.transport.instance(),
        Some(deadline_after(deadline)),
    )?;
    let reply = match tokio::time::timeout(
        deadline,
        target.transport.send(&target.destination, envelope),
    )
    .await
    {
        Ok(reply) => reply?,
        Err(_) => return Err(MailboxError::Timeout),
    };
    decode_reply::<M>(reply)
}

/// Turn a reply envelope into the caller's result.
pub(crate) fn decode_reply<M: RemoteMessage>(reply: Envelope) -> Result<M::Reply, MailboxError> {
    let expected = format!("{}{REPLY_SUFFIX}", M::WIRE_NAME);
    if reply.wire_name != expected {
        return Err(MailboxError::Decode(format!(
            "expected a {expected} envelope, got {}",
            reply.wire_name
        )));
    }
    let body: ReplyBody = serde_json::from_value(reply.body)
        .map_err(|e| MailboxError::Decode(format!("malformed reply to {}: {e}", M::WIRE_NAME)))?;
    match body {
        ReplyBody::Ok { value } => serde_json::from_value(value).map_err(|e| {
            MailboxError::Decode(format!("cannot decode reply to {}: {e}", M::WIRE_NAME))
        }),
        ReplyBody::Error { kind, message } => Err(match kind {
            ReplyErrorKind::Handler => MailboxError::Remote(message),
            ReplyErrorKind::Decode | ReplyErrorKind::UnknownMessage => {
                MailboxError::Decode(message)
            }
            ReplyErrorKind::Timeout => MailboxError::Timeout,
            ReplyErrorKind::Unavailable => MailboxError::Unreachable,
        }),
    }
}

/// The reply body a remote endpoint sends for a local mailbox error.
pub(crate) fn reply_for_error(e: MailboxError) -> ReplyBody {
    let (kind, message) = match e {
        MailboxError::Timeout => (ReplyErrorKind::Timeout, "deadline exceeded".to_owned()),
        MailboxError::Unreachable => (ReplyErrorKind::Unavailable, "unreachable".to_owned()),
        MailboxError::Closed => (ReplyErrorKind::Unavailable, "actor stopped".to_owned()),
        MailboxError::Decode(m) => (ReplyErrorKind::Decode, m),
        MailboxError::Remote(m) => (ReplyErrorKind::Handler, m),
    };
    ReplyBody::Error { kind, message }
}
