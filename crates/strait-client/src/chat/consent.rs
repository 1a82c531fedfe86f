//! A platform user's own consent to third-party chats, over a Strait platform's
//! `urn:strait:interop:0` IQ (docs/interop.md, "Consent").

use super::{ChatError, Client, NS_INTEROP, error_of};
use crate::conn::ConnError;
use crate::xml::Element;

/// A platform user's choice about third-party chats (docs/interop.md, "Consent"), as the
/// platform holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consent {
    /// Whether third-party chats are on at all.
    pub enabled: bool,
    /// `separate` (a third-party section, the default) or `combined`.
    pub inbox: String,
    /// Every active provider, and any other this user allowed.
    pub providers: Vec<ProviderChoice>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderChoice {
    pub id: String,
    pub name: String,
    /// The agreement's status: `active`, `suspended`, ...
    pub status: String,
    pub allowed: bool,
}

/// A change to the consent: what is left `None` or unnamed stays as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsentChange {
    pub enabled: Option<bool>,
    /// `separate` or `combined`.
    pub inbox: Option<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl Client {
    /// This platform user's consent to third-party chats (a Strait platform's
    /// `urn:strait:interop:0` IQ).
    pub async fn consent(&mut self) -> Result<Consent, ChatError> {
        self.consent_iq("get", "").await
    }

    /// Changes the consent; returns it as it now stands.
    pub async fn set_consent(&mut self, change: &ConsentChange) -> Result<Consent, ChatError> {
        let mut attrs = String::new();
        if let Some(e) = change.enabled {
            attrs.push_str(&format!(" enabled='{e}'"));
        }
        if let Some(i) = &change.inbox {
            attrs.push_str(&format!(" inbox='{}'", crate::xml::escape(i)));
        }
        let mut inner = String::new();
        for (ids, allowed) in [(&change.allow, true), (&change.deny, false)] {
            for id in ids {
                inner.push_str(&format!(
                    "<provider id='{}' allowed='{allowed}'/>",
                    crate::xml::escape(id)
                ));
            }
        }
        self.consent_iq("set", &format!("{attrs}>{inner}</consent"))
            .await
    }

    /// `body`: the attributes and content of `<consent` (empty: `<consent/>`).
    async fn consent_iq(&mut self, ty: &str, body: &str) -> Result<Consent, ChatError> {
        let element = match body {
            "" => format!("<consent xmlns='{NS_INTEROP}'/>"),
            b => format!("<consent xmlns='{NS_INTEROP}'{b}>"),
        };
        let raw = self
            .iq(|id| format!("<iq type='{ty}' id='{id}'>{element}</iq>"))
            .await?;
        let el = Element::parse(&raw).ok_or(ConnError::Protocol("unparsable answer".into()))?;
        if el.attr("type").as_deref() != Some("result") {
            let (condition, text) = error_of(&raw);
            return Err(ChatError::Consent(match text {
                Some(t) => format!("{condition} ({t})"),
                None => condition,
            }));
        }
        let c = el
            .child("consent")
            .ok_or_else(|| ChatError::Consent("the answer holds no consent".into()))?;
        let attr = |e: &Element<'_>, n: &str| e.attr(n).map(|v| v.into_owned()).unwrap_or_default();
        Ok(Consent {
            enabled: c.attr("enabled").as_deref() == Some("true"),
            inbox: attr(&c, "inbox"),
            providers: c
                .children()
                .filter(|p| p.is("provider"))
                .map(|p| ProviderChoice {
                    id: attr(&p, "id"),
                    name: attr(&p, "name"),
                    status: attr(&p, "status"),
                    allowed: p.attr("allowed").as_deref() == Some("true"),
                })
                .collect(),
        })
    }
}
