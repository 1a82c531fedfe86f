//! Personal eventing (XEP-0163 over XEP-0060) nodes and items, and vCards (XEP-0054).

use crate::Result;

/// The configuration of one PEP node that the server acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepNodeConfig {
    /// `open`, `presence` or `whitelist` (XEP-0060 §4.5).
    pub access_model: String,
    /// Most items kept; `None` = "max" (the server's own limit).
    pub max_items: Option<u32>,
    pub persist_items: bool,
}

impl Default for PepNodeConfig {
    /// The PEP defaults (XEP-0163 §7.1.1.1): presence access, one item.
    fn default() -> Self {
        PepNodeConfig {
            access_model: "presence".into(),
            max_items: Some(1),
            persist_items: true,
        }
    }
}

/// One published item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepItem {
    pub id: String,
    /// Canonical XML of the payload element (may be empty).
    pub payload: String,
    /// Unix milliseconds of the publication.
    pub stamp_ms: i64,
}

/// PEP nodes of accounts. Items of a node are ordered by publication: publishing an id
/// that exists replaces it and makes it the newest.
pub trait PepStore {
    /// The node's configuration, `None` if it does not exist.
    fn pep_node(&self, owner: &str, node: &str) -> Result<Option<PepNodeConfig>>;
    /// The owner's node names, sorted.
    fn pep_nodes(&self, owner: &str) -> Result<Vec<String>>;
    /// Creates a node, or reconfigures it if it exists (dropping the oldest items beyond
    /// `config.max_items`, or beyond `limit_items` for "max").
    /// [`crate::StoreError::NotFound`] if `owner` is not an account,
    /// [`crate::StoreError::QuotaExceeded`] if a new node would exceed `max_nodes`.
    fn pep_configure(
        &self,
        owner: &str,
        node: &str,
        config: &PepNodeConfig,
        max_nodes: usize,
        limit_items: usize,
    ) -> Result<()>;
    /// Deletes a node with its items; false if there was none.
    fn pep_delete_node(&self, owner: &str, node: &str) -> Result<bool>;
    /// Stores an item in an existing node as its newest, then keeps only the newest `keep`.
    /// [`crate::StoreError::NotFound`] if the node does not exist.
    fn pep_publish(&self, owner: &str, node: &str, item: &PepItem, keep: usize) -> Result<()>;
    /// Items oldest first: those with the given ids (unknown ids skipped) or all; with
    /// `max`, only the newest `max` of them.
    fn pep_items(
        &self,
        owner: &str,
        node: &str,
        ids: Option<&[String]>,
        max: Option<usize>,
    ) -> Result<Vec<PepItem>>;
    /// Removes one item; false if it was not there.
    fn pep_retract(&self, owner: &str, node: &str, id: &str) -> Result<bool>;
}

/// vcard-temp (XEP-0054) documents.
pub trait VcardStore {
    /// The stored `<vCard/>` XML, if any.
    fn vcard(&self, owner: &str) -> Result<Option<String>>;
    /// Replaces (or with `None` removes) the vCard.
    /// [`crate::StoreError::NotFound`] if `owner` is not an account.
    fn set_vcard(&self, owner: &str, vcard: Option<&str>) -> Result<()>;
}

/// Private XML storage (XEP-0049): one element per namespace per account, readable and
/// writable by its owner only.
pub trait PrivateStore {
    /// The stored element's XML for the namespace, if any.
    fn private_xml(&self, owner: &str, ns: &str) -> Result<Option<String>>;
    /// Replaces (or with `None` removes) the element stored under each namespace, all or
    /// nothing. [`crate::StoreError::QuotaExceeded`] if the account would then hold more than
    /// `max_namespaces`; [`crate::StoreError::NotFound`] if `owner` is not an account.
    fn set_private_xml(
        &self,
        owner: &str,
        writes: &[(String, Option<String>)],
        max_namespaces: usize,
    ) -> Result<()>;
}

/// One push service an account enabled (XEP-0357): where notifications go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRegistration {
    /// The app server's JID.
    pub jid: String,
    /// The node at the app server (it names the device).
    pub node: String,
    /// The publish-options form (`<x xmlns='jabber:x:data'/>`, canonical XML) sent with each
    /// notification, if the client gave one.
    pub options: Option<String>,
}

/// Push registrations (XEP-0357), kept across sessions: the point is to reach a device
/// that is not connected.
pub trait PushStore {
    /// Adds or replaces the registration for (`jid`, `node`). Adding one past `max` per
    /// account is [`crate::StoreError::QuotaExceeded`]; [`crate::StoreError::NotFound`] if
    /// `owner` is not an account.
    fn push_enable(&self, owner: &str, reg: &PushRegistration, max: usize) -> Result<()>;
    /// Removes the registrations at `jid` (only the one for `node`, if given); how many.
    fn push_disable(&self, owner: &str, jid: &str, node: Option<&str>) -> Result<usize>;
    /// The account's registrations, oldest first.
    fn push_registrations(&self, owner: &str) -> Result<Vec<PushRegistration>>;
}

/// The item limit of a node.
pub fn effective_max(config: &PepNodeConfig, limit_items: usize) -> usize {
    config
        .max_items
        .map_or(limit_items, |m| (m as usize).min(limit_items))
}
