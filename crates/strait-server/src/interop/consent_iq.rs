//! The consent IQ (`urn:strait:interop:0`, docs/interop.md): a platform user's app shows the
//! providers the platform is open to and sets which of them may reach the user.
//!
//! ```xml
//! <iq type='get' id='c1'><consent xmlns='urn:strait:interop:0'/></iq>
//! <iq type='result' id='c1'>
//!   <consent xmlns='urn:strait:interop:0' enabled='false' inbox='separate'>
//!     <provider id='acme' name='Acme Chat' allowed='false'/>
//!   </consent>
//! </iq>
//! <iq type='set' id='c2'>
//!   <consent xmlns='urn:strait:interop:0' enabled='true' inbox='combined'>
//!     <provider id='acme' allowed='true'/>
//!   </consent>
//! </iq>
//! ```
//!
//! A set changes only what it names; its result is the consent as it now stands.

use super::NS;
use super::consent::{self, ConsentChange, ConsentError};
use crate::c2s::session::Session;
use crate::features::iq_result;
use minidom::Element;
use strait_store::{Consent, InboxMode, ProviderStatus};
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition as Cond, escape_attr};

fn bad(text: impl Into<String>) -> StanzaError {
    StanzaError::with_text(Cond::BadRequest, text)
}

/// The `<consent/>` answer: the user's choice, and every provider that is active or that
/// the user allowed.
fn answer(s: &Session, c: &Consent) -> String {
    let mut x = format!(
        "<consent xmlns='{NS}' enabled='{}' inbox='{}'>",
        c.enabled,
        c.inbox.as_str()
    );
    for p in s.state.interop.snapshot().providers() {
        let allowed = c.providers.contains(&p.id);
        if p.status != ProviderStatus::Active && !allowed {
            continue;
        }
        x.push_str(&format!(
            "<provider id='{}' name='{}' status='{}' allowed='{allowed}'/>",
            escape_attr(&p.id),
            escape_attr(&p.name),
            p.status.as_str()
        ));
    }
    x.push_str("</consent>");
    x
}

fn parse_bool(v: Option<&str>, what: &str) -> Result<Option<bool>, StanzaError> {
    match v {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(other) => Err(bad(format!("{what} is true or false, not {other:?}"))),
    }
}

/// Reads a set's `<consent/>` into a change.
fn parse_change(el: &Element) -> Result<ConsentChange, StanzaError> {
    let mut change = ConsentChange {
        enabled: parse_bool(el.attr("enabled"), "enabled")?,
        ..ConsentChange::default()
    };
    if let Some(i) = el.attr("inbox") {
        change.inbox = Some(
            InboxMode::parse(i)
                .ok_or_else(|| bad(format!("inbox is separate or combined, not {i:?}")))?,
        );
    }
    for p in el.children() {
        if p.ns() != NS || p.name() != "provider" {
            return Err(bad(format!("unexpected <{}/> in <consent/>", p.name())));
        }
        let id = p
            .attr("id")
            .filter(|i| !i.is_empty())
            .ok_or_else(|| bad("a <provider/> needs an id"))?;
        match parse_bool(p.attr("allowed"), "allowed")? {
            Some(true) => change.allow.push(id.to_owned()),
            Some(false) => change.deny.push(id.to_owned()),
            None => return Err(bad("a <provider/> needs allowed='true' or 'false'")),
        }
    }
    Ok(change)
}

pub async fn handle(s: &mut Session, stanza: &Stanza, el: &Element) {
    if s.state.config.served_domain(&s.domain).is_none() {
        s.reply_error(
            stanza,
            StanzaError::with_text(
                Cond::NotAllowed,
                "consent to third-party chats is for this platform's own users",
            ),
        );
        return;
    }
    let owner = s.bare.clone();
    if stanza.type_.as_deref() == Some("get") {
        match s.state.store(move |st| st.consent(&owner)).await {
            Ok(c) => {
                let x = answer(s, &c);
                s.reply(iq_result(stanza, Some(&x)));
            }
            Err(e) => crate::features::store_failed(s, stanza, "reading consent", &e),
        }
        return;
    }
    let change = match parse_change(el) {
        Ok(c) => c,
        Err(e) => return s.reply_error(stanza, e),
    };
    let state = s.state.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let r =
        tokio::task::spawn_blocking(move || consent::change(&*state.store, &owner, &change, now))
            .await;
    match r {
        Ok(Ok(c)) => {
            s.state.interop.consents.set(&s.bare, c.clone());
            tracing::info!(account = %s.bare, enabled = c.enabled, providers = ?c.providers, "consent changed");
            let x = answer(s, &c);
            s.reply(iq_result(stanza, Some(&x)));
        }
        Ok(Err(ConsentError::UnknownProvider(id))) => s.reply_error(
            stanza,
            StanzaError::with_text(
                Cond::ItemNotFound,
                format!("no provider {id} is registered"),
            ),
        ),
        Ok(Err(e @ ConsentError::Terminated(_))) => s.reply_error(
            stanza,
            StanzaError::with_text(Cond::NotAllowed, e.to_string()),
        ),
        Ok(Err(e)) => crate::features::store_failed(s, stanza, "changing consent", &e),
        Err(e) => crate::features::store_failed(s, stanza, "changing consent", &e),
    }
}
