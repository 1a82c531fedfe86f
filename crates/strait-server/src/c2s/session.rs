//! An established client session (after resource binding): checks and stamps addresses,
//! then hands each stanza to the router or the feature that owns it.

use crate::accounts;
use crate::features::{self, error_reply};
use crate::server::ServerState;
use std::collections::HashSet;
use std::sync::Arc;
use strait_wire::{
    Stanza, StanzaError, StanzaErrorCondition, StanzaKind, StreamError, StreamErrorCondition,
};

pub struct Session {
    pub(crate) state: Arc<ServerState>,
    /// `local@domain`, normalized.
    pub(crate) bare: String,
    pub(crate) domain: String,
    pub(crate) resource: String,
    pub(crate) full: String,
    pub(crate) conn_id: u64,
    /// Whether this resource has sent initial presence and not gone unavailable since.
    pub(crate) available: bool,
    /// Entities this resource sent directed available presence to (RFC 6121 §4.6), told when it
    /// goes offline.
    pub(crate) directed: HashSet<String>,
    /// Stanzas for this client, written by the connection after each stanza is handled,
    /// each with the stored message it is (deleted once the client has it).
    replies: Vec<(Stanza, Option<i64>)>,
    /// Client State Indication (XEP-0352): what is held back while the client is inactive.
    pub(crate) csi: features::csi::Csi,
    /// The last `to` this session wrote, as written and normalized. A client mostly writes to
    /// the address it wrote to before, and normalizing (nodeprep, nameprep, resourceprep) was
    /// about 1.7 % of the server's time on the message path. Boxed: a session that never
    /// sent a stanza with a `to` pays one pointer for it.
    last_to: Option<Box<(String, jid::Jid)>>,
    /// The stored messages (row ids, ascending) written to this client from offline storage
    /// since its initial presence. A live copy of one of them may still be on its way (a copy
    /// held for another device while that device had not acknowledged it): the connection
    /// drops it instead of showing the user the message twice.
    pub(crate) flushed: Vec<i64>,
    /// The last row id of the page of stored messages written last, when that page was full
    /// and another may follow ([`features::offline::deliver_more`]); 0 when none does.
    pub(crate) offline_after: i64,
    /// The commit the last stanza handled waits for before it counts as handled (a copy
    /// held for a recipient's client, delivered before it was durable).
    settling: Option<features::delivery::Settling>,
}

impl Session {
    pub fn new(state: Arc<ServerState>, bare: &str, resource: &str, conn_id: u64) -> Self {
        let domain = bare
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or(bare)
            .to_owned();
        Session {
            state,
            bare: bare.to_owned(),
            domain,
            resource: resource.to_owned(),
            full: format!("{bare}/{resource}"),
            conn_id,
            available: false,
            directed: HashSet::new(),
            replies: Vec::new(),
            csi: features::csi::Csi::default(),
            last_to: None,
            flushed: Vec::new(),
            offline_after: 0,
            settling: None,
        }
    }

    /// [`accounts::normalize_jid`] of a `to` address, remembering the last one.
    fn normalize_to(&mut self, raw: &str) -> Result<jid::Jid, String> {
        if let Some(last) = &self.last_to
            && last.0 == raw
        {
            return Ok(last.1.clone());
        }
        let j = accounts::normalize_jid(raw)?;
        match &mut self.last_to {
            Some(last) => {
                last.0.clear();
                last.0.push_str(raw);
                last.1 = j.clone();
            }
            None => self.last_to = Some(Box::new((raw.to_owned(), j.clone()))),
        }
        Ok(j)
    }

    /// Queues a stanza for this client.
    pub(crate) fn reply(&mut self, stanza: Stanza) {
        self.replies.push((stanza, None));
    }

    /// Queues an error answer to `original` (never to an error: RFC 6120 §8.3.1).
    pub(crate) fn reply_error(&mut self, original: &Stanza, error: StanzaError) {
        if let Some(r) = error_reply(original, &error) {
            self.reply(r);
        }
    }

    /// Queues a stored message; it is deleted from the store once the client has it.
    pub(crate) fn reply_offline(&mut self, id: i64, stanza: Stanza) {
        self.replies.push((stanza, Some(id)));
    }

    pub(crate) fn take_replies(&mut self) -> Vec<(Stanza, Option<i64>)> {
        std::mem::take(&mut self.replies)
    }

    /// Notes a commit the stanza being handled waits for ([`Session::take_settling`]).
    pub(crate) fn settle_later(&mut self, settling: Option<features::delivery::Settling>) {
        if let Some(s) = settling {
            self.settling = Some(match self.settling.take() {
                // Two in one stanza (not on any path today): both.
                Some(earlier) => Box::pin(async move {
                    earlier.await;
                    s.await;
                }),
                None => s,
            });
        }
    }

    /// The commit the stanza just handled waits for before it counts as handled, if any.
    pub(crate) fn take_settling(&mut self) -> Option<features::delivery::Settling> {
        self.settling.take()
    }

    /// Handles one stanza from the client.
    pub async fn handle(&mut self, mut stanza: Stanza) -> Result<(), StreamError> {
        self.state.metrics.client_stanza(stanza.kind);
        if matches!(stanza.kind, StanzaKind::Other) && stanza.ns == features::csi::NS {
            match stanza.name.as_str() {
                "active" => {
                    let held = self.csi.set_active();
                    self.replies.extend(held.into_iter().map(|s| (s, None)));
                }
                "inactive" => self.csi.set_inactive(),
                _ => {}
            }
            return Ok(());
        }
        if matches!(stanza.kind, StanzaKind::Other) {
            return Err(StreamError::with_text(
                StreamErrorCondition::UnsupportedStanzaType,
                format!("<{}/> in {} is not supported here", stanza.name, stanza.ns),
            ));
        }
        // RFC 6120 §8.1.2.1: the server stamps the full JID; a client that claims another
        // identity is cut off.
        if let Some(from) = stanza.from.as_deref() {
            let ok = accounts::normalize_jid(from)
                .map(|j| {
                    let s = j.to_string();
                    s == self.full || s == self.bare
                })
                .unwrap_or(false);
            if !ok {
                return Err(StreamError::with_text(
                    StreamErrorCondition::InvalidFrom,
                    "the from address is not this session's",
                ));
            }
        }
        stanza.from = Some(self.full.clone());
        let to = match stanza.to.as_deref() {
            None => None,
            Some(raw) => match self.normalize_to(raw) {
                Ok(j) => {
                    if j.as_str() != raw {
                        stanza.to = Some(j.as_str().to_owned());
                    }
                    Some(j)
                }
                Err(e) => {
                    self.reply_error(
                        &stanza,
                        StanzaError::with_text(StanzaErrorCondition::JidMalformed, e),
                    );
                    return Ok(());
                }
            },
        };
        match stanza.kind {
            StanzaKind::Message => features::message::from_client(self, stanza, to).await,
            StanzaKind::Presence => features::presence::from_client(self, stanza, to).await,
            StanzaKind::Iq => features::iq::from_client(self, stanza, to).await,
            StanzaKind::Other => {}
        }
        Ok(())
    }

    /// The connection is over: unbind and tell contacts.
    pub async fn end(&mut self) {
        // A session that another one replaced (a bind of the same resource) does not tell
        // contacts the resource went away: it did not.
        let replaced = self
            .state
            .router
            .resource(&self.bare, &self.resource)
            .is_some_and(|r| r.conn_id != self.conn_id);
        self.state
            .router
            .unbind(&self.bare, &self.resource, self.conn_id);
        if self.available && !replaced {
            features::presence::went_offline(self).await;
        }
        tracing::info!(full = %self.full, "session ended");
    }
}
