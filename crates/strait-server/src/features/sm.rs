//! Stream Management (XEP-0198): acknowledgements both ways and session resumption.
//!
//! The connection counts the stanzas it handled from the client (`h`, answered on `<r/>`)
//! and keeps every stanza it sent until the client acknowledges it with `<a h/>`. What a
//! stanza was stored as (a message stored before delivery, or an offline message) is deleted
//! only then. When the connection is lost without a clean close, a resumable session is kept
//! ("hibernating") for the resumption window: stanzas for it queue up, and a client that
//! comes back with `<resume previd h/>` gets the unacknowledged ones again, then the queued
//! ones. When the window ends, the session ends: stored messages stay stored, other
//! unacknowledged messages go to the account's other devices or to storage.
//!
//! This module holds the protocol state and the resumption registry; the connection task
//! (`c2s::connection`) drives them.

use crate::c2s::session::Session;
use crate::router::{ConnHandle, Outbound, OutboundReceiver};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use strait_wire::Stanza;
use tokio::sync::{mpsc, oneshot};

pub const NS: &str = "urn:xmpp:sm:3";
/// The stream feature advertised after authentication.
pub const FEATURE: &str = "<sm xmlns='urn:xmpp:sm:3'/>";

/// The least time between two `<r/>`s: within it, stanzas are written without one, and the
/// next write after it carries one ...
pub const REQUEST_GAP: std::time::Duration = std::time::Duration::from_millis(25);
/// ... or, when nothing more is written, one goes on its own this long after the first
/// stanza written without one.
///
/// A request goes with every write (it costs nothing there) unless one went out less than
/// [`REQUEST_GAP`] ago. On a connection that gets a stanza now and then that is a request
/// per stanza, in the stanza's own write, as before. On a busy one (a stanza every few
/// milliseconds, where the answer used to come back before the next stanza and so every
/// stanza had a request of its own, and its client a write and the server a read, a wake-up
/// and a parse for each) it is one request for every 25 ms of stanzas, in writes that are
/// made anyway. A request on its own is a write of its own, and answered like any other:
/// sent soon after a stanza written without one, it made a busy connection's requests no
/// fewer and its writes half as many again (stanzas 25 ms apart, by hand); so it waits a
/// second, for the stanza that ends a burst. That stanza's copy may be written to disk
/// meanwhile (the store holds copies back `copy_hold_ms`, 50 ms by default, for their
/// acknowledgement); the
/// late-acknowledgement push (`ack_push_secs`) counts from the request.
pub const REQUEST_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A stanza sent to the client and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Unacked {
    pub stanza: Stanza,
    /// The account's stored message this stanza is, deleted when acknowledged.
    pub durable: Option<i64>,
}

/// The client acknowledged more stanzas than were sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountTooHigh {
    pub h: u32,
    pub sent: u32,
}

/// Stream management state of one session.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Stanzas handled from the client, modulo 2^32 (XEP-0198 §4).
    pub inbound: u32,
    /// Stanzas sent to the client, modulo 2^32.
    pub sent: u32,
    /// Sent and not acknowledged, oldest first; the last is number `sent`.
    pub unacked: VecDeque<Unacked>,
    /// When the outstanding `<r/>` was sent, if one is.
    pub requested: Option<tokio::time::Instant>,
    /// When the last `<r/>` was sent.
    pub last_request: Option<tokio::time::Instant>,
    /// When the first stanza no request covers yet was sent, if there is one.
    pub unrequested_since: Option<tokio::time::Instant>,
    /// Whether the account's push services were told of this request's delay (XEP-0357).
    pub ack_push_sent: bool,
    /// The resumption id, when the session is resumable.
    pub resume_id: Option<String>,
    /// Seconds the session is kept after its connection is lost.
    pub resume_secs: u64,
}

impl StreamState {
    /// Records a stanza written to the client.
    pub fn sent(&mut self, stanza: Stanza, durable: Option<i64>) {
        self.sent = self.sent.wrapping_add(1);
        self.unacked.push_back(Unacked { stanza, durable });
        if self.unrequested_since.is_none() {
            self.unrequested_since = Some(tokio::time::Instant::now());
        }
    }

    /// When an acknowledgement counts as late ([`crate::config::StreamManagementConfig::ack_push_secs`]):
    /// an `<r/>` outstanding since then, not yet reported, for stanzas among which is a
    /// message worth a notification.
    pub fn ack_late_at(&self, after: std::time::Duration) -> Option<tokio::time::Instant> {
        if after.is_zero() || self.ack_push_sent {
            return None;
        }
        let since = self.requested?;
        self.unacked
            .iter()
            .any(|u| u.stanza.name == "message" && super::offline::should_store(&u.stanza))
            .then_some(since + after)
    }

    /// How many stanzas the client has acknowledged so far.
    pub fn acked(&self) -> u32 {
        self.sent.wrapping_sub(self.unacked.len() as u32)
    }

    /// The client handled `h` stanzas: drops those from the queue and returns the stored
    /// messages among them, to delete.
    /// A count *behind* what was already acknowledged (a stale or repeated `<a/>`, or a
    /// `<resume/>` with an old `h`) acknowledges nothing new.
    pub fn ack(&mut self, h: u32) -> Result<Vec<i64>, CountTooHigh> {
        let new = h.wrapping_sub(self.acked());
        if new > u32::MAX / 2 {
            return Ok(Vec::new());
        }
        let new = new as usize;
        if new > self.unacked.len() {
            return Err(CountTooHigh { h, sent: self.sent });
        }
        let ids = self
            .unacked
            .drain(..new)
            .filter_map(|u| u.durable)
            .collect();
        if self.unacked.is_empty() {
            // Acknowledged unasked: nothing is left to ask about.
            self.unrequested_since = None;
        }
        Ok(ids)
    }

    /// Whether an `<r/>` should go with the write about to be made, at `now`: none is
    /// outstanding, a stanza is not covered by one yet, and the last went out at least
    /// [`REQUEST_GAP`] ago.
    pub fn wants_request(&self, now: tokio::time::Instant) -> bool {
        self.requested.is_none()
            && self.unrequested_since.is_some()
            && !self.unacked.is_empty()
            && self.last_request.is_none_or(|t| now >= t + REQUEST_GAP)
    }

    /// When an `<r/>` is due on its own, nothing else being written ([`REQUEST_AFTER`]):
    /// only for stanzas written without one.
    pub fn request_due(&self) -> Option<tokio::time::Instant> {
        if self.requested.is_some() || self.unacked.is_empty() {
            return None;
        }
        self.unrequested_since.map(|t| t + REQUEST_AFTER)
    }

    /// An `<r/>` is being sent at `now`: it covers every stanza sent so far.
    pub fn requesting(&mut self, now: tokio::time::Instant) {
        self.requested = Some(now);
        self.last_request = Some(now);
        self.ack_push_sent = false;
        self.unrequested_since = None;
    }
}

/// Parses the `h` attribute of `<a/>` or `<resume/>` (an unsignedInt).
pub fn parse_h(s: &Stanza) -> Option<u32> {
    s.attr("", "h").and_then(|h| h.parse().ok())
}

/// `<enabled/>`.
pub fn enabled_xml(resume: Option<(&str, u64)>) -> String {
    match resume {
        Some((id, max)) => format!("<enabled xmlns='{NS}' id='{id}' resume='true' max='{max}'/>"),
        None => format!("<enabled xmlns='{NS}'/>"),
    }
}

/// `<failed/>` with a stanza error condition; `h` when a resumption failed for a known
/// session is not given (the session is gone), as XEP-0198 §5 allows.
pub fn failed_xml(condition: &str, text: Option<&str>) -> String {
    let text = text
        .map(|t| {
            format!(
                "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{}</text>",
                strait_wire::escape_text(t)
            )
        })
        .unwrap_or_default();
    format!(
        "<failed xmlns='{NS}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>{text}</failed>"
    )
}

/// Everything a session is made of while no connection carries it: handed from the task
/// that holds it to the connection that resumes it.
pub struct Detached {
    pub session: Session,
    pub rx: OutboundReceiver,
    pub handle: ConnHandle,
    pub sm: StreamState,
    pub takeover: Option<mpsc::Receiver<Takeover>>,
    /// Stanzas that arrived for the session after its connection was lost, oldest first.
    pub pending: VecDeque<Outbound>,
}

/// A resuming connection's request for a session.
pub struct Takeover {
    pub reply: oneshot::Sender<Box<Detached>>,
}

struct Entry {
    bare: String,
    takeover: mpsc::Sender<Takeover>,
}

/// Resumable sessions by resumption id.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<String, Entry>>,
}

/// Why a session could not be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// No such session (never existed, expired, or belongs to another account).
    NotFound,
}

impl Registry {
    /// Registers a resumable session of `bare`; returns its resumption id and the receiving
    /// end of its takeover channel.
    pub fn register(&self, bare: &str) -> (String, mpsc::Receiver<Takeover>) {
        let (tx, rx) = mpsc::channel(1);
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.entries.lock().expect("sm registry").insert(
            id.clone(),
            Entry {
                bare: bare.to_owned(),
                takeover: tx,
            },
        );
        (id, rx)
    }

    /// Forgets a session that ended.
    pub fn remove(&self, id: &str) {
        self.entries.lock().expect("sm registry").remove(id);
    }

    /// Asks the task holding session `id` of `bare` to hand it over. Another account's id is
    /// answered exactly like an unknown one.
    pub async fn take(&self, id: &str, bare: &str) -> Result<Box<Detached>, ResumeError> {
        let tx = {
            let entries = self.entries.lock().expect("sm registry");
            match entries.get(id) {
                Some(e) if e.bare == bare => e.takeover.clone(),
                _ => return Err(ResumeError::NotFound),
            }
        };
        let (reply, answer) = oneshot::channel();
        if tx.send(Takeover { reply }).await.is_err() {
            return Err(ResumeError::NotFound);
        }
        // The holder answers at once (it is a select loop); a holder that is ending drops
        // the request instead.
        match tokio::time::timeout(std::time::Duration::from_secs(10), answer).await {
            Ok(Ok(d)) => Ok(d),
            _ => Err(ResumeError::NotFound),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("sm registry").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(n: u32) -> Stanza {
        crate::features::offline::parse_stored(&format!(
            "<message to='a@b' type='chat'><body>{n}</body></message>"
        ))
        .unwrap()
    }

    #[test]
    fn acks_drop_the_acknowledged_and_return_stored_ids() {
        let mut sm = StreamState::default();
        assert!(!sm.wants_request(tokio::time::Instant::now()));
        sm.sent(stanza(1), None);
        sm.sent(stanza(2), Some(20));
        sm.sent(stanza(3), Some(30));
        assert_eq!(sm.acked(), 0);
        assert_eq!(sm.ack(2), Ok(vec![20]));
        assert_eq!(sm.unacked.len(), 1);
        // Acknowledging the same count again is harmless.
        assert_eq!(sm.ack(2), Ok(vec![]));
        assert_eq!(
            sm.ack(4),
            Err(CountTooHigh { h: 4, sent: 3 }),
            "more than was sent"
        );
        assert_eq!(sm.ack(3), Ok(vec![30]));
        assert!(sm.unacked.is_empty());
        // A count behind the acknowledged one is stale: nothing new, no error.
        sm.sent(stanza(4), Some(40));
        assert_eq!(sm.ack(1), Ok(vec![]));
        assert_eq!(sm.unacked.len(), 1);
        assert_eq!(sm.ack(4), Ok(vec![40]));
    }

    /// A request goes with every write unless one went out less than 25 ms ago; a stanza
    /// written without one is asked about with the next write after the gap, or a second
    /// after on its own;
    /// none while one is outstanding, none when the client acknowledged everything unasked.
    #[test]
    fn ack_requests_are_at_most_one_per_gap() {
        let mut sm = StreamState::default();
        let t0 = tokio::time::Instant::now();
        assert!(!sm.wants_request(t0), "nothing sent");
        assert_eq!(sm.request_due(), None);
        sm.sent(stanza(1), None);
        assert!(
            sm.wants_request(t0),
            "the first request goes with the write"
        );
        sm.requesting(t0);
        assert!(!sm.wants_request(t0 + REQUEST_AFTER), "one is outstanding");
        assert_eq!(sm.ack(1), Ok(vec![]));
        sm.requested = None;
        assert_eq!(sm.request_due(), None, "everything acknowledged");

        // A stanza soon after the last request: written without one, asked about later.
        sm.sent(stanza(2), None);
        let since = sm.unrequested_since.unwrap();
        assert!(!sm.wants_request(t0 + REQUEST_GAP / 2));
        assert!(sm.wants_request(t0 + REQUEST_GAP));
        assert_eq!(sm.request_due(), Some(since + REQUEST_AFTER));
        sm.sent(stanza(3), None);
        assert_eq!(
            sm.request_due(),
            Some(since + REQUEST_AFTER),
            "from the first"
        );
        sm.requesting(t0 + REQUEST_GAP);
        assert_eq!(sm.request_due(), None);
        assert_eq!(sm.ack(3), Ok(vec![]));
        sm.requested = None;

        // A stanza long after the last request goes with one at once.
        sm.sent(stanza(4), None);
        assert!(sm.wants_request(t0 + REQUEST_GAP * 3));
        // Acknowledged unasked: nothing to ask about.
        assert_eq!(sm.ack(4), Ok(vec![]));
        assert!(!sm.wants_request(t0 + REQUEST_GAP * 3));
        assert_eq!(sm.request_due(), None);
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut sm = StreamState {
            sent: u32::MAX - 1,
            ..StreamState::default()
        };
        sm.sent(stanza(1), Some(1));
        sm.sent(stanza(2), Some(2));
        sm.sent(stanza(3), Some(3));
        assert_eq!(sm.sent, 1);
        assert_eq!(sm.ack(u32::MAX), Ok(vec![1]));
        assert_eq!(sm.ack(1), Ok(vec![2, 3]));
    }

    #[test]
    fn failed_and_enabled_xml() {
        assert_eq!(
            enabled_xml(Some(("abc", 300))),
            "<enabled xmlns='urn:xmpp:sm:3' id='abc' resume='true' max='300'/>"
        );
        assert_eq!(
            failed_xml("item-not-found", Some("a < b")),
            "<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>a &lt; b</text></failed>"
        );
    }

    #[tokio::test]
    async fn registry_refuses_unknown_and_foreign_ids() {
        let reg = Registry::default();
        let (id, mut rx) = reg.register("alice@x");
        assert_eq!(
            reg.take("nope", "alice@x").await.err(),
            Some(ResumeError::NotFound)
        );
        assert_eq!(
            reg.take(&id, "mallory@x").await.err(),
            Some(ResumeError::NotFound)
        );
        // A holder that drops the request: not found either.
        let holder = tokio::spawn(async move {
            let t = rx.recv().await.unwrap();
            drop(t);
        });
        assert_eq!(
            reg.take(&id, "alice@x").await.err(),
            Some(ResumeError::NotFound)
        );
        holder.await.unwrap();
        reg.remove(&id);
        assert!(reg.is_empty());
    }
}
