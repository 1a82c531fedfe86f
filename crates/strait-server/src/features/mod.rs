//! The IM features, one module per specification: messages (RFC 6121 §5, §8), presence and
//! subscriptions (RFC 6121 §3-4), roster (RFC 6121 §2), IQ dispatch, disco (XEP-0030),
//! ping (XEP-0199), offline storage (XEP-0160 with XEP-0203 delay stamps).

pub mod avatar;
pub mod blocking;
pub mod caps;
pub mod carbons;
pub mod csi;
pub mod delivery;
pub mod disco;
pub mod iq;
pub mod mam;
pub mod message;
pub mod offline;
pub mod pep;
pub mod ping;
pub mod presence;
pub mod private;
pub mod push;
pub mod register;
pub mod report;
pub mod roster;
pub mod sm;
pub mod stanza_id;
pub mod upload;
pub mod vcard;

use strait_wire::{Stanza, StanzaError, escape_attr};

/// The error answer to `original` (RFC 6120 §8.3): addresses swapped, same id, `type='error'`.
/// `None` for an error stanza, which is never answered.
/// Whether `j`'s bare JID is `bare`, without building it (this runs for every message).
pub fn is_bare_of(j: &jid::Jid, bare: &str) -> bool {
    let domain = j.domain().as_str();
    match j.node() {
        Some(node) => bare
            .strip_prefix(node.as_str())
            .and_then(|rest| rest.strip_prefix('@'))
            .is_some_and(|d| d == domain),
        None => bare == domain,
    }
}

pub fn error_reply(original: &Stanza, error: &StanzaError) -> Option<Stanza> {
    error_reply_with(original, error, None)
}

/// [`error_reply`] with an application-specific condition (RFC 6120 §8.3.3.3, canonical XML)
/// after the defined one and the text.
pub fn error_reply_with(
    original: &Stanza,
    error: &StanzaError,
    app_xml: Option<&str>,
) -> Option<Stanza> {
    if original.type_.as_deref() == Some("error") {
        return None;
    }
    let mut r = Stanza::new(&original.ns, &original.name);
    r.id = original.id.clone();
    r.from = original.to.clone();
    r.to = original.from.clone();
    r.type_ = Some("error".into());
    let mut xml = with_client_ns(&error.to_xml());
    if let Some(app) = app_xml
        && let Some(body) = xml.strip_suffix("</error>")
    {
        xml = format!("{body}{app}</error>");
    }
    r.push_child_xml(&xml);
    Some(r)
}

/// Server-generated `<error/>` elements carry no namespace of their own; inside a stanza
/// they belong to `jabber:client`.
fn with_client_ns(error_xml: &str) -> String {
    match error_xml.strip_prefix("<error") {
        Some(rest) if !rest.starts_with(" xmlns=") => {
            format!("<error xmlns='{}'{rest}", strait_wire::ns::CLIENT)
        }
        _ => error_xml.to_owned(),
    }
}

/// Answers `internal-server-error` to a request the store failed, and logs why (`what`: what
/// was being done) for the operator; the client learns nothing of the store.
pub fn store_failed(
    s: &mut crate::c2s::session::Session,
    request: &Stanza,
    what: &str,
    e: &dyn std::fmt::Display,
) {
    tracing::error!(account = %s.bare, "{what}: {e}");
    s.reply_error(
        request,
        StanzaError::new(strait_wire::StanzaErrorCondition::InternalServerError),
    );
}

/// Answers a request once its store write has run: the empty result; past a per-account
/// limit `resource-constraint` with `quota(limit)` as the text; otherwise [`store_failed`].
pub fn answer_write(
    s: &mut crate::c2s::session::Session,
    request: &Stanza,
    r: Result<(), strait_store::StoreError>,
    quota: impl FnOnce(usize) -> String,
    what: &str,
) {
    match r {
        Ok(()) => s.reply(iq_result(request, None)),
        Err(strait_store::StoreError::QuotaExceeded { limit, .. }) => s.reply_error(
            request,
            StanzaError::with_text(
                strait_wire::StanzaErrorCondition::ResourceConstraint,
                quota(limit),
            ),
        ),
        Err(e) => store_failed(s, request, what, &e),
    }
}

/// The error for an address on a domain this server cannot reach (no interop link to it).
pub fn unreachable_domain(domain: &str) -> StanzaError {
    StanzaError::with_text(
        strait_wire::StanzaErrorCondition::RemoteServerNotFound,
        format!("{domain} is not reachable from this server"),
    )
}

/// A stanza from the server itself (`from` = the domain or an account) to `to`.
pub fn server_stanza(
    name: &str,
    type_: Option<&str>,
    from: &str,
    to: &str,
    id: Option<String>,
) -> Stanza {
    let mut s = Stanza::new(strait_wire::ns::CLIENT, name);
    s.type_ = type_.map(str::to_owned);
    s.from = Some(from.to_owned());
    s.to = Some(to.to_owned());
    s.id = id;
    s
}

/// The result answer to an IQ, with an optional payload element.
pub fn iq_result(request: &Stanza, payload: Option<&str>) -> Stanza {
    let mut r = Stanza::new(strait_wire::ns::CLIENT, "iq");
    r.type_ = Some("result".into());
    r.id = request.id.clone();
    r.from = request.to.clone();
    r.to = request.from.clone();
    if let Some(p) = payload {
        r.push_child_xml(p);
    }
    r
}

/// Writes `name='value'` with canonical escaping.
pub fn attr(name: &str, value: &str) -> String {
    format!(" {name}='{}'", escape_attr(value))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// XEP-0082 date-time in UTC with milliseconds, e.g. `2026-11-24T16:16:16.123Z`.
pub fn xep0082_stamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_wire::StanzaErrorCondition;

    #[test]
    fn bare_of_a_jid_is_compared_without_building_it() {
        let j = |s: &str| jid::Jid::new(s).unwrap();
        for (full, bare, same) in [
            ("a@x/r", "a@x", true),
            ("a@x", "a@x", true),
            ("a@x/r", "a@y", false),
            ("a@x/r", "ab@x", false),
            ("ab@x", "a@x", false),
            ("x/r", "x", true),
            ("x", "a@x", false),
            ("a@x", "x", false),
        ] {
            assert_eq!(is_bare_of(&j(full), bare), same, "{full} vs {bare}");
            assert_eq!(
                j(full).to_bare().to_string() == bare,
                same,
                "{full} vs {bare}"
            );
        }
    }

    #[test]
    fn error_reply_swaps_addresses_and_keeps_id() {
        let mut m = Stanza::new(strait_wire::ns::CLIENT, "message");
        m.id = Some("m1".into());
        m.from = Some("a@x/r".into());
        m.to = Some("b@x".into());
        let r = error_reply(
            &m,
            &StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
        )
        .unwrap();
        assert_eq!(r.to.as_deref(), Some("a@x/r"));
        assert_eq!(r.from.as_deref(), Some("b@x"));
        assert_eq!(r.id.as_deref(), Some("m1"));
        assert_eq!(r.type_.as_deref(), Some("error"));
        assert!(
            r.has_child(strait_wire::ns::CLIENT, "error"),
            "{}",
            r.to_xml(strait_wire::ns::CLIENT)
        );
        let xml = r.to_xml(strait_wire::ns::CLIENT);
        assert!(xml.contains("service-unavailable"), "{xml}");
        let mut e = r.clone();
        e.type_ = Some("error".into());
        assert!(
            error_reply(
                &e,
                &StanzaError::new(StanzaErrorCondition::ServiceUnavailable)
            )
            .is_none()
        );
    }

    #[test]
    fn stamps_are_xep0082() {
        assert_eq!(xep0082_stamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(xep0082_stamp(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
