//! Blocking contacts (XEP-0191, `urn:xmpp:blocking`) and reporting them (XEP-0377, a
//! `<report/>` on the block's item).
//!
//! The server enforces the list: what a blocked address sends the user is answered as if the
//! account did not exist (`service-unavailable`), and what the user sends it is refused with
//! `not-acceptable` and `<blocked xmlns='urn:xmpp:blocking:errors'/>` ([`ChatError::Refused`]
//! from [`Client::send`]). A report names messages by the ids of the reporter's own archive
//! copies (XEP-0359 stanza-ids, kept in the history: [`Client::received_stanza_ids`]), so the
//! platform can look at what was received without trusting the reporter for the content.

use super::{ChatError, Client, NS_SID, bare, error_of};
use crate::conn::ConnError;
use crate::xml::{Element, escape};

const NS_BLOCKING: &str = "urn:xmpp:blocking";
const NS_REPORTING: &str = "urn:xmpp:reporting:1";
/// The most stanza-ids one report may name (the platform refuses more).
pub const MAX_REPORT_IDS: usize = 20;
/// The longest a report's text may be, in bytes of UTF-8.
pub const MAX_REPORT_TEXT: usize = 4096;

/// Why a contact is reported (XEP-0377 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportReason {
    /// Unsolicited messages: `urn:xmpp:reporting:spam`.
    Spam,
    /// Harassment or other abuse: `urn:xmpp:reporting:abuse`.
    Abuse,
}

impl ReportReason {
    /// The reason as XEP-0377 writes it.
    pub fn uri(self) -> &'static str {
        match self {
            ReportReason::Spam => "urn:xmpp:reporting:spam",
            ReportReason::Abuse => "urn:xmpp:reporting:abuse",
        }
    }
}

/// A report attached to a block (XEP-0377).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub reason: ReportReason,
    /// The user's own words (at most [`MAX_REPORT_TEXT`] bytes; empty is the same as none).
    pub text: Option<String>,
    /// The messages reported: this account's stanza-ids of them (at most
    /// [`MAX_REPORT_IDS`]), e.g. from [`Client::received_stanza_ids`].
    pub stanza_ids: Vec<String>,
}

/// Whether XML 1.0 can carry `s` at all (no control characters but tab and line ends, no
/// U+FFFE or U+FFFF): what escaping cannot fix.
fn xml_safe(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && !matches!(c, '\u{FFFE}' | '\u{FFFF}'))
    })
}

/// An address for a block item, checked: `what` names it in the error.
fn checked_jid<'a>(jid: &'a str, what: &str) -> Result<&'a str, ChatError> {
    let j = jid.trim();
    if j.is_empty() {
        return Err(ChatError::Invalid(format!("{what}: an empty address")));
    }
    if !xml_safe(j) || j.chars().any(char::is_whitespace) {
        return Err(ChatError::Invalid(format!(
            "{what}: {j:?} is not an address"
        )));
    }
    Ok(j)
}

/// The `<report/>` element of `report`, by `reporter` (the account's bare JID, the `by` of
/// its stanza-ids), checked against the limits first.
fn report_xml(report: &Report, reporter: &str) -> Result<String, ChatError> {
    let n = report.stanza_ids.len();
    if n > MAX_REPORT_IDS {
        return Err(ChatError::Invalid(format!(
            "a report names at most {MAX_REPORT_IDS} messages, this one {n}"
        )));
    }
    if let Some(bad) = report
        .stanza_ids
        .iter()
        .find(|id| id.is_empty() || !xml_safe(id))
    {
        return Err(ChatError::Invalid(format!("{bad:?} is not a stanza-id")));
    }
    let text = report.text.as_deref().filter(|t| !t.is_empty());
    if let Some(t) = text {
        if t.len() > MAX_REPORT_TEXT {
            return Err(ChatError::Invalid(format!(
                "a report's text is at most {MAX_REPORT_TEXT} bytes, this one {}",
                t.len()
            )));
        }
        if !xml_safe(t) {
            return Err(ChatError::Invalid(
                "a report's text cannot hold control characters".into(),
            ));
        }
    }
    let by = escape(reporter);
    let mut xml = format!(
        "<report xmlns='{NS_REPORTING}' reason='{}'>",
        report.reason.uri()
    );
    for id in &report.stanza_ids {
        xml.push_str(&format!(
            "<stanza-id xmlns='{NS_SID}' by='{by}' id='{}'/>",
            escape(id)
        ));
    }
    if let Some(t) = text {
        xml.push_str(&format!("<text xml:lang='en'>{}</text>", escape(t)));
    }
    xml.push_str("</report>");
    Ok(xml)
}

/// The `<block/>` command for `jid`, with `report` on its item.
fn block_xml(jid: &str, report: Option<&Report>, reporter: &str) -> Result<String, ChatError> {
    let jid = checked_jid(jid, "block")?;
    let item = match report {
        None => format!("<item jid='{}'/>", escape(jid)),
        Some(r) => format!(
            "<item jid='{}'>{}</item>",
            escape(jid),
            report_xml(r, reporter)?
        ),
    };
    Ok(format!("<block xmlns='{NS_BLOCKING}'>{item}</block>"))
}

/// The `<unblock/>` command: these addresses, or (none) every one.
fn unblock_xml(jids: &[&str]) -> Result<String, ChatError> {
    if jids.is_empty() {
        return Ok(format!("<unblock xmlns='{NS_BLOCKING}'/>"));
    }
    let mut items = String::new();
    for j in jids {
        let j = checked_jid(j, "unblock")?;
        items.push_str(&format!("<item jid='{}'/>", escape(j)));
    }
    Ok(format!("<unblock xmlns='{NS_BLOCKING}'>{items}</unblock>"))
}

/// The addresses of a `<blocklist/>` result.
fn blocklist_of(el: &Element<'_>) -> Option<Vec<String>> {
    let list = el
        .child("blocklist")
        .filter(|l| l.attr("xmlns").as_deref() == Some(NS_BLOCKING))?;
    Some(
        list.children()
            .filter(|i| i.is("item"))
            .filter_map(|i| i.attr("jid").map(|j| j.into_owned()))
            .collect(),
    )
}

impl Client {
    /// Blocks `jid` (an account, a full JID, or a whole domain): the server stops its messages
    /// and refuses the user's to it (see the module documentation). With `report`, the block
    /// also reports it to the platform (XEP-0377) with the messages named. Returns once the
    /// server has taken it; a refusal is [`ChatError::Blocking`], and a report over the limits
    /// or an empty address is [`ChatError::Invalid`], before anything is sent.
    pub async fn block(&mut self, jid: &str, report: Option<&Report>) -> Result<(), ChatError> {
        let reporter = bare(&self.conn.jid).to_owned();
        let command = block_xml(jid, report, &reporter)?;
        self.blocking_iq("set", &command).await?;
        // The next send to it reads its device lists, whose refusal says it is blocked
        // before anything is encrypted.
        self.lists.forget_blocked(jid);
        Ok(())
    }

    /// Unblocks these addresses; an empty slice unblocks every address on the list.
    pub async fn unblock(&mut self, jids: &[&str]) -> Result<(), ChatError> {
        let command = unblock_xml(jids)?;
        self.blocking_iq("set", &command).await.map(|_| ())
    }

    /// The addresses this account blocks, as the server holds them.
    pub async fn blocklist(&mut self) -> Result<Vec<String>, ChatError> {
        let raw = self
            .blocking_iq("get", &format!("<blocklist xmlns='{NS_BLOCKING}'/>"))
            .await?;
        let el = Element::parse(&raw).ok_or(ConnError::Protocol("unparsable answer".into()))?;
        blocklist_of(&el).ok_or_else(|| ChatError::Blocking {
            condition: "undefined-condition".into(),
            text: Some("the answer holds no block list".into()),
        })
    }

    /// Sends a blocking command; its result, or the server's error as
    /// [`ChatError::Blocking`].
    async fn blocking_iq(&mut self, ty: &str, command: &str) -> Result<Vec<u8>, ChatError> {
        let raw = self
            .iq(|id| format!("<iq type='{ty}' id='{id}'>{command}</iq>"))
            .await?;
        let el = Element::parse(&raw).ok_or(ConnError::Protocol("unparsable answer".into()))?;
        if el.attr("type").as_deref() != Some("result") {
            let (condition, text) = error_of(&raw);
            return Err(ChatError::Blocking { condition, text });
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ids: usize, text: Option<&str>) -> Report {
        Report {
            reason: ReportReason::Spam,
            text: text.map(str::to_owned),
            stanza_ids: (0..ids).map(|i| format!("id-{i}")).collect(),
        }
    }

    #[test]
    fn a_block_with_a_report_is_written_as_xep_0377_puts_it() {
        let r = Report {
            reason: ReportReason::Abuse,
            text: Some("he said <that> & 'more'".into()),
            stanza_ids: vec!["a1".into(), "b'2".into()],
        };
        let xml = block_xml(" spammer@chat.acme.example ", Some(&r), "me@x.example").unwrap();
        assert_eq!(
            xml,
            "<block xmlns='urn:xmpp:blocking'><item jid='spammer@chat.acme.example'>\
             <report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:abuse'>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='me@x.example' id='a1'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='me@x.example' id='b&apos;2'/>\
             <text xml:lang='en'>he said &lt;that&gt; &amp; &apos;more&apos;</text>\
             </report></item></block>"
        );
        // It parses back as it was meant.
        let el = Element::parse(xml.as_bytes()).unwrap();
        let rep = el.child("item").unwrap().child("report").unwrap();
        let ids: Vec<String> = rep
            .children()
            .filter(|c| c.is("stanza-id"))
            .map(|c| c.attr("id").unwrap().into_owned())
            .collect();
        assert_eq!(ids, ["a1", "b'2"]);
        assert_eq!(
            crate::xml::decode(rep.child("text").unwrap().inner()),
            "he said <that> & 'more'"
        );
    }

    #[test]
    fn a_plain_block_and_unblocks_are_bare_items() {
        assert_eq!(
            block_xml("eve@x", None, "me@x").unwrap(),
            "<block xmlns='urn:xmpp:blocking'><item jid='eve@x'/></block>"
        );
        // Spam, no text, no ids (an empty text is no text).
        assert_eq!(
            block_xml("eve@x", Some(&report(0, Some(""))), "me@x").unwrap(),
            "<block xmlns='urn:xmpp:blocking'><item jid='eve@x'>\
             <report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'></report>\
             </item></block>"
        );
        assert_eq!(
            unblock_xml(&["eve@x", "spam.example"]).unwrap(),
            "<unblock xmlns='urn:xmpp:blocking'><item jid='eve@x'/><item jid='spam.example'/></unblock>"
        );
        assert_eq!(
            unblock_xml(&[]).unwrap(),
            "<unblock xmlns='urn:xmpp:blocking'/>"
        );
    }

    #[test]
    fn reports_over_the_limits_and_bad_addresses_are_refused_locally() {
        let invalid = |r: Result<String, ChatError>| match r {
            Err(ChatError::Invalid(why)) => why,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert!(block_xml("e@x", Some(&report(MAX_REPORT_IDS, None)), "me@x").is_ok());
        let why = invalid(block_xml("e@x", Some(&report(21, None)), "me@x"));
        assert!(why.contains("at most 20") && why.contains("21"), "{why}");
        let long = "é".repeat(MAX_REPORT_TEXT / 2);
        assert!(block_xml("e@x", Some(&report(1, Some(&long))), "me@x").is_ok());
        let why = invalid(block_xml(
            "e@x",
            Some(&report(1, Some(&format!("{long}x")))),
            "me@x",
        ));
        assert!(why.contains("4096 bytes") && why.contains("4097"), "{why}");
        let why = invalid(block_xml("e@x", Some(&report(1, Some("a\u{0}b"))), "me@x"));
        assert!(why.contains("control"), "{why}");
        let mut r = report(1, None);
        r.stanza_ids.push(String::new());
        assert!(invalid(block_xml("e@x", Some(&r), "me@x")).contains("stanza-id"));
        assert!(invalid(block_xml("  ", None, "me@x")).contains("empty address"));
        assert!(invalid(block_xml("e ve@x", None, "me@x")).contains("not an address"));
        assert!(invalid(unblock_xml(&["ok@x", ""])).contains("unblock"));
    }

    #[test]
    fn the_block_list_is_read_from_the_result() {
        let raw = b"<iq type='result' id='b1'><blocklist xmlns='urn:xmpp:blocking'>\
                    <item jid='eve@x'/><item jid='spam.example'/></blocklist></iq>";
        let el = Element::parse(raw).unwrap();
        assert_eq!(blocklist_of(&el).unwrap(), ["eve@x", "spam.example"]);
        let empty = Element::parse(
            b"<iq type='result' id='b1'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
        )
        .unwrap();
        assert_eq!(blocklist_of(&empty).unwrap(), Vec::<String>::new());
        let other = Element::parse(b"<iq type='result' id='b1'/>").unwrap();
        assert_eq!(blocklist_of(&other), None);
    }
}
