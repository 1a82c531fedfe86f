//! IQ handling (RFC 6120 §8.2.3, RFC 6121 §8.5): answered by the server for itself and on
//! behalf of accounts, routed to full JIDs, and always answered when a request cannot be.

use super::{blocking, carbons, delivery, disco, iq_result, ping, roster, upload};
use crate::c2s::session::Session;
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition};

const SESSION_NS: &str = "urn:ietf:params:xml:ns:xmpp-session";

pub async fn from_client(s: &mut Session, mut stanza: Stanza, to: Option<jid::Jid>) {
    let ty = stanza.type_.as_deref().unwrap_or("");
    let request = matches!(ty, "get" | "set");
    if !request && !matches!(ty, "result" | "error") {
        s.reply_error(
            &stanza,
            StanzaError::with_text(StanzaErrorCondition::BadRequest, "invalid iq type"),
        );
        return;
    }
    if stanza.id.as_deref().unwrap_or("").is_empty() {
        s.reply_error(
            &stanza,
            StanzaError::with_text(StanzaErrorCondition::BadRequest, "an iq needs an id"),
        );
        return;
    }
    if request && stanza.children().len() != 1 {
        s.reply_error(
            &stanza,
            StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "a get or set iq has exactly one child",
            ),
        );
        return;
    }
    let Some(to) = to else {
        // No `to`: the server answers on behalf of the account (RFC 6120 §10.3.3).
        if request {
            account_request(s, &stanza, true).await;
        } else {
            super::caps::on_iq_response(s, &stanza).await;
        }
        return;
    };
    // XEP-0191: nothing goes to a JID the user blocked.
    if to.node().is_some()
        && !super::is_bare_of(&to, &s.bare)
        && blocking::outbound_refused(s, &stanza, &to).await
    {
        return;
    }
    let domain = to.domain().as_str().to_owned();
    // XEP-0363: `upload.<domain>`, a service of a served domain.
    if let Some(served) = s
        .state
        .uploads
        .as_ref()
        .and_then(|u| u.service_domain(&domain))
        .filter(|_| to.node().is_none() && to.resource().is_none())
    {
        let served = served.to_owned();
        if request {
            upload::handle(s, &stanza, &served).await;
        }
        return;
    }
    if !s.state.is_local_domain(&domain) {
        // To a federated provider's user, over its interop link.
        if let Some(r) = crate::s2s::route(&s.state, &s.bare, &to, stanza.clone()).await {
            if let Err(e) = r
                && request
            {
                s.reply_error(&stanza, e);
            }
            return;
        }
        // To an external component (XEP-0114), or unreachable.
        let err = match crate::component::route(&s.state, &domain, stanza.clone()) {
            Some(Ok(())) => return,
            Some(Err(e)) => e,
            None => super::unreachable_domain(&domain),
        };
        if request {
            s.reply_error(&stanza, err);
        }
        return;
    }
    let bare = to.to_bare().to_string();
    // XEP-0191 §3.5: a blocked sender's requests are answered as if the account were not there.
    if to.node().is_some() && bare != s.bare && blocking::blocks(&s.state, &bare, &s.full).await {
        if request {
            s.reply_error(
                &stanza,
                StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
            );
        }
        return;
    }
    // Between a platform user and a provider's user: the boundary policy (interop).
    if to.node().is_some()
        && bare != s.bare
        && let Err(e) = crate::interop::boundary::check(&s.state, &s.bare, &bare, &mut stanza).await
    {
        if request {
            s.reply_error(&stanza, e);
        }
        return;
    }
    match (to.node(), to.resource()) {
        (None, None) => {
            if request {
                server_request(s, &stanza).await;
            } else {
                super::caps::on_iq_response(s, &stanza).await;
            }
        }
        (None, Some(_)) => {
            if request {
                s.reply_error(
                    &stanza,
                    StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
                );
            }
        }
        (Some(_), None) => {
            if request {
                let own = bare == s.bare;
                if own || delivery::account_exists(&s.state, &bare).await {
                    account_request(s, &stanza, own).await;
                } else {
                    s.reply_error(
                        &stanza,
                        StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
                    );
                }
            }
        }
        (Some(_), Some(res)) => {
            if !delivery::to_full(&s.state, &bare, res.as_str(), stanza.clone()) && request {
                s.reply_error(
                    &stanza,
                    StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
                );
            }
        }
    }
}

fn payload(s: &mut Session, stanza: &Stanza) -> Option<minidom::Element> {
    match stanza.first_payload() {
        Ok(Some(p)) => Some(p),
        _ => {
            s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::BadRequest));
            None
        }
    }
}

/// Requests to the server's own domain.
async fn server_request(s: &mut Session, stanza: &Stanza) {
    let Some(p) = payload(s, stanza) else { return };
    let get = stanza.type_.as_deref() == Some("get");
    let ns = p.ns();
    let has_node = p.attr("node").is_some();
    let caps_info = p.attr("node").and_then(|n| {
        disco::server_info_for_node(&s.state.server_info, &s.state.server_caps_ver, n)
    });
    match (ns.as_str(), p.name(), get) {
        (disco::INFO, "query", true) if !has_node => {
            s.reply(iq_result(stanza, Some(&s.state.server_info)))
        }
        (disco::ITEMS, "query", true) if !has_node => {
            let mut services = match (&s.state.uploads, stanza.to.as_deref()) {
                // A provider's domain: its users upload through the platform's service.
                (Some(_), Some(domain)) if s.state.config.served_domain(domain).is_none() => {
                    vec![upload::Uploads::service_jid(&s.state.config.domains[0])]
                }
                (Some(_), Some(domain)) => vec![upload::Uploads::service_jid(domain)],
                _ => Vec::new(),
            };
            // Components (XEP-0114) are the server's services too.
            services.extend(
                s.state
                    .config
                    .components
                    .iter()
                    .map(|c| c.domain.to_ascii_lowercase()),
            );
            s.reply(iq_result(stanza, Some(&disco::items(&services))))
        }
        // XEP-0115: the node of the server's announced capabilities.
        (disco::INFO, "query", true) if caps_info.is_some() => {
            s.reply(iq_result(stanza, caps_info.as_deref()))
        }
        (disco::INFO | disco::ITEMS, "query", true) => {
            s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::ItemNotFound))
        }
        (ping::NS, "ping", true) => s.reply(iq_result(stanza, None)),
        (disco::VERSION, "query", true) => s.reply(iq_result(stanza, Some(&disco::version()))),
        // The legacy session establishment (RFC 3921), still sent by some clients.
        (SESSION_NS, "session", false) => s.reply(iq_result(stanza, None)),
        (super::vcard::NS, "vCard", _) => super::vcard::server_vcard(s, stanza),
        (roster::NS, "query", _) => roster::handle(s, stanza, &p).await,
        (carbons::NS, _, false) => carbons::handle(s, stanza, &p),
        // XEP-0077 to the user's own server only.
        (super::register::NS, "query", _) if stanza.to.as_deref() == Some(s.domain.as_str()) => {
            super::register::handle(s, stanza, &p).await
        }
        _ => s.reply_error(
            stanza,
            StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
        ),
    }
}

/// Requests to an account's bare JID, answered by the server on its behalf.
async fn account_request(s: &mut Session, stanza: &Stanza, own: bool) {
    let Some(p) = payload(s, stanza) else { return };
    let get = stanza.type_.as_deref() == Some("get");
    let ns = p.ns();
    let has_node = p.attr("node").is_some();
    match (ns.as_str(), p.name(), get, own) {
        (roster::NS, "query", _, true) => roster::handle(s, stanza, &p).await,
        (roster::NS, "query", _, false) => {
            s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::Forbidden))
        }
        (disco::INFO, "query", true, _) if !has_node => s.reply(iq_result(
            stanza,
            Some(&disco::account_info(
                s.state.config.archive.enabled,
                !s.state.config.components.is_empty(),
            )),
        )),
        (disco::ITEMS, "query", true, _) if !has_node => super::pep::disco_items(s, stanza).await,
        (disco::INFO, "query", true, _) => {
            let node = p.attr("node").unwrap_or_default().to_owned();
            super::pep::disco_node_info(s, stanza, &node).await
        }
        (super::pep::NS | super::pep::NS_OWNER, "pubsub", _, _) => {
            super::pep::handle(s, stanza, &p).await
        }
        (super::vcard::NS, "vCard", _, _) => super::vcard::handle(s, stanza, &p, own).await,
        (super::private::NS, "query", _, _) => super::private::handle(s, stanza, &p, own).await,
        (crate::interop::NS, "consent", _, true) => {
            crate::interop::consent_iq::handle(s, stanza, &p).await
        }
        // XEP-0077 without a `to` (some clients send it so): the same as to the server.
        (super::register::NS, "query", _, true) if stanza.to.is_none() => {
            super::register::handle(s, stanza, &p).await
        }
        (super::push::NS, "enable" | "disable", false, true) => {
            super::push::handle(s, stanza, &p).await
        }
        (disco::ITEMS, "query", true, _) => {
            s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::ItemNotFound))
        }
        (ping::NS, "ping", true, true) => s.reply(iq_result(stanza, None)),
        (SESSION_NS, "session", false, true) => s.reply(iq_result(stanza, None)),
        (carbons::NS, _, false, true) => carbons::handle(s, stanza, &p),
        (blocking::NS, _, _, true) => blocking::handle(s, stanza, &p).await,
        (super::mam::NS, _, _, true) if !s.state.config.archive.enabled => s.reply_error(
            stanza,
            StanzaError::with_text(
                StanzaErrorCondition::ServiceUnavailable,
                "message archives are turned off on this server",
            ),
        ),
        (super::mam::NS, _, _, true) => super::mam::handle(s, stanza, &p).await,
        (super::mam::NS, _, _, false) => {
            s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::Forbidden))
        }
        _ => s.reply_error(
            stanza,
            StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
        ),
    }
}
