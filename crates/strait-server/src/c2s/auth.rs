//! SASL on a connection: runs the mechanism the negotiation picked (SCRAM-SHA-256,
//! SCRAM-SHA-1, PLAIN) against the store, with login throttling per account and address.

use super::connection::Connection;
use crate::accounts;
use crate::interop::enlist;
use crate::sasl::{self, ScramHash, ScramServer};
use strait_wire::SaslFailure;
use strait_wire::negotiation::SaslStep;

/// A SASL exchange in progress.
pub(super) enum SaslExchange {
    /// SCRAM waiting for the client-final message, for this account.
    Scram {
        server: Box<ScramServer>,
        account: String,
    },
    /// SCRAM started without an initial response: the next response is the client-first.
    ScramAwaitingFirst(ScramHash),
    /// OAUTHBEARER started without an initial response: the next response is the message.
    BearerAwaitingMessage,
    /// OAUTHBEARER refused: the error challenge went out, and the client's dummy response
    /// (RFC 7628 §3.2.3) gets this failure text.
    BearerFailed(String),
}

fn failure(condition: SaslFailure, text: impl Into<String>) -> SaslStep {
    SaslStep::Failure {
        condition,
        text: Some(text.into()),
    }
}

fn map_error(e: &sasl::SaslError) -> SaslFailure {
    match e.failure() {
        "incorrect-encoding" => SaslFailure::IncorrectEncoding,
        "invalid-authzid" => SaslFailure::InvalidAuthzid,
        "malformed-request" => SaslFailure::MalformedRequest,
        _ => SaslFailure::NotAuthorized,
    }
}

impl Connection {
    /// The bare JID that a SASL username names on this stream's domain.
    fn account_for(&self, username: &str) -> Option<String> {
        let domain = self.negotiation_domain()?;
        let local = accounts::normalize_localpart(username).ok()?;
        Some(format!("{local}@{domain}"))
    }

    fn throttled(&self, account: &str) -> Option<SaslStep> {
        let now = std::time::Instant::now();
        match self.state.throttle.check(account, self.peer.ip(), now) {
            Ok(()) => None,
            Err(retry) => {
                tracing::info!(conn = self.conn_id, peer = %self.peer, account, "login throttled");
                Some(failure(
                    SaslFailure::TemporaryAuthFailure,
                    format!(
                        "too many failed logins; try again in {} s",
                        retry.as_secs().max(1)
                    ),
                ))
            }
        }
    }

    pub(super) async fn sasl_start(
        &mut self,
        mechanism: &str,
        initial: Option<Vec<u8>>,
    ) -> SaslStep {
        self.sasl = None;
        let hash = match mechanism {
            "SCRAM-SHA-256" => ScramHash::Sha256,
            "SCRAM-SHA-1" => ScramHash::Sha1,
            "PLAIN" => return self.plain(initial.unwrap_or_default()).await,
            enlist::MECHANISM => {
                return match initial {
                    Some(m) if !m.is_empty() => self.bearer(&m).await,
                    _ => {
                        self.sasl = Some(SaslExchange::BearerAwaitingMessage);
                        SaslStep::Challenge(Vec::new())
                    }
                };
            }
            _ => return failure(SaslFailure::InvalidMechanism, "mechanism not offered"),
        };
        match initial {
            Some(first) if !first.is_empty() => self.scram_first(hash, &first).await,
            _ => {
                self.sasl = Some(SaslExchange::ScramAwaitingFirst(hash));
                SaslStep::Challenge(Vec::new())
            }
        }
    }

    pub(super) async fn sasl_response(&mut self, data: &[u8]) -> SaslStep {
        match self.sasl.take() {
            Some(SaslExchange::ScramAwaitingFirst(hash)) => self.scram_first(hash, data).await,
            Some(SaslExchange::BearerAwaitingMessage) => self.bearer(data).await,
            Some(SaslExchange::BearerFailed(text)) => failure(SaslFailure::NotAuthorized, text),
            Some(SaslExchange::Scram {
                mut server,
                account,
            }) => match server.client_final(data) {
                Ok(server_final) => {
                    self.state.throttle.record_success(&account, self.peer.ip());
                    tracing::info!(conn = self.conn_id, peer = %self.peer, %account, "authenticated");
                    SaslStep::Success {
                        additional: Some(server_final),
                        authenticated_jid: account,
                    }
                }
                Err(e) => {
                    self.state.throttle.record_failure(
                        &account,
                        self.peer.ip(),
                        std::time::Instant::now(),
                    );
                    tracing::info!(conn = self.conn_id, peer = %self.peer, %account, "authentication failed: {e}");
                    failure(map_error(&e), "authentication failed")
                }
            },
            None => failure(SaslFailure::MalformedRequest, "no exchange in progress"),
        }
    }

    async fn scram_first(&mut self, hash: ScramHash, first: &[u8]) -> SaslStep {
        let mut server = ScramServer::new(hash);
        let username = match server.client_first(first) {
            Ok(u) => u,
            Err(e) => return failure(map_error(&e), e.to_string()),
        };
        let Some(account) = self.account_for(&username) else {
            return failure(SaslFailure::NotAuthorized, "not a valid username");
        };
        if let Some(authzid) = server.authzid() {
            let same = accounts::normalize_jid(authzid)
                .map(|j| j.to_string() == account)
                .unwrap_or(false);
            if !same {
                return failure(
                    SaslFailure::InvalidAuthzid,
                    "authzid must be the account itself",
                );
            }
        }
        if let Some(step) = self.throttled(&account) {
            return step;
        }
        let lookup = account.clone();
        let creds = match self.state.store(move |s| s.credentials(&lookup)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("credential lookup: {e}");
                return failure(SaslFailure::TemporaryAuthFailure, "storage unavailable");
            }
        };
        let secret = creds.map(|c| match hash {
            ScramHash::Sha256 => Some(c.scram_sha256),
            ScramHash::Sha1 => c.scram_sha1,
        });
        server.set_fake_iterations(self.state.config.auth.scram_iterations);
        let first = server.server_first(secret.flatten().as_ref(), &self.state.fake_salt_key);
        self.sasl = Some(SaslExchange::Scram {
            server: Box::new(server),
            account,
        });
        SaslStep::Challenge(first)
    }

    /// OAUTHBEARER (enlistment): a token the provider signed for its user. The account is
    /// made on the first login.
    async fn bearer(&mut self, msg: &[u8]) -> SaslStep {
        let Some(domain) = self.negotiation_domain() else {
            return failure(SaslFailure::NotAuthorized, "no domain");
        };
        let snapshot = self.state.interop.snapshot();
        let pin = self.client_pin().copied();
        let enlisted = snapshot
            .provider_of_domain(&domain)
            .filter(|p| p.link.is_none());
        let result = match enlisted {
            None => Err(enlist::EnlistError::NoKeys(domain.clone())),
            Some(provider) => enlist::check_proxy(provider, pin.as_ref())
                .and_then(|()| enlist::parse_message(msg))
                .and_then(|m| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let local =
                        enlist::verify_token(provider, &m.token, &self.state.config.domains, now)?;
                    let jid = format!("{local}@{domain}");
                    match m.authzid {
                        Some(a)
                            if accounts::normalize_jid(&a).map(|j| j.to_string())
                                != Ok(jid.clone()) =>
                        {
                            Err(enlist::EnlistError::Authzid(jid))
                        }
                        _ => Ok((jid, provider.id.clone())),
                    }
                }),
        };
        let (jid, provider) = match result {
            Ok(ok) => ok,
            Err(e) => {
                tracing::info!(conn = self.conn_id, peer = %self.peer, %domain, "enlisted login refused: {e}");
                let text = e.to_string();
                self.sasl = Some(SaslExchange::BearerFailed(text));
                return SaslStep::Challenge(enlist::error_challenge(&domain));
            }
        };
        let account = jid.clone();
        let made = self
            .state
            .store(move |s| {
                if s.account_exists(&account)? {
                    return Ok(false);
                }
                match s.create_account(&account, &enlist::unusable_credentials()) {
                    Ok(()) => Ok(true),
                    // Two first logins at once: the other one made it.
                    Err(strait_store::StoreError::AlreadyExists(_)) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await;
        match made {
            Ok(made) => {
                tracing::info!(conn = self.conn_id, peer = %self.peer, %jid, %provider, made, "enlisted user authenticated");
                SaslStep::Success {
                    additional: None,
                    authenticated_jid: jid,
                }
            }
            Err(e) => {
                tracing::error!("enlisted account {jid}: {e}");
                failure(SaslFailure::TemporaryAuthFailure, "storage unavailable")
            }
        }
    }

    async fn plain(&mut self, msg: Vec<u8>) -> SaslStep {
        // PLAIN is only ever offered over TLS; the negotiation enforces that too.
        let Some(domain) = self.negotiation_domain() else {
            return failure(SaslFailure::NotAuthorized, "no domain");
        };
        let state = self.state.clone();
        let ip = self.peer.ip();
        let result = tokio::task::spawn_blocking(move || {
            let mut account = None;
            let r = sasl::plain_verify(&msg, |user| {
                let local = accounts::normalize_localpart(user).ok()?;
                let jid = format!("{local}@{domain}");
                account = Some(jid.clone());
                if state
                    .throttle
                    .check(&jid, ip, std::time::Instant::now())
                    .is_err()
                {
                    return None;
                }
                state.store.credentials(&jid).ok().flatten()
            });
            (r, account)
        })
        .await;
        match result {
            Ok((Ok(_), Some(account))) => {
                self.state.throttle.record_success(&account, ip);
                SaslStep::Success {
                    additional: None,
                    authenticated_jid: account,
                }
            }
            Ok((r, account)) => {
                if let Some(a) = &account {
                    self.state
                        .throttle
                        .record_failure(a, ip, std::time::Instant::now());
                }
                let cond = r
                    .err()
                    .map(|e| map_error(&e))
                    .unwrap_or(SaslFailure::NotAuthorized);
                failure(cond, "authentication failed")
            }
            Err(_) => failure(SaslFailure::TemporaryAuthFailure, "internal error"),
        }
    }
}
