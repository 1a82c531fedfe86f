//! Abuse reports (XEP-0377): what a user says about a JID it blocks, with what the server
//! itself can vouch for about the messages the user pointed at.
//!
//! The server cannot read end-to-end encrypted messages, so the evidence it keeps is what it
//! saw: for each archived message the reporter names, when it arrived, who sent it, through
//! which provider, whether it was encrypted and how large it was. The content is the
//! reporter's word (`text`), marked as such wherever it is shown.

use crate::Result;

/// Why a user reported a JID (XEP-0377 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportReason {
    /// `urn:xmpp:reporting:spam`: unwanted or unsolicited messages.
    Spam,
    /// `urn:xmpp:reporting:abuse`: other abuse.
    Abuse,
}

impl ReportReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportReason::Spam => "spam",
            ReportReason::Abuse => "abuse",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "spam" => Some(ReportReason::Spam),
            "abuse" => Some(ReportReason::Abuse),
            _ => None,
        }
    }

    /// The XEP-0377 reason URI.
    pub fn uri(self) -> &'static str {
        match self {
            ReportReason::Spam => "urn:xmpp:reporting:spam",
            ReportReason::Abuse => "urn:xmpp:reporting:abuse",
        }
    }

    pub fn from_uri(uri: &str) -> Option<Self> {
        match uri {
            "urn:xmpp:reporting:spam" => Some(ReportReason::Spam),
            "urn:xmpp:reporting:abuse" => Some(ReportReason::Abuse),
            _ => None,
        }
    }
}

/// What the server found in the reporter's archive under one id the reporter named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// The archive id (the XEP-0359 stanza-id) as the reporter gave it.
    pub stanza_id: String,
    /// `None`: no message with this id in the reporter's archive (never there, or expired).
    pub found: Option<EvidenceMessage>,
}

/// The server's record of an archived message, without its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvidenceMessage {
    /// Unix milliseconds when the server archived it.
    pub at_ms: i64,
    /// The `from` of the message as the server routed it (a full JID).
    pub from: String,
    /// Whether the reported JID sent it (it may also be the reporter's own message in the
    /// same conversation, or a message of another conversation).
    pub from_reported: bool,
    /// The provider whose user sent it, from the server's own origin stamp.
    pub origin: Option<String>,
    /// Whether it was end-to-end encrypted (OMEMO): the server holds no readable content.
    pub encrypted: bool,
    /// The size of the archived stanza in bytes.
    pub bytes: usize,
}

/// How an operator closed a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportClosure {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub by: String,
    pub note: String,
}

/// One report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbuseReport {
    /// Assigned by the store; increases with every report.
    pub id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The reporting account (a bare JID).
    pub reporter: String,
    /// What the reporter blocked: a bare or full JID, or a domain.
    pub reported: String,
    /// The provider the reported JID's domain belongs to; `None` for the platform's own users
    /// (and for other domains).
    pub provider: Option<String>,
    pub reason: ReportReason,
    /// The reporter's own words (possibly empty), up to 4,096 bytes: not verified by anyone.
    pub text: String,
    pub evidence: Vec<Evidence>,
    /// `None` while the report is open.
    pub closed: Option<ReportClosure>,
}

/// Which reports to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportFilter {
    /// Only reports about this provider's users.
    pub provider: Option<String>,
    /// Only open reports.
    pub open_only: bool,
    /// Only reports made at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// At most this many, the newest (0: all).
    pub limit: usize,
}

/// Counts of a provider's reports (for its agreement's review).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportCounts {
    pub open: usize,
    /// Distinct reported JIDs among the open reports.
    pub open_reported: usize,
    /// Reports made at or after the `since` of the query, open or closed.
    pub recent: usize,
}

/// Abuse reports.
pub trait ReportStore {
    /// Records a report and returns its id. An open report by the same reporter about the
    /// same JID is replaced (one open report per pair: a user who blocks, unblocks and
    /// blocks again with a new report does not pile reports up).
    /// [`crate::StoreError::NotFound`] if `reporter` is not an account.
    fn report_add(&self, report: &AbuseReport) -> Result<i64>;
    /// Reports matching `filter`, oldest first.
    fn reports(&self, filter: &ReportFilter) -> Result<Vec<AbuseReport>>;
    fn report(&self, id: i64) -> Result<Option<AbuseReport>>;
    /// How many reports `reporter` made at or after `since_ms` (for its daily limit).
    fn reports_by_since(&self, reporter: &str, since_ms: i64) -> Result<usize>;
    /// Counts of the reports about `provider`'s users; `recent` counts those at or after
    /// `since_ms`.
    fn report_counts(&self, provider: &str, since_ms: i64) -> Result<ReportCounts>;
    /// Closes an open report. [`crate::StoreError::NotFound`] if there is no such report,
    /// [`crate::StoreError::Conflict`] if it is already closed.
    fn report_close(&self, id: i64, closure: &ReportClosure) -> Result<()>;
}
