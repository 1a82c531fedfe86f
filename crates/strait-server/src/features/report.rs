//! Abuse reports attached to a block (XEP-0377, Blocking Command Reports, 0.4).
//!
//! ```xml
//! <block xmlns='urn:xmpp:blocking'>
//!   <item jid='eve@chat.acme.example'>
//!     <report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'>
//!       <stanza-id xmlns='urn:xmpp:sid:0' by='alice@platform.example' id='…'/>
//!       <text xml:lang='en'>…</text>
//!     </report>
//!   </item>
//! </block>
//! ```
//!
//! The block and its reports succeed or fail together: a report the server cannot accept
//! (no known reason, stanza-ids of another archive, too many of them, too much text, more
//! reports than a day allows) refuses the whole command, and nothing is blocked.
//!
//! What is recorded: the reporter's words, and for each stanza-id what the server itself saw
//! of that message in the reporter's archive: when, from whom, through which provider,
//! encrypted or not, its size. Not the message: an OMEMO message is ciphertext the server
//! cannot read, and a plaintext one is the reporter's to quote. Reports on a provider's
//! users carry the provider's id, so that an operator can hand them to it and weigh them in
//! its agreement (`strait report list --provider ID`).

use crate::server::ServerState;
use strait_store::{AbuseReport, Evidence, EvidenceMessage, ReportReason};
use strait_wire::{StanzaError, StanzaErrorCondition};

pub const NS: &str = "urn:xmpp:reporting:1";
const SID_NS: &str = "urn:xmpp:sid:0";
/// Stanza-ids one report may name.
pub const MAX_IDS: usize = 20;
/// Bytes of the reporter's text, all languages together.
pub const MAX_TEXT: usize = 4096;
/// Reports one account may make in 24 hours (a replaced report does not count).
pub const PER_DAY: usize = 50;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// A report as the reporter sent it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub reason: ReportReason,
    pub text: String,
    pub ids: Vec<String>,
}

fn bad(text: impl Into<String>) -> StanzaError {
    StanzaError::with_text(StanzaErrorCondition::BadRequest, text)
}

/// The report inside a block `<item>`, if it has one; `reporter` is the reporter's bare JID,
/// the only archive whose stanza-ids mean anything here.
pub fn parse(item: &minidom::Element, reporter: &str) -> Result<Option<Attached>, StanzaError> {
    let mut reports = item.children().filter(|c| c.is("report", NS));
    let Some(r) = reports.next() else {
        return Ok(None);
    };
    if reports.next().is_some() {
        return Err(bad("one report per blocked JID"));
    }
    let reason = match r.attr("reason") {
        None | Some("") => {
            return Err(bad(
                "a report needs a reason: urn:xmpp:reporting:spam or urn:xmpp:reporting:abuse",
            ));
        }
        Some(uri) => ReportReason::from_uri(uri).ok_or_else(|| {
            bad(format!(
                "unknown report reason {uri:?} (urn:xmpp:reporting:spam or urn:xmpp:reporting:abuse)"
            ))
        })?,
    };
    let mut ids: Vec<String> = Vec::new();
    for sid in r.children().filter(|c| c.is("stanza-id", SID_NS)) {
        let by = sid.attr("by").unwrap_or("");
        let same = jid::BareJid::new(by).is_ok_and(|b| b.to_string() == reporter);
        if !same {
            return Err(bad(format!(
                "a report names messages of the reporter's own archive: stanza-id by='{reporter}', not {by:?}"
            )));
        }
        let id = sid.attr("id").unwrap_or("");
        if id.is_empty() || id.len() > 128 {
            return Err(bad(
                "a stanza-id in a report needs an id (at most 128 bytes)",
            ));
        }
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_owned());
        }
    }
    if ids.len() > MAX_IDS {
        return Err(bad(format!("at most {MAX_IDS} stanza-ids in a report")));
    }
    let texts: Vec<String> = r
        .children()
        .filter(|c| c.is("text", NS))
        .map(|t| t.text().trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    let text = texts.join("\n\n");
    if text.len() > MAX_TEXT {
        return Err(bad(format!(
            "a report's text is at most {MAX_TEXT} bytes ({} given)",
            text.len()
        )));
    }
    Ok(Some(Attached { reason, text, ids }))
}

/// Refuses reports beyond the reporter's daily allowance (`n` new ones).
pub async fn within_allowance(
    state: &ServerState,
    reporter: &str,
    n: usize,
) -> Result<(), StanzaError> {
    let owner = reporter.to_owned();
    let since = super::now_ms() - DAY_MS;
    let made = state
        .store(move |st| st.reports_by_since(&owner, since))
        .await
        .map_err(|e| {
            tracing::error!(account = reporter, "counting abuse reports: {e}");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        })?;
    if made + n > PER_DAY {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::PolicyViolation,
            format!("at most {PER_DAY} abuse reports a day; nothing was blocked"),
        ));
    }
    Ok(())
}

/// What the server saw of one archived message (without its content).
fn evidence_of(stanza: &str, with_full: &str, stamp_ms: i64, reported: &str) -> EvidenceMessage {
    let el: Option<minidom::Element> = stanza.parse().ok();
    let from = el
        .as_ref()
        .and_then(|e| e.attr("from").map(str::to_owned))
        .unwrap_or_else(|| with_full.to_owned());
    let origin = el.as_ref().and_then(|e| {
        e.get_child("origin", crate::interop::NS)
            .and_then(|o| o.attr("provider").map(str::to_owned))
    });
    let encrypted = el.as_ref().is_some_and(|e| {
        e.get_child("encrypted", "eu.siacs.conversations.axolotl")
            .is_some()
            || e.get_child("encrypted", "urn:xmpp:omemo:2").is_some()
    });
    let one: crate::router::BlockList = std::iter::once(reported.to_owned()).collect();
    EvidenceMessage {
        at_ms: stamp_ms,
        from_reported: super::blocking::matches(&one, &from),
        from,
        origin,
        encrypted,
        bytes: stanza.len(),
    }
}

/// Records the reports of a block command that has just been applied.
pub async fn record(
    state: &ServerState,
    reporter: &str,
    reports: Vec<(String, Attached)>,
) -> Result<(), strait_store::StoreError> {
    let snapshot = state.interop.snapshot();
    let at_ms = super::now_ms();
    let owner = reporter.to_owned();
    let reports: Vec<AbuseReport> = reports
        .into_iter()
        .map(|(reported, a)| {
            let domain = jid::Jid::new(&reported)
                .map(|j| j.domain().to_string())
                .unwrap_or_default();
            AbuseReport {
                id: 0,
                at_ms,
                reporter: owner.clone(),
                provider: snapshot.provider_id_of_domain(&domain),
                reported,
                reason: a.reason,
                text: a.text,
                // Filled on the store's thread, with the archive reads.
                evidence: a
                    .ids
                    .into_iter()
                    .map(|stanza_id| Evidence {
                        stanza_id,
                        found: None,
                    })
                    .collect(),
                closed: None,
            }
        })
        .collect();
    let providers: Vec<Option<String>> = reports.iter().map(|r| r.provider.clone()).collect();
    state
        .store(move |st| {
            for mut r in reports {
                for e in &mut r.evidence {
                    let got = st.archive_get(&owner, std::slice::from_ref(&e.stanza_id))?;
                    e.found = got
                        .and_then(|v| v.into_iter().next())
                        .map(|m| evidence_of(&m.stanza, &m.with_full, m.stamp_ms, &r.reported));
                }
                st.report_add(&r)?;
            }
            Ok(())
        })
        .await?;
    for p in providers {
        state.metrics.report(p.as_deref());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(xml: &str) -> minidom::Element {
        format!("<item xmlns='urn:xmpp:blocking' jid='eve@acme.example'>{xml}</item>")
            .parse()
            .unwrap()
    }

    fn report(inner: &str, reason: &str) -> minidom::Element {
        item(&format!(
            "<report xmlns='{NS}' reason='{reason}'>{inner}</report>"
        ))
    }

    #[test]
    fn a_report_is_read_with_its_ids_and_text() {
        let el = report(
            "<stanza-id xmlns='urn:xmpp:sid:0' by='alice@p.example' id='a1'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='alice@p.example' id='a1'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='alice@p.example' id='b2'/>\
             <text xmlns='urn:xmpp:reporting:1' xml:lang='en'> buy now </text>",
            "urn:xmpp:reporting:abuse",
        );
        let a = parse(&el, "alice@p.example").unwrap().unwrap();
        assert_eq!(a.reason, ReportReason::Abuse);
        assert_eq!(a.ids, ["a1", "b2"]);
        assert_eq!(a.text, "buy now");
        assert_eq!(parse(&item(""), "alice@p.example").unwrap(), None);
    }

    #[test]
    fn bad_reports_are_refused_with_a_reason() {
        let text = |el: &minidom::Element| {
            parse(el, "alice@p.example")
                .unwrap_err()
                .text
                .unwrap_or_default()
        };
        assert!(text(&report("", "")).contains("needs a reason"));
        assert!(text(&report("", "urn:xmpp:reporting:rude")).contains("unknown report reason"));
        let foreign = report(
            "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@p.example' id='a1'/>",
            "urn:xmpp:reporting:spam",
        );
        assert!(text(&foreign).contains("own archive"), "{}", text(&foreign));
        let many: String = (0..=MAX_IDS)
            .map(|i| format!("<stanza-id xmlns='urn:xmpp:sid:0' by='alice@p.example' id='i{i}'/>"))
            .collect();
        assert!(text(&report(&many, "urn:xmpp:reporting:spam")).contains("at most 20"));
        let long = format!(
            "<text xmlns='urn:xmpp:reporting:1'>{}</text>",
            "x".repeat(MAX_TEXT + 1)
        );
        assert!(text(&report(&long, "urn:xmpp:reporting:spam")).contains("at most 4096 bytes"));
        let two = item(&format!(
            "<report xmlns='{NS}' reason='urn:xmpp:reporting:spam'/><report xmlns='{NS}' reason='urn:xmpp:reporting:spam'/>"
        ));
        assert!(text(&two).contains("one report"));
    }

    #[test]
    fn evidence_says_what_the_server_saw_and_not_the_content() {
        let stanza = "<message xmlns='jabber:client' from='eve@acme.example/phone' to='alice@p.example' type='chat'>\
            <encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'/><payload>AAAA</payload></encrypted>\
            <origin xmlns='urn:strait:interop:0' provider='acme' name='Acme'/></message>";
        let e = evidence_of(stanza, "eve@acme.example/phone", 42, "eve@acme.example");
        assert_eq!(e.from, "eve@acme.example/phone");
        assert!(e.from_reported && e.encrypted);
        assert_eq!(e.origin.as_deref(), Some("acme"));
        assert_eq!((e.at_ms, e.bytes), (42, stanza.len()));
        // A block of the whole domain covers every sender on it; another JID does not.
        assert!(evidence_of(stanza, "", 0, "acme.example").from_reported);
        assert!(!evidence_of(stanza, "", 0, "mallory@acme.example").from_reported);
        let plain =
            "<message xmlns='jabber:client' from='alice@p.example/pc'><body>hi</body></message>";
        let e = evidence_of(plain, "", 0, "eve@acme.example");
        assert!(!e.from_reported && !e.encrypted && e.origin.is_none());
    }
}
