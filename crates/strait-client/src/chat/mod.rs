//! A logged-in account with end-to-end encryption: what `strait chat` is, and what an app links.
//!
//! [`Client::connect`] opens the account's local store (a directory: `signal.db`, the Signal
//! protocol's keys and sessions, and `chat.db`, the device id and the message history), logs in
//! (SCRAM with a password, or OAUTHBEARER with a token from the user's provider), publishes
//! the device in the OMEMO 0.3 and OMEMO 2 device lists with its bundles (open access, so that
//! users of other providers can start a session), then says it is available, so that messages
//! queued while it was away arrive. It writes OMEMO 0.3 (the Signal protocol's own format, as
//! DESIGN.md makes primary) to contacts that list 0.3 devices and OMEMO 2 to those that list
//! only OMEMO 2 ones; it reads both.
//!
//! [`Client::send`] encrypts for every device of the contact and of the account's own other
//! devices (fetching device lists and bundles as needed) and returns once the server has taken
//! responsibility for the message: its XEP-0198 acknowledgement, which a Strait server sends
//! only once the message is delivered or durably queued. A refusal (the interop boundary's
//! `policy-violation`, no consent, a suspended provider) is returned as
//! [`ChatError::Refused`] with the server's reason. [`Client::next_event`] waits for the next
//! incoming message, decrypted, with the platform's origin stamp when it comes from a
//! third-party provider's user (`urn:strait:interop:0`).
//!
//! Device lists are not read for every message: the client keeps those it heard of, the
//! contacts' and the account's own, per OMEMO version. A PEP notification replaces one at
//! once: the client's presence carries entity capabilities (XEP-0115) whose features include
//! both device lists' `+notify`, so the server pushes the lists of contacts whose presence the
//! account shares as they change (XEP-0163 §4), and their current ones as the client comes
//! online. One read from the server is trusted for [`DEVICE_LIST_TTL`] (a minute;
//! [`Client::set_device_list_ttl`]), since a contact whose presence the account does not share
//! sends no notifications; a message from a device a list lacks has the next send read it
//! again. "No OMEMO 0.3 list" is kept too, for a contact that has OMEMO 2 devices, and a
//! refusal never is. At most [`DEVICE_LISTS_MAX`] accounts; a reconnection starts afresh.
//!
//! Messages are handled as they arrive, in order (decrypted, recorded in the history), before
//! the connection acknowledges them to the server: an app that only sends still keeps what
//! arrived meanwhile ([`Client::pending_events`]). IQ requests addressed to the client, from
//! the server or anyone else, are answered as they are read and never kept (RFC 6120 §8.2.3):
//! a ping (XEP-0199) and a disco#info query (XEP-0030: [`Client::capabilities`]) with a
//! result, anything else with `service-unavailable`. Of IQ answers, only the one to the request
//! the client waits for, from where that went, is taken. A message delivered again after a lost
//! acknowledgement is recognised by its ratchet counter and not reported twice.
//!
//! After a lost connection, [`Client::reconnect`] logs in again on the same store;
//! `strait chat listen` and `with` do it by themselves, waiting longer between tries. A message
//! whose acknowledgement was lost with the connection comes again from the server, under the
//! same stanza-id (XEP-0359); the client knows the ids of what it handled (the last 2,000;
//! after a restart, those of the messages in its history) and reports such a message once.
//!
//! The local store is locked while a client has it open: two processes on one store would
//! advance the same ratchets and break each other's sessions.
//!
//! The account's devices stay in step: each message is encrypted for the account's other
//! devices too, and the server's copies of what they send and receive (XEP-0280 carbons) are
//! decrypted and reported ([`Incoming::sent_to`] marks the account's own). A device that was
//! away catches up from the account's archive (XEP-0313) on connecting: what the others
//! received and sent meanwhile. Delivery receipts
//! (XEP-0184) are asked for and given: [`Event::Delivered`].
//!
//! Files (images, voice notes, videos, documents) go as XEP-0454 media: [`Client::send_file`]
//! encrypts the file with a fresh key (AES-256-GCM), uploads the ciphertext to the server's
//! XEP-0363 service, and sends the `aesgcm://` link, which carries the key, inside an
//! encrypted message; the server only ever holds ciphertext. An incoming link is reported as
//! [`Incoming::media`], and [`Client::download`] fetches and decrypts it.
//!
//! A contact can be blocked ([`Client::block`], XEP-0191), and reported to the platform with
//! the block ([`Report`], XEP-0377): the report names the messages by the ids of this account's
//! archive copies, which the history keeps for what was received
//! ([`Client::received_stanza_ids`], [`Incoming::stanza_id`]).
//!
//! ```no_run
//! # async fn demo(token: String) -> Result<(), strait_client::chat::ChatError> {
//! use strait_client::chat::{Account, Client, Credential, Event};
//! let mut client = Client::connect(&Account {
//!     jid: "sam@chat.acme.example".into(),
//!     credential: Credential::Token(token), // a provider's user (docs/interop.md)
//!     server: "203.0.113.7:5223".parse().expect("an address"),
//!     tls_name: Some("chat.acme.example".into()),
//!     direct_tls: true,
//!     verify: strait_client::conn::Verify::PublicRoots,
//!     resource: String::new(),
//!     store: "/var/lib/acme-app/strait".into(),
//!     http_via: None,
//! })
//! .await?;
//! client.send("+31612345678@platform.example", "hello").await?;
//! if let Event::Message(m) = client.next_event().await? {
//!     println!("{}: {}", m.from, m.text);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Not here yet: group chats.

mod blocking;
mod consent;
mod devices;
mod media;
mod store;

pub use blocking::{MAX_REPORT_IDS, MAX_REPORT_TEXT, Report, ReportReason};
pub use consent::{Consent, ConsentChange, ProviderChoice};
pub use devices::{DEVICE_LIST_TTL, DEVICE_LISTS_MAX};
pub use media::{MAX_DOWNLOAD, Media};
pub use store::{Conversation, HistoryEntry, conversations, history};

use devices::DeviceLists;
use media::file_name;
use store::{device_id, open_store};

use crate::caps::{Capabilities, Identity, NS_CAPS, NS_DISCO_INFO};
use crate::conn::{self, ClientSettings, ConnError, Connection, Login, LoginError, Verify};
use crate::https::Https;
use crate::omemo::{self, Omemo};
use crate::scram::{KeyCache, Mechanism};
use crate::xml::{Element, decode};
use rand_core::{OsRng, RngCore};
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strait_signal::device::{DeviceError, DeviceV2, DeviceV03};
use strait_signal::error::SignalError;
use strait_signal::fingerprint::{
    display_groups, omemo_fingerprint, omemo_fingerprint_from_ed25519,
};
use strait_signal::media::parse_media_body;
use strait_signal::omemo::xml::v2::{self as x2, BundleV2, DeviceListV2, EncryptedV2};
use strait_signal::omemo::xml::v03::{BundleV03, DeviceListV03, EncryptedV03};
use strait_signal::omemo2::store::Omemo2Store;
use strait_signal::store::sqlite::SqliteSignalStore;
use strait_signal::store::{Address, IdentityKeyStore, SessionStore};

const NS_SM: &str = "urn:xmpp:sm:3";
const NS_INTEROP: &str = "urn:strait:interop:0";
const NS_RECEIPTS: &str = "urn:xmpp:receipts";
const NS_CARBONS: &str = "urn:xmpp:carbons:2";
const NS_MAM: &str = "urn:xmpp:mam:2";
/// Stanza-ids of messages handled that a client remembers, to drop a message the server sends
/// again ([`Client::handle`]): far more than one connection's unacknowledged messages.
const RECENT_STANZA_IDS: usize = 2000;
const NS_SID: &str = "urn:xmpp:sid:0";
const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_PING: &str = "urn:xmpp:ping";
/// The node that names this SDK in its entity capabilities (XEP-0115 §4).
pub const CAPS_NODE: &str = "urn:strait:client";
/// Archive pages fetched at most when catching up (of [`MAM_PAGE`] messages each).
const MAM_PAGES: usize = 50;
const MAM_PAGE: usize = 100;
/// Answers nobody waits for are dropped past this many (the oldest first).
const INBOX_MAX: usize = 256;
/// How long a request to the server may take before the client gives up on it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How the account proves who it is.
#[derive(Clone)]
pub enum Credential {
    /// The platform's own users (and any XMPP account): SASL SCRAM.
    Password(String),
    /// A third-party provider's users: SASL OAUTHBEARER with a token the provider signed
    /// (docs/interop.md, "Enlistment").
    Token(String),
}

/// An account and where its server and local store are.
#[derive(Clone)]
pub struct Account {
    /// The bare JID, `user@domain`.
    pub jid: String,
    pub credential: Credential,
    pub server: SocketAddr,
    /// The name the server's certificate must carry (default: the JID's domain).
    pub tls_name: Option<String>,
    /// Direct TLS (XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
    pub verify: Verify,
    /// The resource to bind; empty: `strait-<device id>`, so that the account's devices never
    /// take each other's place (the server closes a session whose resource another one binds).
    pub resource: String,
    /// The local store's directory (created, private to the user).
    pub store: PathBuf,
    /// Connect file transfers here instead of resolving the upload service's host name (the
    /// certificate must still carry that name): for a server whose `upload.<domain>` does not
    /// resolve from where the client runs.
    pub http_via: Option<SocketAddr>,
}

/// Why a chat operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the account: {0}")]
    Account(String),
    #[error("the local store ({0}): {1}")]
    Store(PathBuf, String),
    #[error("login failed: {0}")]
    Login(#[from] LoginError),
    #[error("the connection: {0}")]
    Connection(#[from] ConnError),
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    #[error("publishing this device's keys: {0}")]
    Publish(String),
    #[error("{0} has no OMEMO device this client can encrypt for ({1})")]
    NoDevices(String, String),
    #[error("encryption: {0}")]
    Crypto(#[from] DeviceError),
    /// Sharing a file failed before its message was sent.
    #[error("uploading: {0}")]
    Upload(String),
    #[error("downloading: {0}")]
    Download(String),
    /// The platform refused to read or change the consent (`item-not-found` for an unknown
    /// provider, `not-allowed` for a provider's user, ...), or has no such thing.
    #[error("consent: {0}")]
    Consent(String),
    /// The server bounced the message: the condition (`policy-violation`, `forbidden`, ...)
    /// and its text. To a contact this account blocks: `not-acceptable`, the text starting
    /// with `blocked:` (XEP-0191).
    #[error("the server refused the message: {condition}{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Refused {
        condition: String,
        text: Option<String>,
    },
    /// The server refused a block, an unblock or the block list (XEP-0191, with a XEP-0377
    /// report): the condition (`bad-request`, `jid-malformed`, ...) and its text, e.g.
    /// "at most 20 stanza-ids in a report".
    #[error("blocking: {condition}{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Blocking {
        condition: String,
        text: Option<String>,
    },
    /// The request was not sent: it is wrong as it stands (a report over the limits, an empty
    /// address, ...).
    #[error("not sent: {0}")]
    Invalid(String),
}

/// The platform's stamp on a message from a third-party provider's user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The provider's id in the platform's registry.
    pub provider: String,
    /// Its name, for the third-party section's heading.
    pub name: String,
}

/// A message received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The sender's bare JID.
    pub from: String,
    /// The text (decrypted when `encrypted`).
    pub text: String,
    /// Whether it came end-to-end encrypted (OMEMO); a plaintext message is shown as such.
    pub encrypted: bool,
    /// The sending device, for an encrypted message.
    pub device: Option<u32>,
    /// Set when a third-party provider's user sent it (its place: the third-party section).
    pub origin: Option<Origin>,
    /// When it was sent, if it waited on the server (XEP-0203 stamp).
    pub delayed: Option<String>,
    pub id: Option<String>,
    /// Set when the (encrypted) text is an `aesgcm://` link: a shared file.
    pub media: Option<Media>,
    /// Set for the copy of a message another device of this account sent (XEP-0280 carbons):
    /// its recipient. `from` is then this account.
    pub sent_to: Option<String>,
    /// For a message received: the id of this account's archive copy (XEP-0359
    /// `<stanza-id by='this account'/>`, which only this account's server writes; ids by
    /// anyone else are ignored, the sender could have written them). Kept in the history too,
    /// for a report ([`Client::received_stanza_ids`], [`Report::stanza_ids`]).
    pub stanza_id: Option<String>,
}

/// What [`Client::next_event`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Message(Box<Incoming>),
    /// A message arrived that could not be decrypted (not for this device, a broken session,
    /// an OMEMO version this client does not speak).
    Undecryptable {
        from: String,
        reason: String,
    },
    /// A contact's device confirmed it received message `id` (XEP-0184).
    Delivered {
        from: String,
        id: String,
    },
    /// A message this account sent was bounced later (the usual refusals come from
    /// [`Client::send`] itself).
    Bounced {
        id: Option<String>,
        condition: String,
        text: Option<String>,
    },
}

/// A contact's device as this store knows it (from the sessions it has with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownDevice {
    pub device: u32,
    pub omemo: Omemo,
    /// Its identity key's fingerprint, as OMEMO clients show it, to compare out of band.
    pub fingerprint: String,
}

/// What a sent message became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub id: String,
    /// The devices it was encrypted for (the contact's and this account's other devices).
    pub devices: usize,
    /// The OMEMO version it went in.
    pub omemo: Omemo,
}

/// A connected account. See the module documentation.
pub struct Client {
    conn: Connection,
    jid: String,
    device: DeviceV03<SqliteSignalStore>,
    /// The same device in OMEMO 2 (same id and identity key; its own sessions and prekeys, in
    /// the same database).
    device2: DeviceV2<SqliteSignalStore>,
    history: rusqlite::Connection,
    /// Stanzas read while waiting for something else, in order.
    inbox: VecDeque<Vec<u8>>,
    /// The IQ whose answer [`Client::iq`] waits for: its id and where it went (`None`: the
    /// account, answered by its server). Only its answer, from there, is kept.
    awaited: Option<(String, Option<String>)>,
    /// Events of the messages handled, not yet returned by [`Client::next_event`].
    events: VecDeque<Event>,
    /// The first failure while handling what arrived (a history write, a follow-up send),
    /// reported by [`Client::next_event`] after the events that did come through.
    failed: Option<ChatError>,
    /// This account's stanza-ids (XEP-0359) of the messages handled lately, oldest first, and
    /// the same as a set: the server sends a message again when the acknowledgement of it was
    /// lost with a connection, under the same id, and the user must not see it twice. Filled
    /// from the history at start; at most [`RECENT_STANZA_IDS`].
    recent_ids: (VecDeque<String>, HashSet<String>),
    /// Bundles fetched on this connection (not fetched twice).
    fetched: HashSet<(String, u32, Omemo)>,
    /// The device lists heard of lately (contacts' and the account's own), so that a send
    /// reads them from the server only when they are stale.
    lists: DeviceLists,
    /// Device lists read from the server on this client (a test's measure of round trips).
    list_reads: u64,
    next_id: u64,
    id_prefix: String,
    https: Https,
    /// The upload service and its size limit, once found.
    upload: Option<(String, Option<u64>)>,
    /// What logging in again takes.
    login: LoginData,
    /// Held while the client lives: the store's lock.
    _lock: std::fs::File,
}

/// An account's login, kept for [`Client::reconnect`].
struct LoginData {
    settings: ClientSettings,
    user: String,
    /// The password or the token.
    secret: String,
    resource: String,
    /// What the connection answers disco#info queries with, and its presence advertises.
    caps: Arc<Capabilities>,
}

/// What the SDK says it is and supports (XEP-0030), advertised in its presence (XEP-0115):
/// a client, that answers pings, gives and asks for delivery receipts, takes carbons, and
/// wants notifications of its contacts' OMEMO device lists in both versions.
fn capabilities() -> Capabilities {
    let notify: Vec<String> = [Omemo::V03, Omemo::V2]
        .iter()
        .map(|v| format!("{}+notify", v.devices_node()))
        .collect();
    let mut features = vec![NS_DISCO_INFO, NS_CAPS, NS_PING, NS_RECEIPTS, NS_CARBONS];
    features.extend(notify.iter().map(String::as_str));
    Capabilities::new(
        CAPS_NODE,
        vec![Identity {
            category: "client".into(),
            kind: "pc".into(),
            lang: None,
            name: "Strait".into(),
        }],
        &features,
    )
}

impl LoginData {
    async fn login(&self) -> Result<Connection, ChatError> {
        let who = Login {
            user: &self.user,
            password: &self.secret,
            resource: &self.resource,
            presence: false,
        };
        let mut conn = match conn::login(&self.settings, 0, &who).await {
            // A server without XEP-0198: sends are then confirmed by a ping round trip.
            Err(e) if e.kind == "sm: not offered" => {
                let mut settings = self.settings.clone();
                settings.stream_management = false;
                conn::login(&settings, 0, &who).await?
            }
            other => other?,
        };
        conn.set_capabilities(self.caps.clone());
        Ok(conn)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

impl Client {
    /// Opens the store, logs in, publishes the device's keys and goes online. See the module
    /// documentation.
    pub async fn connect(account: &Account) -> Result<Client, ChatError> {
        let jid = account.jid.trim().to_owned();
        let (local, domain) = jid
            .split_once('@')
            .filter(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('/'))
            .ok_or_else(|| ChatError::Account(format!("{jid:?} is not a bare JID user@domain")))?;
        let (lock, history) = open_store(account)?;
        let device_id = device_id(&history, account)?;
        let store_err =
            |e: &dyn std::fmt::Display| ChatError::Store(account.store.clone(), e.to_string());
        let store =
            SqliteSignalStore::open_or_generate(account.store.join("signal.db"), &mut OsRng)
                .map_err(|e| store_err(&e))?;
        let device = DeviceV03::new(&jid, device_id, store, &mut OsRng)?;
        let store2 = SqliteSignalStore::open_existing(account.store.join("signal.db"))
            .map_err(|e| store_err(&e))?;
        let identity = device
            .store()
            .identity_key_pair()
            .map_err(DeviceError::from)?;
        let device2 = DeviceV2::new(&jid, device_id, identity, store2, &mut OsRng)?;

        let tls_name = account
            .tls_name
            .clone()
            .unwrap_or_else(|| domain.to_owned());
        let tls = conn::tls_config(&account.verify, false)
            .map_err(|e| ChatError::Account(format!("TLS: {e:#}")))?;
        let mut settings = ClientSettings {
            server: account.server,
            domain: domain.to_owned(),
            tls_name: rustls::pki_types::ServerName::try_from(tls_name.clone())
                .map_err(|_| ChatError::Account(format!("{tls_name:?} is not a server name")))?,
            direct_tls: account.direct_tls,
            tls: tls.clone(),
            mechanism: None,
            allow_plain: false,
            source_ips: 0,
            stream_management: true,
            login_timeout: Duration::from_secs(20),
            keys: Arc::new(KeyCache::new()),
        };
        let secret = match &account.credential {
            Credential::Password(p) => p.as_str(),
            Credential::Token(t) => {
                settings.mechanism = Some(Mechanism::OAuthBearer);
                t.as_str()
            }
        };
        let resource = match account.resource.as_str() {
            "" => format!("strait-{device_id}"),
            r => r.to_owned(),
        };
        let login = LoginData {
            settings,
            user: local.to_owned(),
            secret: secret.to_owned(),
            resource,
            caps: Arc::new(capabilities()),
        };
        let conn = login.login().await?;
        let mut prefix = [0u8; 6];
        OsRng.fill_bytes(&mut prefix);
        let mut c = Client {
            conn,
            jid,
            device,
            device2,
            history,
            inbox: VecDeque::new(),
            awaited: None,
            events: VecDeque::new(),
            failed: None,
            recent_ids: Default::default(),
            fetched: HashSet::new(),
            lists: DeviceLists::new(DEVICE_LIST_TTL, DEVICE_LISTS_MAX),
            list_reads: 0,
            next_id: 0,
            id_prefix: prefix.iter().map(|b| format!("{b:02x}")).collect(),
            https: Https::new(tls, account.http_via),
            upload: None,
            login,
            _lock: lock,
        };
        match store::read_recent_stanza_ids(&c.history, RECENT_STANZA_IDS) {
            Ok(ids) => {
                for id in ids {
                    c.handled_before(&id);
                }
            }
            Err(e) => {
                return Err(ChatError::Store(
                    account.store.join("chat.db"),
                    e.to_string(),
                ));
            }
        }
        c.go_online().await?;
        Ok(c)
    }

    /// Keys published, carbons on, the archive caught up with, presence sent: what follows
    /// each login.
    async fn go_online(&mut self) -> Result<(), ChatError> {
        self.publish().await?;
        // Copies of what the account's other devices send and receive (XEP-0280); a server
        // without carbons answers with an error, and the client goes on without.
        self.iq(|id| format!("<iq type='set' id='{id}'><enable xmlns='{NS_CARBONS}'/></iq>"))
            .await?;
        self.catch_up().await?;
        // With the caps, so that the server pushes the contacts' device lists (XEP-0163 §4).
        let presence = format!(
            "<presence>{}</presence>",
            self.login.caps.presence_element()
        );
        self.conn.send_stanza(presence.as_bytes());
        self.conn.flush().await?;
        Ok(())
    }

    /// Fetches from the account's archive (XEP-0313) what arrived since this store last saw it:
    /// messages another device of the account received (and the server then delivered to no
    /// one else) while this one was away, and what the other devices sent. They are handled
    /// like live ones, with their time; ones already seen do not come twice (the archive's ids,
    /// and the ratchets' counters). The first time, the store only notes when it began.
    async fn catch_up(&mut self) -> Result<(), ChatError> {
        let mut after = self.stored("mam_last")?;
        let since = self.stored("mam_since")?;
        if after.is_none() && since.is_none() {
            return self.store_meta("mam_since", &store::now_rfc3339());
        }
        for _ in 0..MAM_PAGES {
            let start = match (&after, &since) {
                (None, Some(t)) => format!(
                    "<field var='start'><value>{}</value></field>",
                    crate::xml::escape(t)
                ),
                _ => String::new(),
            };
            let rsm = match &after {
                Some(a) => format!(
                    "<set xmlns='{NS_RSM}'><max>{MAM_PAGE}</max><after>{}</after></set>",
                    crate::xml::escape(a)
                ),
                None => format!("<set xmlns='{NS_RSM}'><max>{MAM_PAGE}</max></set>"),
            };
            let raw = self
                .iq(|id| {
                    format!(
                        "<iq type='set' id='{id}'><query xmlns='{NS_MAM}' queryid='{id}'>\
                         <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
                         <value>{NS_MAM}</value></field>{start}</x>{rsm}</query></iq>"
                    )
                })
                .await?;
            let Some(el) = Element::parse(&raw) else {
                break;
            };
            // No archive here (or not for this account): nothing to catch up from.
            let Some(fin) = el
                .child("fin")
                .filter(|_| el.attr("type").as_deref() == Some("result"))
            else {
                break;
            };
            let last = fin
                .child("set")
                .and_then(|s| s.child("last"))
                .map(|l| l.text().into_owned());
            if fin.attr("complete").as_deref() == Some("true") || last.is_none() {
                break;
            }
            after = last;
        }
        Ok(())
    }

    /// Logs in again on a new connection after the last one failed (a [`ChatError::Connection`]
    /// or [`ChatError::Timeout`]), keeping the store, its sessions and what was already read.
    /// Messages the server held for the lost connection come again, from its offline queue.
    pub async fn reconnect(&mut self) -> Result<(), ChatError> {
        self.conn = self.login.login().await?;
        // Bundles and device lists may have changed while away, and notifications of the
        // lists were missed.
        self.fetched.clear();
        self.lists.clear();
        self.go_online().await
    }

    /// The account's bare JID.
    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// The full JID the server bound.
    pub fn bound_jid(&self) -> &str {
        &self.conn.jid
    }

    /// What the client answers disco#info queries with (XEP-0030) and its presence advertises
    /// (XEP-0115): the identity, the features and their `ver`.
    pub fn capabilities(&self) -> &Capabilities {
        &self.login.caps
    }

    pub fn device_id(&self) -> u32 {
        self.device.device_id()
    }

    /// This device's identity fingerprint as OMEMO clients show it (groups of eight hex
    /// digits), for comparing out of band.
    pub fn fingerprint(&self) -> Result<String, ChatError> {
        let ik = self
            .device
            .store()
            .identity_key_pair()
            .map_err(DeviceError::from)?;
        let fp = omemo_fingerprint(&ik.public_key().serialize())
            .map_err(|e| ChatError::Publish(e.to_string()))?;
        Ok(display_groups(&fp))
    }

    /// The devices of `jid` this store has sessions with, and their fingerprints (the
    /// identity first seen is trusted; comparing these with what the contact's own client
    /// shows is how a user checks that nobody is in between).
    pub fn devices_of(&self, jid: &str) -> Result<Vec<KnownDevice>, ChatError> {
        let jid = bare(jid.trim()).to_ascii_lowercase();
        let mut out = Vec::new();
        let store = self.device.store();
        for d in store.sub_device_sessions(&jid).map_err(DeviceError::from)? {
            let identity = store
                .get_identity(&Address::new(jid.as_str(), d))
                .map_err(DeviceError::from)?;
            if let Some(fp) = identity.and_then(|k| omemo_fingerprint(&k.serialize()).ok()) {
                out.push(KnownDevice {
                    device: d,
                    omemo: Omemo::V03,
                    fingerprint: display_groups(&fp),
                });
            }
        }
        let store2 = self.device2.store();
        for d in store2
            .omemo2_session_devices(&jid)
            .map_err(DeviceError::from)?
        {
            let identity = store2
                .omemo2_identity(&Address::new(jid.as_str(), d))
                .map_err(DeviceError::from)?;
            if let Some(fp) = identity.and_then(|(k, _)| omemo_fingerprint_from_ed25519(&k).ok()) {
                out.push(KnownDevice {
                    device: d,
                    omemo: Omemo::V2,
                    fingerprint: display_groups(&fp),
                });
            }
        }
        Ok(out)
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("sc-{}-{}", self.id_prefix, self.next_id)
    }

    /// Reads what the server sent (writing what is queued meanwhile). Messages are handled
    /// at once, in order: decrypted, recorded in the history, their events queued for
    /// [`Client::next_event`]. So when the connection acknowledges them (XEP-0198 counts in
    /// order, and the server asks while a client sends), they are the client's for good, even
    /// if the app never asks for its events. IQ requests are answered by the connection as it
    /// reads them, and the answers leave at once. The answer to the IQ [`Client::iq`] waits
    /// for (from where it went) and stream-management counts wait in the inbox for whoever
    /// waits for them (the newest [`INBOX_MAX`]); other IQ answers are dropped, and the rest
    /// (contacts' presence) this client does not use.
    async fn read_more(&mut self) -> Result<(), ChatError> {
        self.conn.pump().await?;
        let mut read = Vec::new();
        let full = self.conn.jid.clone();
        let (awaited, jid) = (&self.awaited, &self.jid);
        self.conn.process(|el, _| {
            let keep = el.is("message")
                || el.is("a")
                || (el.is("iq")
                    && awaited.as_ref().is_some_and(|(id, to)| {
                        el.attr("id").as_deref() == Some(id.as_str())
                            && answers(el.attr("from").as_deref(), to.as_deref(), jid, &full)
                    }));
            if keep {
                read.push(el.raw().to_vec());
            }
        })?;
        // The answers the connection queued (pings, disco#info, errors) go now, not with
        // whatever this client writes next.
        self.conn.write_ready()?;
        for raw in read {
            if raw.starts_with(b"<message") {
                // Every stanza of the batch is handled, whatever one of them does: they are
                // all counted for the server's acknowledgement already.
                match self.handle(&raw) {
                    Ok(Some(ev)) => self.events.push_back(ev),
                    Ok(None) => {}
                    Err(e) => self.note(e),
                }
            } else {
                if self.inbox.len() >= INBOX_MAX {
                    self.inbox.pop_front();
                }
                self.inbox.push_back(raw);
            }
        }
        Ok(())
    }

    /// The first stanza (already read or still to come) that `want` accepts, taken out of the
    /// inbox; the others stay there in order.
    async fn wait_for(
        &mut self,
        mut want: impl FnMut(&Element<'_>) -> bool,
    ) -> Result<Vec<u8>, ChatError> {
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let mut seen = 0;
        loop {
            while seen < self.inbox.len() {
                let hit = Element::parse(&self.inbox[seen]).is_some_and(|e| want(&e));
                if hit {
                    return Ok(self.inbox.remove(seen).unwrap_or_default());
                }
                seen += 1;
            }
            tokio::time::timeout_at(deadline, self.read_more())
                .await
                .map_err(|_| ChatError::Timeout(ANSWER_TIMEOUT))??;
        }
    }

    /// Sends an IQ and waits for its answer: the IQ with its id from where it went (RFC 6120
    /// §8.1.2.1). Anyone can send this client an IQ result with an id it will use (its ids
    /// number its messages too), and such a one is no answer.
    async fn iq(&mut self, make: impl FnOnce(&str) -> String) -> Result<Vec<u8>, ChatError> {
        let id = self.new_id();
        let stanza = make(&id);
        let to = Element::parse(stanza.as_bytes())
            .and_then(|e| e.attr("to").map(|t| t.into_owned()))
            .filter(|t| !t.is_empty());
        self.awaited = Some((id.clone(), to.clone()));
        self.conn.send_stanza(stanza.as_bytes());
        self.conn.flush().await?;
        let (jid, full) = (self.jid.clone(), self.conn.jid.clone());
        let answer = self
            .wait_for(|e| {
                e.is("iq")
                    && e.attr("id").as_deref() == Some(id.as_str())
                    && answers(e.attr("from").as_deref(), to.as_deref(), &jid, &full)
            })
            .await;
        self.awaited = None;
        answer
    }

    /// A device list of version `v` from PEP: the device ids with the list itself as XML (or
    /// an empty list if the account has none), or why it cannot be read.
    async fn device_list(
        &mut self,
        of: Option<&str>,
        v: Omemo,
    ) -> Result<Result<(Vec<u32>, Option<DeviceListV2>), String>, ChatError> {
        let node = v.devices_node();
        self.list_reads += 1;
        let raw = self.iq(|id| omemo::items_query(id, of, node, None)).await?;
        let el = Element::parse(&raw).ok_or(ConnError::Protocol("unparsable answer".into()))?;
        if el.attr("type").as_deref() != Some("result") {
            let (condition, text) = error_of(&raw);
            // A contact this account blocks (XEP-0191): nothing goes to it, keys lookups
            // included; said as the message's refusal.
            if blocked(&el) {
                return Err(ChatError::Refused { condition, text });
            }
            return Ok(Err(match text {
                Some(t) => format!("{condition}: {t}"),
                None => condition,
            }));
        }
        let Some(x) = omemo::item_payload(&el) else {
            return Ok(Ok((Vec::new(), None)));
        };
        Ok(match v {
            Omemo::V03 => DeviceListV03::parse(&x)
                .map(|l| (l.devices, None))
                .map_err(|e| format!("malformed device list: {e}")),
            Omemo::V2 => DeviceListV2::parse(&x)
                .map(|l| (l.devices.iter().map(|d| d.id).collect(), Some(l)))
                .map_err(|e| format!("malformed device list: {e}")),
        })
    }

    /// Publishes this device in the account's device lists of both versions (keeping the
    /// other devices, and their labels) and its bundles.
    async fn publish(&mut self) -> Result<(), ChatError> {
        let own = self.jid.clone();
        let me = self.device.device_id();
        for v in [Omemo::V03, Omemo::V2] {
            let (devices, list2) = match self.device_list(None, v).await? {
                Ok(d) => d,
                // No list yet (a new account).
                Err(c) if no_list(&c) => (Vec::new(), None),
                Err(c) => {
                    return Err(ChatError::Publish(format!(
                        "reading the {} device list: {c}",
                        v.name()
                    )));
                }
            };
            // The list as it is once this device is on it.
            let listed = devices.iter().copied().chain([me]);
            self.lists.put(&own, v, listed, Instant::now());
            self.set_devices(&own, v, &devices);
            if !devices.contains(&me) {
                let list = match v {
                    Omemo::V03 => DeviceListV03 {
                        devices: devices.iter().copied().chain([me]).collect(),
                    }
                    .to_xml(),
                    Omemo::V2 => {
                        let mut l = list2.unwrap_or(DeviceListV2 {
                            devices: Vec::new(),
                        });
                        l.devices.push(x2::DeviceV2 {
                            id: me,
                            label: None,
                            label_sig: None,
                        });
                        l.to_xml()
                    }
                };
                self.publish_item(v.devices_node(), "current", &list, false)
                    .await?;
            }
            let (node, item, bundle) = self.bundle_item(v)?;
            self.publish_item(&node, &item, &bundle, v == Omemo::V2)
                .await?;
        }
        Ok(())
    }

    /// This device's bundle of version `v`: its node, item id and XML.
    fn bundle_item(&self, v: Omemo) -> Result<(String, String, String), ChatError> {
        let (node, item) = v.bundle_item(self.device.device_id());
        let xml = match v {
            Omemo::V03 => self.device.bundle()?.to_xml(),
            Omemo::V2 => self.device2.bundle()?.to_xml(),
        };
        Ok((node, item, xml))
    }

    async fn publish_item(
        &mut self,
        node: &str,
        item: &str,
        payload: &str,
        keep_all: bool,
    ) -> Result<(), ChatError> {
        let raw = self
            .iq(|id| omemo::publish_iq(id, node, item, payload, keep_all))
            .await?;
        let el = Element::parse(&raw).ok_or(ConnError::Protocol("unparsable answer".into()))?;
        if el.attr("type").as_deref() != Some("result") {
            return Err(ChatError::Publish(format!(
                "{node}: {}",
                el.error_condition()
            )));
        }
        Ok(())
    }

    /// Fetches the version-`v` bundles of `jid`'s listed devices that have no session yet.
    async fn fetch_bundles(&mut self, jid: &str, v: Omemo) -> Result<(), ChatError> {
        let devices = match v {
            Omemo::V03 => self.device.devices_of(jid),
            Omemo::V2 => self.device2.devices_of(jid),
        };
        for d in devices {
            let address = Address::new(jid, d);
            let has_session = match v {
                Omemo::V03 => self
                    .device
                    .store()
                    .load_session(&address)
                    .map(|r| r.is_some()),
                Omemo::V2 => self
                    .device2
                    .store()
                    .omemo2_load_session(&address)
                    .map(|r| r.is_some_and(|b| !b.is_empty())),
            }
            .map_err(DeviceError::from)?;
            if has_session || !self.fetched.insert((jid.to_owned(), d, v)) {
                continue;
            }
            let (node, item) = v.bundle_item(d);
            let to = (jid != self.jid).then_some(jid);
            let item = (v == Omemo::V2).then_some(item.as_str());
            let raw = self
                .iq(|id| omemo::items_query(id, to, &node, item))
                .await?;
            let Some(x) = Element::parse(&raw).and_then(|el| omemo::item_payload(&el)) else {
                continue;
            };
            // A device whose bundle cannot be read or verified is skipped: the others still
            // get the message, and encryption fails only if none is left.
            let _ = match v {
                Omemo::V03 => BundleV03::parse(&x)
                    .map_err(DeviceError::from)
                    .and_then(|b| self.device.add_bundle(jid, d, b)),
                Omemo::V2 => BundleV2::parse(&x)
                    .map_err(DeviceError::from)
                    .and_then(|b| self.device2.add_bundle(jid, d, &b)),
            };
        }
        Ok(())
    }

    /// Records `jid`'s version-`v` devices for encryption (the account's own without this
    /// device).
    fn set_devices(&mut self, jid: &str, v: Omemo, devices: &[u32]) {
        let own = jid.eq_ignore_ascii_case(&self.jid);
        let me = own.then(|| self.device.device_id());
        let jid = if own {
            self.jid.clone()
        } else {
            jid.to_owned()
        };
        let devices = devices.iter().copied().filter(|d| Some(*d) != me);
        match v {
            Omemo::V03 => self.device.set_device_list(&jid, devices),
            Omemo::V2 => self.device2.set_device_list(&jid, devices),
        }
    }

    /// `jid`'s version-`v` devices: heard of within the TTL, or else read from the server
    /// (`true`), or why they cannot be read. A blocked contact's refusal is the error.
    async fn devices_in(
        &mut self,
        jid: Option<&str>,
        v: Omemo,
    ) -> Result<(Result<Vec<u32>, String>, bool), ChatError> {
        let key = jid.unwrap_or(&self.jid);
        if let Some(d) = self.lists.fresh(key, v, Instant::now()) {
            return Ok((Ok(d.to_vec()), false));
        }
        let read = self.device_list(jid, v).await?;
        Ok((read.map(|(d, _)| d), true))
    }

    /// The OMEMO version to write to `to` in: 0.3 (the Signal protocol's own format) when it
    /// lists devices there, else 2; with its devices recorded. Lists heard of within the TTL
    /// are not read again, "no 0.3 list" included (kept while the OMEMO 2 list has devices);
    /// a contact with no devices in either version, or whose lists cannot be read, is asked
    /// again on the next send.
    async fn version_for(&mut self, to: &str) -> Result<Omemo, ChatError> {
        let mut why = String::new();
        // The version just read and found without devices (empty, or no list at all).
        let mut read_none = None;
        for v in [Omemo::V03, Omemo::V2] {
            let (devices, read) = self.devices_in(Some(to), v).await?;
            match devices {
                Ok(d) if !d.is_empty() => {
                    let now = Instant::now();
                    if read {
                        self.lists.put(to, v, d.iter().copied(), now);
                    }
                    if let Some(none) = read_none {
                        self.lists.put(to, none, [], now);
                    }
                    self.set_devices(to, v, &d);
                    return Ok(v);
                }
                Ok(_) => {
                    why = "its device lists are empty".into();
                    read_none = read.then_some(v);
                }
                Err(c) => {
                    read_none = no_list(&c).then_some(v);
                    why = format!("its device list cannot be read: {c}");
                }
            }
        }
        // No devices in either version: nothing is kept, the next send asks again.
        for v in [Omemo::V03, Omemo::V2] {
            self.lists.forget(to, v);
        }
        // Devices known from its messages, if any.
        if !self.device.devices_of(to).is_empty() {
            return Ok(Omemo::V03);
        }
        if !self.device2.devices_of(to).is_empty() {
            return Ok(Omemo::V2);
        }
        Err(ChatError::NoDevices(to.to_owned(), why))
    }

    /// The account's own version-`v` device list, read again when the one heard of is stale
    /// (its other devices get each message too). One that cannot be read leaves what is known
    /// and is asked again on the next send.
    async fn own_devices(&mut self, v: Omemo) -> Result<(), ChatError> {
        let devices = match self.devices_in(None, v).await? {
            (_, false) => return Ok(()),
            (Ok(d), true) => d,
            (Err(c), true) if no_list(&c) => Vec::new(),
            (Err(_), true) => return Ok(()),
        };
        let own = self.jid.clone();
        self.lists
            .put(&own, v, devices.iter().copied(), Instant::now());
        self.set_devices(&own, v, &devices);
        Ok(())
    }

    /// Sends `text` to `to`, end-to-end encrypted (OMEMO 0.3, or 2 for a contact that has
    /// only OMEMO 2 devices); returns once the server has it (see the module documentation).
    pub async fn send(&mut self, to: &str, text: &str) -> Result<Sent, ChatError> {
        let to = bare(to.trim()).to_owned();
        if to.eq_ignore_ascii_case(&self.jid) {
            return Err(ChatError::Account(
                "sending to oneself is not supported".into(),
            ));
        }
        let v = self.version_for(&to).await?;
        self.own_devices(v).await?;
        let own = self.jid.clone();
        self.fetch_bundles(&to, v).await?;
        self.fetch_bundles(&own, v).await?;
        let encrypted = match v {
            Omemo::V03 => self
                .device
                .encrypt(&to, text.as_bytes(), &mut OsRng)
                .map(|e| (e.keys.len(), e.to_xml())),
            Omemo::V2 => self
                .device2
                .encrypt(&to, text, &mut OsRng)
                .map(|e| (e.recipients.iter().map(|r| r.keys.len()).sum(), e.to_xml())),
        };
        let (devices, xml) = match encrypted {
            Ok(e) => e,
            Err(DeviceError::NoDevices(_)) => {
                return Err(ChatError::NoDevices(
                    to,
                    "no bundle could be fetched".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let id = self.new_id();
        let stanza = omemo::message(&to, &id, &xml, v, true);
        self.conn.send_stanza(stanza.as_bytes());
        self.confirm().await?;
        // A refusal arrives before the acknowledgement of the message it refuses.
        let bounced = self
            .events
            .iter()
            .position(|ev| matches!(ev, Event::Bounced { id: Some(b), .. } if *b == id));
        if let Some(Event::Bounced {
            condition, text, ..
        }) = bounced.and_then(|i| self.events.remove(i))
        {
            return Err(ChatError::Refused { condition, text });
        }
        self.record(&to, true, text, true, None, None)?;
        Ok(Sent {
            id,
            devices,
            omemo: v,
        })
    }

    /// Waits until the server has processed everything sent so far: its XEP-0198 count, or
    /// (without stream management) a ping's answer.
    async fn confirm(&mut self) -> Result<(), ChatError> {
        match self.conn.sm_sent() {
            Some(target) => {
                self.conn
                    .out
                    .extend_from_slice(format!("<r xmlns='{NS_SM}'/>").as_bytes());
                self.conn.flush().await?;
                self.wait_for(|e| {
                    e.is("a")
                        && e.attr("h")
                            .and_then(|h| h.parse::<u32>().ok())
                            // wrapping: h counts modulo 2^32 (XEP-0198 §4)
                            .is_some_and(|h| target.wrapping_sub(h) > u32::MAX / 2 || h == target)
                })
                .await?;
                // Counts that fell short (the server answers `<r/>` with what it has made
                // durable, and sends the rest unasked once it is) are superseded.
                self.inbox
                    .retain(|raw| !Element::parse(raw).is_some_and(|e| e.is("a")));
            }
            None => {
                self.iq(|id| {
                    format!("<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>")
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Events already handled (in the history) and not yet returned by
    /// [`Client::next_event`]: what arrived while the app did something else.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// The next incoming message (decrypted) or bounce, waiting for it. Before it returns,
    /// the server has been told (XEP-0198) that what was read so far arrived, so that it does
    /// not hand the same messages to the account's next device to come online; with that goes
    /// whatever handling queued (an empty message that completes a session, a republished
    /// bundle, receipts).
    ///
    /// Cancel-safe: it can race other futures in a `select!`. Its waits are for bytes from
    /// the server and for the socket to take what is queued; an event leaves the queue only
    /// when it is returned.
    pub async fn next_event(&mut self) -> Result<Event, ChatError> {
        loop {
            if !self.events.is_empty() {
                self.conn.ack();
                self.conn.write_out().await?;
                if let Some(ev) = self.events.pop_front() {
                    return Ok(ev);
                }
            }
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            self.read_more().await?;
        }
    }

    /// Keeps the first failure of handling for [`Client::next_event`] to report.
    fn note(&mut self, e: ChatError) {
        self.failed.get_or_insert(e);
    }

    /// Records a received message in the history; a failure is reported later, and the
    /// message still reaches the app.
    fn keep(
        &mut self,
        peer: &str,
        outgoing: bool,
        text: &str,
        encrypted: bool,
        origin: Option<&Origin>,
        stanza_id: Option<&str>,
    ) {
        if let Err(e) = self.record(peer, outgoing, text, encrypted, origin, stanza_id) {
            self.note(e);
        }
    }

    /// What a stanza means for the user, if anything (acknowledgements, answers nobody waits
    /// for, presence and key transport elements are handled here).
    fn handle(&mut self, raw: &[u8]) -> Result<Option<Event>, ChatError> {
        let Some(el) = Element::parse(raw) else {
            return Ok(None);
        };
        if !el.is("message") {
            return Ok(None);
        }
        let carbon = ["sent", "received"].into_iter().find_map(|kind| {
            el.child(kind)
                .filter(|c| c.attr("xmlns").as_deref() == Some(NS_CARBONS))
                .and_then(|c| c.child("forwarded"))
                .and_then(|f| f.child("message"))
                .map(|m| (kind == "sent", m))
        });
        match carbon {
            // XEP-0280 §11: only the account itself (its bare JID) hands out carbons.
            Some(_)
                if !el
                    .attr("from")
                    .is_some_and(|f| f.eq_ignore_ascii_case(&self.jid)) =>
            {
                return Ok(None);
            }
            // A received carbon is the server's copy of what it delivered to another device of
            // the account: with this account's stanza-id.
            Some((sent, inner)) => {
                let sid = self.own_stanza_id(&inner);
                if sid.as_deref().is_some_and(|id| self.handled_before(id)) {
                    return Ok(None);
                }
                return self.handle_message(&inner, Some(sent), None, sid);
            }
            None => {}
        }
        if let Some(result) = el
            .child("result")
            .filter(|r| r.attr("xmlns").as_deref() == Some(NS_MAM))
        {
            // Only the account's own archive answers (no `from`, or its bare JID).
            if el
                .attr("from")
                .is_some_and(|f| !f.eq_ignore_ascii_case(&self.jid))
            {
                return Ok(None);
            }
            let Some(fwd) = result.child("forwarded") else {
                return Ok(None);
            };
            let Some(inner) = fwd.child("message") else {
                return Ok(None);
            };
            // The archive's id of a message received is the stanza-id its recipient got.
            let archive_id = result.attr("id").map(|i| i.into_owned());
            if archive_id
                .as_deref()
                .is_some_and(|id| self.handled_before(id))
            {
                return Ok(None);
            }
            if let Some(id) = &archive_id
                && let Err(e) = self.archive_seen(id)
            {
                self.note(e);
            }
            let stamp = fwd
                .child("delay")
                .and_then(|d| d.attr("stamp"))
                .map(|s| s.into_owned());
            let sent =
                bare(&inner.attr("from").unwrap_or_default()).eq_ignore_ascii_case(&self.jid);
            return self.handle_message(&inner, Some(sent), stamp, archive_id);
        }
        // The archive's id of a live message, for catching up from it next time.
        let sid = self.own_stanza_id(&el);
        // Sent again (its acknowledgement was lost): the user has it.
        if sid.as_deref().is_some_and(|id| self.handled_before(id)) {
            return Ok(None);
        }
        if let Some(id) = &sid
            && let Err(e) = self.archive_seen(id)
        {
            self.note(e);
        }
        self.handle_message(&el, None, None, sid)
    }

    /// Whether the message with this account's stanza-id `id` was handled before (on this
    /// client, or in the history); notes it if not.
    fn handled_before(&mut self, id: &str) -> bool {
        let (order, set) = &mut self.recent_ids;
        if set.contains(id) {
            return true;
        }
        if order.len() == RECENT_STANZA_IDS
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        order.push_back(id.to_owned());
        set.insert(id.to_owned());
        false
    }

    fn own_stanza_id(&self, el: &Element<'_>) -> Option<String> {
        stanza_id_by(el, &self.jid)
    }

    /// A message, or (`carbon`: `Some(sent)`) the copy of one that another device of the
    /// account sent or received (a carbon, or a message from the archive, with its `stamp`).
    /// `stanza_id`: this account's archive id of it, kept for a message received.
    fn handle_message(
        &mut self,
        el: &Element<'_>,
        carbon: Option<bool>,
        stamp: Option<String>,
        stanza_id: Option<String>,
    ) -> Result<Option<Event>, ChatError> {
        let raw = el.raw();
        let from = bare(&el.attr("from").unwrap_or_default()).to_ascii_lowercase();
        let id = el.attr("id").map(|i| i.into_owned());
        // A copy of what another device sent: its recipient is the chat.
        let sent_to = match carbon {
            Some(true) => Some(bare(&el.attr("to").unwrap_or_default()).to_ascii_lowercase()),
            _ => None,
        };
        let stanza_id = stanza_id.filter(|_| sent_to.is_none());
        if el.attr("type").as_deref() == Some("error") {
            if carbon.is_some() {
                return Ok(None);
            }
            let (condition, text) = error_of(raw);
            return Ok(Some(Event::Bounced {
                id,
                condition,
                text,
            }));
        }
        if let Some(r) = el
            .child("received")
            .filter(|r| r.attr("xmlns").as_deref() == Some(NS_RECEIPTS))
        {
            if carbon.is_some() {
                return Ok(None); // a receipt another device gave or got
            }
            return Ok(r.attr("id").map(|id| Event::Delivered {
                from,
                id: id.into_owned(),
            }));
        }
        if let Some(ev) = self.device_list_update(el, &from) {
            return Ok(ev);
        }
        // A delivery receipt, if asked for, once the message is handled (below) and only for a
        // message that is shown: one that could not be decrypted is not confirmed. (For a
        // carbon, the device that got the message confirms it.)
        let wants_receipt = id.is_some()
            && carbon.is_none()
            && el
                .child("request")
                .is_some_and(|r| r.attr("xmlns").as_deref() == Some(NS_RECEIPTS));
        let reply_to = el.attr("from").map(|f| f.into_owned()).unwrap_or_default();
        let origin = el
            .child("origin")
            .filter(|o| o.attr("xmlns").as_deref() == Some(NS_INTEROP))
            .map(|o| Origin {
                provider: o.attr("provider").unwrap_or_default().into_owned(),
                name: o.attr("name").unwrap_or_default().into_owned(),
            });
        let delayed = stamp.or_else(|| {
            el.child("delay")
                .and_then(|d| d.attr("stamp"))
                .map(|s| s.into_owned())
        });
        let Some(enc) = el.child("encrypted") else {
            let Some(body) = el.child("body") else {
                return Ok(None); // chat states, receipts, ...
            };
            let text = decode(body.inner()).into_owned();
            match &sent_to {
                Some(peer) => self.keep(peer, true, &text, false, None, None),
                None => self.keep(
                    &from,
                    false,
                    &text,
                    false,
                    origin.as_ref(),
                    stanza_id.as_deref(),
                ),
            }
            if wants_receipt {
                self.send_receipt(&reply_to, id.as_deref().unwrap_or_default());
            }
            return Ok(Some(Event::Message(Box::new(Incoming {
                from,
                text,
                encrypted: false,
                device: None,
                origin,
                delayed,
                id,
                // A link in clear is not media: its key would have crossed in plaintext.
                media: None,
                sent_to,
                stanza_id,
            }))));
        };
        let Some(v) = enc.attr("xmlns").and_then(|n| Omemo::from_ns(&n)) else {
            return Ok(Some(Event::Undecryptable {
                from,
                reason: format!(
                    "{:?} is not an encryption this client speaks (OMEMO 0.3 and 2)",
                    enc.attr("xmlns").unwrap_or_default()
                ),
            }));
        };
        let xml = String::from_utf8_lossy(enc.raw()).into_owned();
        let me = self.device.device_id();
        let (key_transport, decrypted) = match v {
            Omemo::V03 => {
                let parsed = EncryptedV03::parse(&xml).map_err(DeviceError::from);
                if parsed.as_ref().is_ok_and(|e| e.sid == me) && from == self.jid {
                    return Ok(None); // this device's own message, from the archive
                }
                if let Ok(e) = &parsed {
                    self.lists.saw(&from, v, e.sid);
                }
                let kt = parsed.as_ref().is_ok_and(|e| e.payload.is_none());
                (
                    kt,
                    parsed.and_then(|e| self.device.decrypt(&from, &e, &mut OsRng)),
                )
            }
            Omemo::V2 => {
                let parsed = EncryptedV2::parse(&xml).map_err(DeviceError::from);
                if parsed.as_ref().is_ok_and(|e| e.sid == me) && from == self.jid {
                    return Ok(None); // this device's own message, from the archive
                }
                if let Ok(e) = &parsed {
                    self.lists.saw(&from, v, e.sid);
                }
                let kt = parsed.as_ref().is_ok_and(|e| e.payload.is_none());
                (
                    kt,
                    parsed.and_then(|e| self.device2.decrypt(&from, &e, &mut OsRng)),
                )
            }
        };
        let d = match decrypted {
            Ok(d) => d,
            // An empty message for another device (one completing its session, seen here as a
            // carbon): nothing for the user.
            Err(DeviceError::NotForUs(_)) if key_transport => return Ok(None),
            // A message sent before this device existed (one the server held, handed to it
            // as it came online): it could not be for it, and the device it was for has it.
            Err(DeviceError::NotForUs(_))
                if delayed.as_deref().is_some_and(|t| self.predates_device(t)) =>
            {
                return Ok(None);
            }
            // A message decrypted before, delivered again (its acknowledgement was lost with a
            // connection): the user has it already.
            Err(DeviceError::Signal(SignalError::DuplicateMessage { .. })) => return Ok(None),
            Err(e) => {
                return Ok(Some(Event::Undecryptable {
                    from,
                    reason: e.to_string(),
                }));
            }
        };
        // The follow-ups below are best effort: if one fails, the message decrypted all the
        // same, and the failure is reported after it.
        if d.key_exchange {
            // A one-time prekey was used up: publish the topped-up bundle.
            match self.bundle_item(v) {
                Ok((node, item, bundle)) => {
                    let id = self.new_id();
                    self.conn.send_stanza(
                        omemo::publish_iq(&id, &node, &item, &bundle, v == Omemo::V2).as_bytes(),
                    );
                }
                Err(e) => self.note(e),
            }
        }
        if d.send_empty {
            // Completes the session, so the sender stops sending key exchanges (OMEMO 2: also
            // a heartbeat after many messages received).
            let e = match v {
                Omemo::V03 => self
                    .device
                    .empty_message(&from, d.sender_device, &mut OsRng)
                    .map(|e| e.to_xml()),
                Omemo::V2 => self
                    .device2
                    .empty_message(&from, d.sender_device, &mut OsRng)
                    .map(|e| e.to_xml()),
            };
            match e {
                Ok(e) => {
                    let id = self.new_id();
                    self.conn.send_stanza(
                        format!(
                            "<message to='{}' id='{id}' type='chat'>{e}<store xmlns='urn:xmpp:hints'/></message>",
                            crate::xml::escape(&from),
                        )
                        .as_bytes(),
                    );
                }
                Err(e) => self.note(e.into()),
            }
        }
        let Some(plain) = d.plaintext else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&plain).into_owned();
        match &sent_to {
            Some(peer) => self.keep(peer, true, &text, true, None, None),
            None => self.keep(
                &from,
                false,
                &text,
                true,
                origin.as_ref(),
                stanza_id.as_deref(),
            ),
        }
        if wants_receipt {
            self.send_receipt(&reply_to, id.as_deref().unwrap_or_default());
        }
        let media = parse_media_body(&text).map(|(url, _thumbnail)| Media {
            name: file_name(&url),
            url,
        });
        Ok(Some(Event::Message(Box::new(Incoming {
            from,
            text,
            encrypted: true,
            device: Some(d.sender_device),
            origin,
            delayed,
            id,
            media,
            sent_to,
            stanza_id,
        }))))
    }

    fn send_receipt(&mut self, to: &str, for_id: &str) {
        let id = self.new_id();
        self.conn
            .send_stanza(omemo::receipt(to, &id, for_id).as_bytes());
    }

    /// A PEP notification of a device list (a contact's, or the account's own): recorded,
    /// replacing what was heard of it; no event for the user. A list deleted, purged or
    /// retracted is forgotten: the next send reads it.
    fn device_list_update(&mut self, el: &Element<'_>, from: &str) -> Option<Option<Event>> {
        let event = el.child("event")?;
        let version = |node: Option<&str>| {
            [Omemo::V03, Omemo::V2]
                .into_iter()
                .find(|v| node == Some(v.devices_node()))
        };
        if let Some(v) = event
            .children()
            .filter(|c| c.is("delete") || c.is("purge"))
            .find_map(|c| version(c.attr("node").as_deref()))
        {
            self.lists.forget(from, v);
            return Some(None);
        }
        let items = event.child("items")?;
        let Some(v) = version(items.attr("node").as_deref()) else {
            return Some(None);
        };
        let payload = items
            .child("item")
            .and_then(|i| i.children().next())
            .map(|p| String::from_utf8_lossy(p.raw()).into_owned());
        let list: Option<Vec<u32>> = payload.and_then(|x| match v {
            Omemo::V03 => DeviceListV03::parse(&x).ok().map(|l| l.devices),
            Omemo::V2 => DeviceListV2::parse(&x)
                .ok()
                .map(|l| l.devices.iter().map(|d| d.id).collect()),
        });
        match list {
            Some(l) => {
                self.lists.put(from, v, l.iter().copied(), Instant::now());
                self.set_devices(from, v, &l);
            }
            None => self.lists.forget(from, v),
        }
        Some(None)
    }

    /// How long a device list heard of (read or notified) is trusted before a send reads it
    /// again; [`DEVICE_LIST_TTL`] unless set. A notification replaces a list at once, but
    /// only the account's own lists are sure to be notified (a contact's reach this client
    /// where the account shares its presence and the server honours the caps' `+notify`), so
    /// this bounds how long a device a contact adds goes without this client's messages.
    /// `Duration::ZERO` reads the lists on every send.
    pub fn set_device_list_ttl(&mut self, ttl: Duration) {
        self.lists.set_ttl(ttl);
    }

    /// Device lists read from the server since the client connected (its login's included).
    #[doc(hidden)]
    pub fn device_list_reads(&self) -> u64 {
        self.list_reads
    }

    /// Stanzas read and kept for a request still to take them (answers to this client's
    /// IQs, stream-management counts): a test's measure that nothing piles up.
    #[doc(hidden)]
    pub fn queued_stanzas(&self) -> usize {
        self.inbox.len()
    }

    /// Ends the stream politely (writing what is still queued first).
    pub async fn close(mut self) {
        let _ = self.conn.flush().await;
        self.conn.close(Duration::from_secs(2)).await;
    }
}

/// The id of the stanza-id (XEP-0359) on `el` that `owner`'s server wrote (`by` the account's
/// bare JID): its archive copy's. Ids by anyone else are not that server's, and the sender
/// could have written them.
fn stanza_id_by(el: &Element<'_>, owner: &str) -> Option<String> {
    el.children()
        .find(|c| {
            c.is("stanza-id")
                && c.attr("xmlns").as_deref() == Some(NS_SID)
                && c.attr("by").is_some_and(|b| b.eq_ignore_ascii_case(owner))
        })
        .and_then(|sid| sid.attr("id"))
        .map(|id| id.into_owned())
        .filter(|id| !id.is_empty())
}

/// Whether an IQ from `from` can answer one this client (`jid`, bound as `full`) sent `to`
/// (RFC 6120 §8.1.2.1): it comes from there; for a request without `to` or to the account
/// itself, which the server answers on the account's behalf (§10.3.3), from the server: no
/// `from`, the account (bare or this resource) or its domain. A request to the domain may be
/// answered without `from`, which only the server can send.
fn answers(from: Option<&str>, to: Option<&str>, jid: &str, full: &str) -> bool {
    let domain = jid.rsplit_once('@').map_or(jid, |(_, d)| d);
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match to.filter(|t| !same(t, jid)) {
        None => from.is_none_or(|f| same(f, jid) || f == full || same(f, domain)),
        Some(t) => match from {
            Some(f) => same(f, t),
            None => same(t, domain),
        },
    }
}

/// Whether a device list's read failed because there is none (`item-not-found`): the account
/// has no devices in that version, rather than a refusal.
fn no_list(why: &str) -> bool {
    why.starts_with("item-not-found")
}

/// Whether a stanza error says the address is on this account's block list (XEP-0191's
/// `<blocked xmlns='urn:xmpp:blocking:errors'/>`).
fn blocked(el: &Element<'_>) -> bool {
    el.child("error").is_some_and(|e| {
        e.children()
            .any(|c| c.is("blocked") && c.attr("xmlns").as_deref() == Some(NS_BLOCKING_ERRORS))
    })
}

/// A stanza error's condition and text; an error for a blocked address says so in the text
/// (`blocked: ...`).
fn error_of(raw: &[u8]) -> (String, Option<String>) {
    let Some(el) = Element::parse(raw) else {
        return ("undefined-condition".into(), None);
    };
    let condition = el.error_condition().to_owned();
    let text = el
        .child("error")
        .and_then(|e| e.child("text"))
        .map(|t| decode(t.inner()).into_owned())
        .filter(|t| !t.is_empty());
    let text = match (blocked(&el), text) {
        (true, Some(t)) => Some(format!("blocked: {t}")),
        (true, None) => Some("blocked: the address is on this account's block list".into()),
        (false, t) => t,
    };
    (condition, text)
}

#[cfg(test)]
mod tests {
    use super::store::{
        read_conversations, read_history, read_received_stanza_ids, read_recent_stanza_ids,
    };
    use super::*;
    use std::path::Path;
    use strait_signal::media::AesgcmUrl;
    use strait_signal::omemo::DEVICE_ID_MAX;

    fn account(dir: &Path, jid: &str) -> Account {
        Account {
            jid: jid.into(),
            credential: Credential::Password("x".into()),
            server: "127.0.0.1:1".parse().unwrap(),
            tls_name: None,
            direct_tls: false,
            verify: Verify::Insecure,
            resource: "r".into(),
            store: dir.to_owned(),
            http_via: None,
        }
    }

    #[test]
    fn a_store_keeps_its_device_and_belongs_to_one_account() {
        let dir = tempfile::tempdir().unwrap();
        let a = account(dir.path(), "alice@example.org");
        let (lock, db) = open_store(&a).unwrap();
        let id = device_id(&db, &a).unwrap();
        assert!((1..=DEVICE_ID_MAX).contains(&id));
        // Locked while open.
        let again = open_store(&a).map(|_| ()).unwrap_err().to_string();
        assert!(again.contains("another client"), "{again}");
        drop((lock, db));
        let (_lock, db) = open_store(&a).unwrap();
        assert_eq!(device_id(&db, &a).unwrap(), id);
        let other = account(dir.path(), "bob@example.org");
        let e = device_id(&db, &other).unwrap_err().to_string();
        assert!(e.contains("belongs to alice@example.org"), "{e}");
    }

    #[test]
    fn history_reads_newest_lines_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = account(dir.path(), "alice@example.org");
        let (_lock, db) = open_store(&a).unwrap();
        for (i, peer) in ["bob@x", "carol@y", "bob@x"].iter().enumerate() {
            db.execute(
                "INSERT INTO messages (at_ms, peer, outgoing, text, encrypted, origin) VALUES (?1, ?2, 1, ?3, 1, NULL)",
                rusqlite::params![i as i64, peer, format!("m{i}")],
            )
            .unwrap();
        }
        let all = read_history(&db, None, 2).unwrap();
        assert_eq!(
            all.iter().map(|h| h.text.as_str()).collect::<Vec<_>>(),
            ["m1", "m2"]
        );
        let bob = read_history(&db, Some("Bob@X"), 10).unwrap();
        assert_eq!(
            bob.iter().map(|h| h.text.as_str()).collect::<Vec<_>>(),
            ["m0", "m2"]
        );
    }

    #[test]
    fn conversations_are_newest_first_and_third_party_ones_marked() {
        let dir = tempfile::tempdir().unwrap();
        let a = account(dir.path(), "alice@example.org");
        let (_lock, db) = open_store(&a).unwrap();
        for (peer, out, text, origin) in [
            ("sam@acme.example", false, "hi from Acme", Some("Acme Chat")),
            ("bob@example.org", true, "lunch?", None),
            ("sam@acme.example", true, "hello Sam", None),
            ("bob@example.org", false, "yes", None),
        ] {
            db.execute(
                "INSERT INTO messages (at_ms, peer, outgoing, text, encrypted, origin) VALUES (1, ?1, ?2, ?3, 1, ?4)",
                rusqlite::params![peer, out, text, origin],
            )
            .unwrap();
        }
        let c = read_conversations(&db).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (
                c[0].peer.as_str(),
                c[0].last_text.as_str(),
                c[0].third_party.as_deref()
            ),
            ("bob@example.org", "yes", None)
        );
        assert_eq!(
            (
                c[1].peer.as_str(),
                c[1].last_text.as_str(),
                c[1].third_party.as_deref()
            ),
            ("sam@acme.example", "hello Sam", Some("Acme Chat"))
        );
        assert!(c[1].last_outgoing);
        assert_eq!(c[1].messages, 2);
    }

    #[test]
    fn file_names_come_from_the_link_without_paths() {
        let name = |u: &str| file_name(&AesgcmUrl::parse(u).unwrap());
        let frag = format!("#{}{}", "00".repeat(12), "11".repeat(32));
        assert_eq!(
            name(&format!("aesgcm://h/x/holiday%20photo%20%C3%A9.jpg{frag}")),
            "holiday photo é.jpg"
        );
        assert_eq!(
            name(&format!("aesgcm://h/x/..%2F..%2Fetc%2Fpasswd{frag}")),
            "_.._etc_passwd"
        );
        assert_eq!(name(&format!("aesgcm://h/x/{frag}")), "file");
    }

    #[test]
    fn only_the_accounts_own_stanza_id_counts() {
        let m = Element::parse(
            b"<message from='eve@x/r' to='alice@example.org'>\
              <stanza-id xmlns='urn:xmpp:sid:0' by='eve@x' id='forged'/>\
              <stanza-id xmlns='urn:example' by='alice@example.org' id='other-ns'/>\
              <origin-id xmlns='urn:xmpp:sid:0' id='o1'/>\
              <stanza-id xmlns='urn:xmpp:sid:0' by='Alice@example.org' id='s-&amp;1'/>\
              <body>hi</body></message>",
        )
        .unwrap();
        assert_eq!(
            stanza_id_by(&m, "alice@example.org").as_deref(),
            Some("s-&1")
        );
        assert_eq!(stanza_id_by(&m, "bob@example.org"), None);
    }

    #[test]
    fn an_older_store_gets_the_stanza_id_column_and_its_lines_keep_working() {
        let dir = tempfile::tempdir().unwrap();
        // The history as stores had it before stanza-ids.
        let old = rusqlite::Connection::open(dir.path().join("chat.db")).unwrap();
        old.execute_batch(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL,
                 peer TEXT NOT NULL, outgoing INTEGER NOT NULL, text TEXT NOT NULL,
                 encrypted INTEGER NOT NULL, origin TEXT);
             INSERT INTO messages (at_ms, peer, outgoing, text, encrypted, origin)
                 VALUES (1, 'bob@x', 0, 'old', 1, NULL);",
        )
        .unwrap();
        drop(old);
        // Read without logging in (read-only): no column, no ids, no failure.
        let h = history(dir.path(), Some("bob@x"), 10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].text.as_str(), h[0].stanza_id.as_deref()),
            ("old", None)
        );
        // A client opening it adds the column; new lines have their ids.
        let a = account(dir.path(), "alice@example.org");
        let (_lock, db) = open_store(&a).unwrap();
        for (i, (out, sid)) in [
            (false, Some("s1")),
            (true, None),
            (false, Some("s2")),
            (false, Some("s3")),
            (false, Some("s2")),
        ]
        .into_iter()
        .enumerate()
        {
            db.execute(
                "INSERT INTO messages (at_ms, peer, outgoing, text, encrypted, origin, stanza_id) VALUES (?1, 'bob@x', ?2, 'new', 1, NULL, ?3)",
                rusqlite::params![10 + i as i64, out, sid],
            )
            .unwrap();
        }
        db.execute(
            "INSERT INTO messages (at_ms, peer, outgoing, text, encrypted, origin, stanza_id) VALUES (20, 'carol@x', 0, 'c', 1, NULL, 'c1')",
            [],
        )
        .unwrap();
        let h = read_history(&db, Some("bob@x"), 10).unwrap();
        assert_eq!(
            h.iter().map(|e| e.stanza_id.as_deref()).collect::<Vec<_>>(),
            [None, Some("s1"), None, Some("s2"), Some("s3"), Some("s2")]
        );
        // The newest received ones with an id, each once, oldest first; a re-delivered id
        // counts where it came last.
        assert_eq!(
            read_received_stanza_ids(&db, "Bob@X/phone", 10).unwrap(),
            ["s1", "s3", "s2"]
        );
        assert_eq!(
            read_received_stanza_ids(&db, "bob@x", 2).unwrap(),
            ["s3", "s2"]
        );
        assert!(
            read_received_stanza_ids(&db, "dave@x", 10)
                .unwrap()
                .is_empty()
        );
        // What a client starting on this store remembers as handled: the newest lines with an
        // id, whoever they are from, oldest first.
        assert_eq!(read_recent_stanza_ids(&db, 3).unwrap(), ["s3", "s2", "c1"]);
        assert_eq!(
            read_recent_stanza_ids(&db, 100).unwrap(),
            ["s1", "s2", "s3", "s2", "c1"]
        );
        // Opening it again finds the column there.
        drop((_lock, db));
        open_store(&a).unwrap();
    }

    #[test]
    fn iq_answers_come_from_where_the_request_went() {
        let ok = |from: Option<&str>, to: Option<&str>| {
            answers(from, to, "alice@example.org", "alice@example.org/phone")
        };
        // To the account (no `to`, or its bare JID): its server answers.
        for to in [None, Some("Alice@example.org")] {
            for from in [
                None,
                Some("alice@example.org"),
                Some("alice@example.org/phone"),
                Some("example.org"),
            ] {
                assert!(ok(from, to), "{from:?} answering a request to {to:?}");
            }
            for from in [
                "alice@example.org/other",
                "bob@example.org",
                "eve@example.org/x",
                "evil.example",
            ] {
                assert!(!ok(Some(from), to), "{from} answering a request to {to:?}");
            }
        }
        // To a contact or a service: from there only.
        assert!(ok(Some("Bob@example.org"), Some("bob@example.org")));
        assert!(!ok(None, Some("bob@example.org")));
        assert!(!ok(Some("eve@example.org"), Some("bob@example.org")));
        assert!(!ok(Some("bob@example.org/x"), Some("bob@example.org")));
        assert!(ok(Some("upload.example.org"), Some("upload.example.org")));
        assert!(!ok(Some("example.org"), Some("upload.example.org")));
        // To the domain: the server, with or without `from`.
        assert!(ok(None, Some("example.org")));
        assert!(ok(Some("example.org"), Some("example.org")));
        assert!(!ok(Some("eve@example.org"), Some("example.org")));
    }

    #[test]
    fn errors_say_the_condition_and_text() {
        let raw = b"<message type='error' id='m1'><error type='modify'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>messages to acme must be OMEMO encrypted</text></error></message>";
        let (c, t) = error_of(raw);
        assert_eq!(c, "policy-violation");
        assert_eq!(
            t.as_deref(),
            Some("messages to acme must be OMEMO encrypted")
        );
        let raw = b"<message type='error' id='m2'><error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><blocked xmlns='urn:xmpp:blocking:errors'/></error></message>";
        let (c, t) = error_of(raw);
        assert_eq!(c, "not-acceptable");
        assert_eq!(
            t.as_deref(),
            Some("blocked: the address is on this account's block list")
        );
    }
}
