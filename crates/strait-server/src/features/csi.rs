//! Client State Indication (XEP-0352): a client in the background says `<inactive/>`, and
//! the server holds back what is not urgent for it (presence updates, chat states) until the
//! client says `<active/>` or something urgent arrives, saving the device's radio and battery.
//!
//! The queue is bounded: only the newest presence per contact resource and the newest chat
//! state per sender are kept; past [`MAX_QUEUED`] entries everything is written out. Order is
//! kept: an urgent stanza (a message with content, an IQ, a subscription request) first
//! flushes the queue, then goes out itself.

use strait_wire::{Stanza, StanzaKind, ns};

pub const NS: &str = "urn:xmpp:csi:0";
/// The stream feature advertised after bind.
pub const FEATURE: &str = "<csi xmlns='urn:xmpp:csi:0'/>";
/// Most stanzas held for an inactive client.
pub const MAX_QUEUED: usize = 256;

const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// Children that may accompany a chat state without making the message urgent.
const INCIDENTAL: &[&str] = &[CHATSTATES, "urn:xmpp:sid:0", "urn:xmpp:hints"];

/// One connection's client state and held stanzas.
#[derive(Default, Debug)]
pub struct Csi {
    inactive: bool,
    /// Held stanzas, oldest first, each with the key that a newer one replaces.
    queue: Vec<(String, Stanza)>,
}

/// What the server holds back for an inactive client, and under which key.
fn hold_key(s: &Stanza) -> Option<String> {
    let from = s.from.as_deref().unwrap_or("");
    match s.kind {
        StanzaKind::Presence if matches!(s.type_.as_deref(), None | Some("unavailable")) => {
            Some(format!("p {from}"))
        }
        StanzaKind::Message if is_chat_state_only(s) => Some(format!("c {from}")),
        _ => None,
    }
}

fn is_chat_state_only(m: &Stanza) -> bool {
    m.type_.as_deref() != Some("error")
        && m.children().iter().any(|c| c.ns == CHATSTATES)
        && m.children().iter().all(|c| {
            INCIDENTAL.contains(&c.ns.as_str()) || (c.ns == ns::CLIENT && c.name == "thread")
        })
}

impl Csi {
    pub fn is_inactive(&self) -> bool {
        self.inactive
    }

    /// `<inactive/>`: start holding.
    pub fn set_inactive(&mut self) {
        self.inactive = true;
    }

    /// `<active/>`: stop holding; returns the held stanzas to write now.
    pub fn set_active(&mut self) -> Vec<Stanza> {
        self.inactive = false;
        self.take()
    }

    fn take(&mut self) -> Vec<Stanza> {
        std::mem::take(&mut self.queue)
            .into_iter()
            .map(|(_, s)| s)
            .collect()
    }

    /// A stanza that must go out now whatever the client state (a stored message): returns
    /// what was held before it, to write first.
    pub fn flush_before_urgent(&mut self) -> Vec<Stanza> {
        self.take()
    }

    /// A stanza for the client: returns what to write now (possibly nothing).
    pub fn offer(&mut self, s: Stanza) -> Vec<Stanza> {
        if !self.inactive {
            return vec![s];
        }
        match hold_key(&s) {
            Some(key) => {
                self.queue.retain(|(k, _)| *k != key);
                self.queue.push((key, s));
                if self.queue.len() > MAX_QUEUED {
                    self.take()
                } else {
                    Vec::new()
                }
            }
            None => {
                let mut out = self.take();
                out.push(s);
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::offline::parse_stored;

    fn st(xml: &str) -> Stanza {
        parse_stored(xml).unwrap()
    }

    fn ids(v: &[Stanza]) -> Vec<&str> {
        v.iter().map(|s| s.id.as_deref().unwrap_or("")).collect()
    }

    #[test]
    fn holds_presence_and_chat_states_until_urgent() {
        let mut c = Csi::default();
        assert_eq!(c.offer(st("<presence id='p0' from='a@x/r'/>")).len(), 1);
        c.set_inactive();
        assert!(c.offer(st("<presence id='p1' from='a@x/r'/>")).is_empty());
        assert!(c.offer(st("<presence id='p2' from='b@x/r'/>")).is_empty());
        // Newest presence per contact wins.
        assert!(c.offer(st("<presence id='p3' from='a@x/r'/>")).is_empty());
        assert!(
            c.offer(st(
                "<message id='c1' from='a@x/r' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
            ))
            .is_empty()
        );
        let out = c.offer(st(
            "<message id='m1' from='a@x/r' type='chat'><body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        ));
        assert_eq!(ids(&out), ["p2", "p3", "c1", "m1"]);
        // Subscription requests and IQs are urgent.
        assert_eq!(
            c.offer(st("<presence id='s' type='subscribe' from='z@x'/>"))
                .len(),
            1
        );
        assert!(c.offer(st("<presence id='p4' from='a@x/r'/>")).is_empty());
        assert_eq!(ids(&c.set_active()), ["p4"]);
        assert_eq!(c.offer(st("<presence id='p5' from='a@x/r'/>")).len(), 1);
    }

    #[test]
    fn queue_is_bounded() {
        let mut c = Csi::default();
        c.set_inactive();
        let mut written = 0;
        for i in 0..=MAX_QUEUED {
            written += c.offer(st(&format!("<presence from='u{i}@x/r'/>"))).len();
        }
        assert_eq!(written, MAX_QUEUED + 1);
        assert!(c.set_active().is_empty());
    }
}
