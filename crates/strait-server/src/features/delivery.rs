//! Delivery to local accounts' resources.

use std::sync::Arc;

use crate::router::Resource;
use crate::server::ServerState;
use strait_store::{WriteOp, WriteOutcome};
use strait_wire::Stanza;

/// Sends to one bound resource; false if it is not bound (or cannot take more).
pub fn to_full(state: &ServerState, bare: &str, resource: &str, stanza: Stanza) -> bool {
    match state.router.resource(bare, resource) {
        Some(r) => r.send(stanza),
        None => false,
    }
}

/// Sends a copy to every available resource of `bare`, with `to` set to that resource's full
/// JID when `readdress` is true. Returns how many took it.
pub fn to_available(state: &ServerState, bare: &str, stanza: &Stanza, readdress: bool) -> usize {
    state
        .router
        .resources(bare)
        .iter()
        .filter(|r| r.is_available())
        .filter(|r| {
            let mut s = stanza.clone();
            if readdress {
                s.to = Some(r.full.clone());
            }
            r.send(s)
        })
        .count()
}

/// Sends a message to the resources a bare-JID message goes to (RFC 6121 §8.5.2.1.1),
/// without storing it first (used to re-route what a closed session never wrote).
pub fn message_to_bare(state: &ServerState, bare: &str, stanza: &Stanza) -> usize {
    redeliver(state, bare, stanza, None)
}

/// Sends a message a session could not deliver to the resources a bare-JID message goes to;
/// `durable` is its stored copy, if it has one, which they take over.
pub fn redeliver(state: &ServerState, bare: &str, stanza: &Stanza, durable: Option<i64>) -> usize {
    state
        .router
        .message_targets_of(bare)
        .into_iter()
        .filter(|r| match durable {
            Some(id) => r.send_durable(stanza.clone(), id),
            None => r.send(stanza.clone()),
        })
        .count()
}

/// Where a message went.
#[derive(Debug, Default)]
pub struct Delivered {
    /// The resources that took it.
    pub resources: Vec<String>,
    /// Whether it was stored for the account before delivery (and so is safe even if no
    /// resource took it).
    pub stored: bool,
}

/// The writes a message needs before it is delivered (the sender's and the recipient's
/// archive copies, the copy held until a client acknowledges it, or the offline copy): they
/// are committed together, one transaction and one commit per message.
#[derive(Default)]
pub struct Writes {
    ops: Vec<WriteOp>,
    /// The message's archived form ([`super::mam::stored_form`]) once one of its archive
    /// copies made it: the other copy stores the same text, which the store then keeps once.
    pub stored: Option<String>,
}

impl Writes {
    pub fn push(&mut self, op: Option<WriteOp>) {
        self.ops.extend(op);
    }

    /// Commits what was collected, with `push` (an offline push) last, and returns the push's
    /// outcome. Archive failures are logged. Nothing is written when there is nothing to write.
    pub async fn commit(
        &mut self,
        state: &ServerState,
        push: Option<WriteOp>,
    ) -> Option<WriteOutcome> {
        self.queue(state, push).await
    }

    /// [`Writes::commit`] in two steps: what was collected is queued for the store's writer
    /// when this is called, and the returned future waits for the commit.
    fn queue(
        &mut self,
        state: &ServerState,
        push: Option<WriteOp>,
    ) -> impl std::future::Future<Output = Option<WriteOutcome>> + Send + 'static {
        let has_push = push.is_some();
        let mut ops = std::mem::take(&mut self.ops);
        ops.extend(push);
        let owners = archive_owners(&ops);
        let empty = ops.is_empty();
        let outcomes = state.queue_writes(ops);
        async move {
            if empty {
                return None;
            }
            let mut outcomes = outcomes.await;
            let pushed = if has_push { outcomes.pop() } else { None };
            log_archive_outcomes(owners, outcomes);
            pushed
        }
    }

    /// Queues what was collected (no offline push) for the store's writer when this is
    /// called, without waiting for the commit (failures are logged): `None`. When too many
    /// such writes are already pending ([`crate::server::MAX_DETACHED_WRITES`]), queues them
    /// as [`Writes::queue`] does and returns what waits for their commit.
    fn queue_detached(
        &mut self,
        state: &ServerState,
    ) -> Option<impl std::future::Future<Output = Option<WriteOutcome>> + Send + 'static> {
        if self.ops.is_empty() {
            return None;
        }
        let ops = std::mem::take(&mut self.ops);
        let owners = archive_owners(&ops);
        let done = Box::new(move |outcomes| log_archive_outcomes(owners, outcomes));
        let refused = state.queue_detached(ops, done)?;
        self.ops = refused;
        Some(self.queue(state, None))
    }
}

/// For each op, the account whose archive it writes to, if it is an archive write.
fn archive_owners(ops: &[WriteOp]) -> Vec<Option<String>> {
    ops.iter()
        .map(|op| match op {
            WriteOp::Archive { owner, .. } => Some(owner.clone()),
            _ => None,
        })
        .collect()
}

fn log_archive_outcomes(owners: Vec<Option<String>>, outcomes: Vec<WriteOutcome>) {
    for (owner, outcome) in owners.into_iter().zip(outcomes) {
        if let Some(owner) = owner {
            super::mam::log_outcome(&owner, Some(outcome));
        }
    }
}

/// Sends a message to the resources a bare-JID message goes to (RFC 6121 §8.5.2.1.1),
/// committing `writes` first.
pub async fn message_to_bare_durable(
    state: &ServerState,
    bare: &str,
    stanza: &Stanza,
    writes: &mut Writes,
) -> Delivered {
    let targets = state.router.message_targets_of(bare);
    send_message(state, bare, targets, stanza, writes).await
}

/// Sends a message to one bound resource (nothing happens when it is not bound), committing
/// `writes` first when it is.
pub async fn message_to_full(
    state: &ServerState,
    bare: &str,
    resource: &str,
    stanza: &Stanza,
    writes: &mut Writes,
) -> Delivered {
    let targets: Vec<Arc<Resource>> = state.router.resource(bare, resource).into_iter().collect();
    send_message(state, bare, targets, stanza, writes).await
}

/// The reliability rule: when a target acknowledges stanzas (XEP-0198) and the message is one
/// that would be kept offline, it is stored first and travels with its row id; the row is
/// deleted when a client has it, so losing the connection or the server loses nothing.
///
/// When no copy is held, the message goes out as soon as its archive copies are queued, and
/// nothing waits for their commit: delivered to every online resource that should get it,
/// the sender's stanza counts as handled (XEP-0198; the reliability contract asks for
/// delivery or storage before the acknowledgement), and the archive copies follow a few
/// milliseconds later, in queue order. A MAM query waits for what was queued before it, so a
/// client that saw the message finds it in the archive. Only while the store's writer is far
/// behind ([`crate::server::MAX_DETACHED_WRITES`] batches) does this wait for the commit,
/// which slows the sender down to what the writer commits.
async fn send_message(
    state: &ServerState,
    bare: &str,
    targets: Vec<Arc<Resource>>,
    stanza: &Stanza,
    writes: &mut Writes,
) -> Delivered {
    if targets.is_empty() {
        return Delivered::default();
    }
    let hold = if targets.iter().any(|r| r.acks) {
        super::offline::push_op(bare, stanza, usize::MAX)
    } else {
        None
    };
    if hold.is_none() {
        let committed = writes.queue_detached(state);
        let resources = targets
            .into_iter()
            .filter(|r| r.send(stanza.clone()))
            .map(|r| r.resource.clone())
            .collect();
        if let Some(committed) = committed {
            committed.await;
        }
        return Delivered {
            resources,
            stored: false,
        };
    }
    let durable = match writes.commit(state, hold).await {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            // Delivered without that guarantee.
            tracing::debug!(
                account = bare,
                "message delivered without a stored copy: {e}"
            );
            None
        }
        None => None,
    };
    let resources = targets
        .into_iter()
        .filter(|r| match durable {
            Some(id) => r.send_durable(stanza.clone(), id),
            None => r.send(stanza.clone()),
        })
        .map(|r| r.resource.clone())
        .collect();
    Delivered {
        resources,
        stored: durable.is_some(),
    }
}

/// Whether `bare` is an account here: bound sessions prove it without a store read, and so
/// does a recent read ([`crate::router::Router::offline_recipient`]).
pub async fn account_exists(state: &ServerState, bare: &str) -> bool {
    if state.router.is_online(bare) || state.router.offline_recipient(bare).is_some() {
        return true;
    }
    let b = bare.to_owned();
    match state.store(move |s| s.account_exists(&b)).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("account lookup: {e}");
            false
        }
    }
}
