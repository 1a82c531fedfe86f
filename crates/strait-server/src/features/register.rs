//! In-band account management (XEP-0077, `jabber:iq:register`) for logged-in users: see
//! that one is registered, change one's password, delete one's account. Creating accounts in
//! band is not offered (no stream feature, no form before authentication): accounts are made
//! by the operator (`strait user add`), as XEP-0479 advises for servers by default.

use minidom::Element;
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition};

use super::iq_result;
use crate::c2s::session::Session;
use strait_wire::escape_text;

pub const NS: &str = "jabber:iq:register";

/// Shortest time between two password changes of one account.
pub const PASSWORD_CHANGE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// When each account last changed its password in band (only recent ones are kept).
#[derive(Default)]
pub struct PasswordChanges(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl PasswordChanges {
    /// Admits a change for `bare` now, or says how long it has to wait.
    pub fn admit(&self, bare: &str) -> Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|_, at| now.duration_since(*at) < PASSWORD_CHANGE_EVERY);
        if let Some(at) = g.get(bare) {
            return Err(PASSWORD_CHANGE_EVERY - now.duration_since(*at));
        }
        g.insert(bare.to_owned(), now);
        Ok(())
    }
}

/// `not-allowed`: the configuration leaves this to the operator.
fn operator_only(what: &str) -> StanzaError {
    StanzaError::with_text(
        StanzaErrorCondition::NotAllowed,
        format!("{what} by the operator on this server"),
    )
}

const NS_DATA: &str = "jabber:x:data";
/// XEP-0077 §3.3's form for a password change.
const FORM_CHANGE: &str = "jabber:iq:register:changepassword";

/// A field's first value in a data form.
fn form_value(x: &Element, var: &str) -> Option<String> {
    x.children()
        .find(|f| f.name() == "field" && f.attr("var") == Some(var))
        .and_then(|f| f.children().find(|v| v.name() == "value"))
        .map(|v| v.text())
}

/// A `jabber:iq:register` query from a logged-in user to its server.
pub async fn handle(s: &mut Session, stanza: &Stanza, q: &Element) {
    let localpart = s.bare.split_once('@').map_or("", |(l, _)| l).to_owned();
    if stanza.type_.as_deref() == Some("get") {
        // §3.1: already registered.
        let payload = format!(
            "<query xmlns='{NS}'><registered/><username>{}</username><password/></query>",
            escape_text(&localpart)
        );
        s.reply(iq_result(stanza, Some(&payload)));
        return;
    }
    if q.get_child("remove", NS).is_some() {
        return remove(s, stanza).await;
    }
    // The plain request (<username/>, <password/>), or §3.3's form, which can carry the
    // current password too.
    let form = q
        .get_child("x", NS_DATA)
        .filter(|x| form_value(x, "FORM_TYPE").as_deref() == Some(FORM_CHANGE));
    let (username, password, old) = match form {
        Some(x) => (
            form_value(x, "username"),
            form_value(x, "password"),
            form_value(x, "old_password"),
        ),
        None => (
            q.get_child("username", NS).map(|u| u.text()),
            q.get_child("password", NS).map(|p| p.text()),
            None,
        ),
    };
    if s.state.config.auth.allow_password_change
        && s.state.config.auth.password_change_needs_old
        && old.is_none()
    {
        // §3.3, Example 24: the form to send instead.
        let error = StanzaError::with_text(
            StanzaErrorCondition::NotAuthorized,
            "this server needs the current password too: send the form",
        );
        if let Some(mut r) = super::error_reply(stanza, &error) {
            r.push_child_xml(&format!(
                "<query xmlns='{NS}'><x xmlns='{NS_DATA}' type='form'><title>Password Change</title>\
                 <field type='hidden' var='FORM_TYPE'><value>{FORM_CHANGE}</value></field>\
                 <field type='text-single' label='Username' var='username'><value>{}</value><required/></field>\
                 <field type='text-private' label='Old Password' var='old_password'><required/></field>\
                 <field type='text-private' label='New Password' var='password'><required/></field>\
                 </x></query>",
                escape_text(&localpart)
            ));
            s.reply(r);
        }
        return;
    }
    let (Some(username), Some(password)) = (username, password) else {
        s.reply_error(
            stanza,
            StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "a password change needs <username/> and <password/>",
            ),
        );
        return;
    };
    if !s.state.config.auth.allow_password_change {
        return s.reply_error(stanza, operator_only("passwords are changed"));
    }
    // Normalized like a login name (phone numbers to E.164), then it must be this account.
    let same = crate::accounts::normalize_localpart(username.trim()).is_ok_and(|u| u == localpart);
    if !same {
        s.reply_error(
            stanza,
            StanzaError::with_text(
                StanzaErrorCondition::NotAllowed,
                "the username is not this account's",
            ),
        );
        return;
    }
    if password.is_empty() {
        s.reply_error(
            stanza,
            StanzaError::with_text(StanzaErrorCondition::NotAcceptable, "empty password"),
        );
        return;
    }
    // Deriving the SCRAM keys costs the server milliseconds of CPU: one change per account
    // per PASSWORD_CHANGE_EVERY, so that a client cannot keep the blocking pool busy.
    if let Err(wait) = s.state.password_changes.admit(&s.bare) {
        s.reply_error(
            stanza,
            StanzaError {
                error_type: strait_wire::ErrorType::Wait,
                condition: StanzaErrorCondition::ResourceConstraint,
                text: Some(format!(
                    "the password was just changed; try again in {} s",
                    wait.as_secs().max(1)
                )),
                by: None,
            },
        );
        return;
    }
    let config = s.state.config.clone();
    let bare = s.bare.clone();
    // PBKDF2 (checking the current password, deriving the new keys for both SCRAM variants)
    // runs on the blocking pool with the store write.
    let r = s
        .state
        .store(move |st| {
            if let Some(old) = &old {
                let creds = st.credentials(&bare)?;
                if !crate::sasl::password_matches(old, creds.as_ref()) {
                    return Ok(false);
                }
            }
            crate::accounts::set_password(&config, st, &bare, &password)
                .map(|_| true)
                .map_err(|e| strait_store::StoreError::Backend(e.to_string()))
        })
        .await;
    match r {
        Ok(false) => {
            tracing::info!(account = %s.bare, "password change refused: wrong current password");
            s.reply_error(
                stanza,
                StanzaError::with_text(
                    StanzaErrorCondition::NotAuthorized,
                    "the current password is not right",
                ),
            );
        }
        Ok(true) => {
            tracing::info!(account = %s.bare, "password changed in band");
            s.reply(iq_result(stanza, None));
        }
        Err(e) => super::store_failed(s, stanza, "changing the password", &e),
    }
}

/// §3.2: the account is deleted with everything it holds (roster, offline messages,
/// archive, PEP, private data, push registrations, uploaded files); the request is answered,
/// then every session of the account is closed.
async fn remove(s: &mut Session, stanza: &Stanza) {
    if !s.state.config.auth.allow_account_removal {
        return s.reply_error(stanza, operator_only("accounts are removed"));
    }
    let config = s.state.config.clone();
    let bare = s.bare.clone();
    let r = s
        .state
        .store(move |st| {
            crate::accounts::remove_user(&config, st, &bare)
                .map_err(|e| strait_store::StoreError::Backend(e.to_string()))
        })
        .await;
    match r {
        Ok((_, files)) => {
            tracing::info!(account = %s.bare, files, "account removed in band");
            s.reply(iq_result(stanza, None));
            s.state.router.close_account(
                &s.bare,
                &StreamError::with_text(
                    StreamErrorCondition::NotAuthorized,
                    "the account was removed",
                ),
            );
        }
        Err(e) => super::store_failed(s, stanza, "removing the account", &e),
    }
}
