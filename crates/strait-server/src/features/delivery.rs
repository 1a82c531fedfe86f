//! Delivery to local accounts' resources.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::router::Resource;
use crate::server::ServerState;
use strait_store::{WriteDone, WriteOp, WriteOutcome};
use strait_wire::Stanza;

/// A held copy's commit, delivered before it ([`send_message`]): ready once its row is
/// written (or failed to be: see [`FailedHolds`]). The sender's stanza counts as handled
/// (XEP-0198) only when it is.
pub type Settling = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Copies held for clients that were delivered but whose rows the store then failed to
/// write: a session that ends with one unacknowledged hands it on as a message that was never
/// stored, instead of taking its absence from the store for another device's
/// acknowledgement (c2s `finish`). Empty unless the store fails; bounded, the oldest going
/// first.
#[derive(Default)]
pub struct FailedHolds(Mutex<VecDeque<i64>>);

impl FailedHolds {
    const MAX: usize = 4_096;

    fn add(&self, id: i64) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == Self::MAX {
            q.pop_front();
        }
        q.push_back(id);
    }

    /// Whether the held copy `id` was never written.
    pub fn contains(&self, id: i64) -> bool {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        !q.is_empty() && q.contains(&id)
    }
}

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
            // Stored: what a busy device does not take now stays stored for the account.
            Some(id) => r.offer_durable(stanza.clone(), id),
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
    /// The commit of a copy held for a client, delivered before its row was written.
    pub settling: Option<Settling>,
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
        let (refused, _) = state.queue_detached(ops, done)?;
        self.ops = refused;
        Some(self.queue(state, None))
    }

    /// Queues `hold` (a copy held under the reserved row id `id`) on its own, as a write
    /// nobody waits for: the store holds such copies back for a while, so that the client's
    /// acknowledgement cancels most of them unwritten (what was collected with `push` goes
    /// first, with [`Writes::queue_detached`]). The returned future tells whether the hold
    /// was written (or cancelled), once it is; a failure is logged and remembered
    /// ([`FailedHolds`]) whether anybody waits or not. The bool is true when too many holds
    /// are already pending ([`crate::server::MAX_HELD_WRITES`]): the hold was queued as a
    /// write somebody waits for, and the caller must wait (backpressure).
    fn queue_hold(
        &mut self,
        state: &ServerState,
        hold: WriteOp,
        id: i64,
        bare: &str,
    ) -> (impl Future<Output = bool> + Send + 'static, bool) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let failed = Arc::clone(&state.failed_holds);
        let account = bare.to_owned();
        let done: WriteDone = Box::new(move |mut outcomes: Vec<WriteOutcome>| {
            let written = match outcomes.pop() {
                Some(Ok(_)) => true,
                Some(Err(e)) => {
                    tracing::error!(account, id, "a delivered message's held copy: {e}");
                    failed.add(id);
                    false
                }
                None => {
                    failed.add(id);
                    false
                }
            };
            let _ = tx.send(written);
        });
        let wait = match state.queue_held(hold, done) {
            None => false,
            Some((op, done)) => {
                state.store.write_batch(vec![op], done);
                true
            }
        };
        // The writer always calls back; if it stopped, the hold was not written and the
        // callback, dropped unrun, could not say so.
        let failed = Arc::clone(&state.failed_holds);
        let written = async move {
            match rx.await {
                Ok(written) => written,
                Err(_) => {
                    failed.add(id);
                    false
                }
            }
        };
        (written, wait)
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
/// that would be kept offline, a copy is stored for the account and travels with its row id;
/// the row is deleted when a client has it, so losing the connection or the server loses
/// nothing.
///
/// The row's id is reserved first, its write queued (with the message's archive copies, as
/// writes nobody waits for, which share commits with other messages'), and the message
/// delivered at once. What the sender hears waits for the commit instead: its stanza counts
/// as handled (XEP-0198 `h`) only once the copy is durable, or the recipient acknowledged the
/// message, cancelling the copy the store still held back ([`Writes::settling`], which the
/// c2s connection keeps), so a crash before the commit loses nothing the sender was told was
/// safe. A client's acknowledgement deletes the row behind its insert (the store's writer is
/// first in, first out), and a session that ends waits for what was queued before it reads
/// which copies are still kept. When no resource took the message, the sender's session waits
/// for the commit here: the message is then safe only as the stored copy. (Held copies cost
/// three to five times the server CPU of a message to a client without stream management
/// while each one was committed before delivery, a commit per message: bench/RESULTS.md, run
/// BK.)
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
    let Some(mut hold) = hold else {
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
    };
    let id = match state.store.offline_reserve_id() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(account = bare, "no row id for a held copy: {e}");
            return send_without_hold(targets, stanza);
        }
    };
    if let WriteOp::OfflinePush { id: slot, .. } = &mut hold {
        *slot = Some(id);
    }
    // Queued before delivery: a client's acknowledgement, which deletes the row, is queued
    // behind it. The archive copies first, on their own: held copies are held back.
    let committed = writes.queue_detached(state);
    let (written, wait) = writes.queue_hold(state, hold, id, bare);
    let resources: Vec<String> = targets
        .into_iter()
        .filter(|r| r.send_durable(stanza.clone(), id))
        .map(|r| r.resource.clone())
        .collect();
    if let Some(committed) = committed {
        committed.await;
    }
    if resources.is_empty() || wait {
        if !wait {
            // Nobody took it: the stored copy is all there is, and the sender hears back
            // once it is on disk, now (a write somebody waits for takes the held-back
            // copies with it), not once the store would have let it go.
            state.store_barrier().await;
        }
        let stored = written.await;
        return Delivered { resources, stored };
    }
    writes.settling = Some(Box::pin(async move {
        written.await;
    }));
    Delivered {
        resources,
        stored: true,
    }
}

/// Delivers without a stored copy (the store gave no row id).
fn send_without_hold(targets: Vec<Arc<Resource>>, stanza: &Stanza) -> Delivered {
    Delivered {
        resources: targets
            .into_iter()
            .filter(|r| r.send(stanza.clone()))
            .map(|r| r.resource.clone())
            .collect(),
        stored: false,
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
